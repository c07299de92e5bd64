/**
 * Every JSON Schema this service publishes, with the file under `schemas/`
 * it is emitted to. Add a schema here and run `npx tsx scripts/emit-schemas.ts`.
 */
import { errorResponseSchema } from './error-response.js';
import { imagesResponseSchema } from './images-response.js';
import { zImageTurboLoraRequestSchema, zImageTurboRequestSchema } from './image-request.js';

export interface EmittedSchema {
  /** File name under `schemas/`. */
  readonly file: string;
  readonly schema: object;
}

export const EMITTED_SCHEMAS: readonly EmittedSchema[] = [
  { file: 'z-image-turbo.request.json', schema: zImageTurboRequestSchema },
  { file: 'z-image-turbo-lora.request.json', schema: zImageTurboLoraRequestSchema },
  { file: 'images-response.json', schema: imagesResponseSchema },
  { file: 'error-response.json', schema: errorResponseSchema },
];

/** Exactly the bytes `scripts/emit-schemas.ts` writes for a schema. */
export function schemaFileText(schema: object): string {
  return `${JSON.stringify(schema, null, 2)}\n`;
}

export * from './describe-error.js';
export * from './error-response.js';
export * from './fields.js';
export * from './image-request.js';
export * from './images-response.js';
