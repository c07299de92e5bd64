import { readFileSync } from 'node:fs';
import assert from 'node:assert/strict';
import AjvModule from 'ajv';

/** Validates live responses against the emitted JSON Schemas: what we send is what we document. */
const Ajv = AjvModule.default ?? AjvModule;
const ajv = new Ajv({ allErrors: true, strict: false });
const root = new URL('../../schemas/', import.meta.url);

function load(name: string) {
  return ajv.compile(JSON.parse(readFileSync(new URL(name, root), 'utf8')) as object);
}

const validators = {
  images: load('images-response.json'),
  error: load('error-response.json'),
  progressEvent: load('image-generation-progress.event.json'),
  completedEvent: load('image-generation-completed.event.json'),
};

export function assertMatchesSchema(which: keyof typeof validators, body: unknown): void {
  const v = validators[which];
  assert.ok(v(body), `${which} response does not match its schema: ${JSON.stringify(v.errors)}\n${JSON.stringify(body).slice(0, 500)}`);
}
