/**
 * Every JSON Schema this service publishes, with the file under `schemas/`
 * it is emitted to. Add a schema here and run `npx tsx scripts/emit-schemas.ts`.
 */
import { errorResponseSchema } from './error-response.js';
import { imagesResponseSchema } from './images-response.js';
import {
  flux2LoraRequestSchema,
  fluxDevRequestSchema,
  fluxSchnellRequestSchema,
  zImageBaseLoraRequestSchema,
  zImageBaseRequestSchema,
  zImageTurboLoraRequestSchema,
  zImageTurboRequestSchema,
} from './image-request.js';
import { usageSettledEventSchema } from './usage-settled-event.js';
import { zImageTurboEditRequestSchema, zImageTurboLoraEditRequestSchema } from './edit-request.js';
import { apiKeyListSchema, apiKeySchema, createdApiKeySchema, createKeyRequestSchema, updateKeyRequestSchema } from './admin-keys.js';
import { adminUsageReportSchema, usageReportSchema } from './usage.js';
import { modelListSchema, modelSchema } from './models.js';
import { imageGenerationCompletedEventSchema, imageGenerationProgressEventSchema } from './image-stream-events.js';

export interface EmittedSchema {
  /** File name under `schemas/`. */
  readonly file: string;
  readonly schema: object;
}

export const EMITTED_SCHEMAS: readonly EmittedSchema[] = [
  { file: 'z-image-turbo.request.json', schema: zImageTurboRequestSchema },
  { file: 'z-image-turbo-lora.request.json', schema: zImageTurboLoraRequestSchema },
  { file: 'z-image-base.request.json', schema: zImageBaseRequestSchema },
  { file: 'z-image-base-lora.request.json', schema: zImageBaseLoraRequestSchema },
  { file: 'flux-schnell.request.json', schema: fluxSchnellRequestSchema },
  { file: 'flux-dev.request.json', schema: fluxDevRequestSchema },
  { file: 'flux-2-lora.request.json', schema: flux2LoraRequestSchema },
  { file: 'z-image-turbo.edit-request.json', schema: zImageTurboEditRequestSchema },
  { file: 'z-image-turbo-lora.edit-request.json', schema: zImageTurboLoraEditRequestSchema },
  { file: 'images-response.json', schema: imagesResponseSchema },
  { file: 'error-response.json', schema: errorResponseSchema },
  { file: 'usage-settled.event.json', schema: usageSettledEventSchema },
  { file: 'admin-key-create.request.json', schema: createKeyRequestSchema },
  { file: 'admin-key-update.request.json', schema: updateKeyRequestSchema },
  { file: 'api-key.json', schema: apiKeySchema },
  { file: 'api-key-created.json', schema: createdApiKeySchema },
  { file: 'api-key-list.json', schema: apiKeyListSchema },
  { file: 'usage-report.json', schema: usageReportSchema },
  { file: 'admin-usage-report.json', schema: adminUsageReportSchema },
  { file: 'model.json', schema: modelSchema },
  { file: 'model-list.json', schema: modelListSchema },
  { file: 'image-generation-progress.event.json', schema: imageGenerationProgressEventSchema },
  { file: 'image-generation-completed.event.json', schema: imageGenerationCompletedEventSchema },
];

/** Exactly the bytes `scripts/emit-schemas.ts` writes for a schema. */
export function schemaFileText(schema: object): string {
  return `${JSON.stringify(schema, null, 2)}\n`;
}

export * from './describe-error.js';
export * from './error-response.js';
export * from './fields.js';
export * from './image-request.js';
export * from './edit-request.js';
export * from './request-builder.js';
export * from './images-response.js';
export * from './usage-settled-event.js';
export * from './admin-keys.js';
export * from './usage.js';
export * from './image-stream-events.js';
