import { invalidRequest } from '../errors.js';
import { describeValidationErrors } from '../schemas/describe-error.js';
import { compileInput } from '../schemas/ajv.js';

/**
 * Ajv validators for the bodies, query strings and path parameters of the
 * admin and usage routes, turning the first failure into our one 400 shape
 * with the field named in `param`. The image route has its own, per-model
 * validators. All are compiled for caller input (compileInput), so every
 * string is held to storable text.
 */


function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Compiles `schema` once; the returned function throws a 400 or returns the value typed. */
export function bodyValidator<T>(schema: object): (body: unknown) => T {
  const validate = compileInput<T>(schema);
  return (body) => {
    if (!isPlainObject(body)) throw invalidRequest('The request body must be a JSON object.', null);
    if (validate(body)) return body;
    const f = describeValidationErrors(validate.errors);
    throw invalidRequest(f.message, f.param);
  };
}

export function queryValidator<T>(schema: object & { properties: object }): (query: unknown) => T {
  const validate = compileInput<T>(schema);
  const accepted = Object.keys(schema.properties).join(', ');
  return (query) => {
    const q = isPlainObject(query) ? query : {};
    if (validate(q)) return q;
    const f = describeValidationErrors(validate.errors);
    if (f.keyword === 'additionalProperties') {
      throw invalidRequest(`Unknown query parameter: ${f.param ?? ''}. Accepted: ${accepted}.`, f.param);
    }
    // The simple query parser turns a repeated parameter into an array.
    if (f.keyword === 'type' && f.param !== null && Array.isArray(q[f.param])) {
      throw invalidRequest(`The query parameter ${f.param} was given more than once.`, f.param);
    }
    throw invalidRequest(`Query parameter ${f.message}`, f.param);
  };
}

/** The route's own parameters (`/v1/admin/keys/:id`), as the router decoded them. */
export function pathValidator<T>(schema: object): (params: unknown) => T {
  const validate = compileInput<T>(schema);
  return (params) => {
    const p = isPlainObject(params) ? params : {};
    if (validate(p)) return p;
    const f = describeValidationErrors(validate.errors);
    throw invalidRequest(`Path parameter ${f.message}`, f.param);
  };
}
