import { Ajv } from 'ajv';

/**
 * The one Ajv instance of the service: the image route's per-model
 * validators (src/models/registry.ts) and the admin and usage routes'
 * (src/http/validate.ts) are compiled here, once each, at start-up. Ajv keeps
 * what it compiled keyed by the schema object, so a schema compiled twice
 * (a second registry in a test) is compiled once.
 *
 * `verbose` keeps the failing sub-schema on each error, which the normalizer
 * needs to describe `anyOf` failures in words; `allowUnionTypes` is for
 * OpenAI's nullable fields (`type: ["integer","null"]`).
 */
export const ajv = new Ajv({ strict: true, allErrors: false, verbose: true, allowUnionTypes: true });
