import { Ajv, type SchemaValidateFunction, type ValidateFunction } from 'ajv';
import { firstUnstorable, STORABLE_TEXT, unstorableWords, withStorableText } from './text.js';

/**
 * The one Ajv instance of the service: the image route's per-model
 * validators (src/models/registry.ts) and the admin and usage routes'
 * (src/http/validate.ts) are compiled here, once each, at start-up.
 *
 * `verbose` keeps the failing sub-schema on each error, which the normalizer
 * needs to describe `anyOf` failures in words; `allowUnionTypes` is for
 * OpenAI's nullable fields (`type: ["integer","null"]`).
 */
export const ajv = new Ajv({ strict: true, allErrors: false, verbose: true, allowUnionTypes: true });

/** Text both databases store as sent (./text.ts); the error's params say where it fails, and its message in words (describe-error.ts puts it after the field's path). */
const storableText: SchemaValidateFunction = (required: boolean, data: string) => {
  const bad = required ? firstUnstorable(data) : undefined;
  if (!bad) return true;
  storableText.errors = [{ keyword: STORABLE_TEXT, message: unstorableWords(bad), params: { index: bad.index, codePoint: bad.codePoint } }];
  return false;
};
ajv.addKeyword({ keyword: STORABLE_TEXT, type: 'string', schemaType: 'boolean', errors: true, validate: storableText });

const compiledInputs = new WeakMap<object, ValidateFunction>();

/**
 * The validator for input callers send: `schema` with every string held to
 * storable text. Compiled once per schema object, so a second registry built
 * from the same entries (in a test) compiles nothing again.
 */
export function compileInput<T = unknown>(schema: object): ValidateFunction<T> {
  let validate = compiledInputs.get(schema);
  if (!validate) {
    validate = ajv.compile(withStorableText(schema));
    compiledInputs.set(schema, validate);
  }
  return validate as ValidateFunction<T>;
}
