export { createDatabase, isPostgresUrl, redactDatabaseUrl } from './database.js';
export type { Database, DatabaseDialect, DatabaseOptions, DbLogger } from './database.js';
export { isStorageUnavailable } from './errors.js';
export { migrateToLatest, migrations } from './migrations.js';
export type * from './schema.js';
export * from './values.js';
