#!/usr/bin/env node
// The installed command: loads tsx from this package (not from wherever the
// command is run) and hands over to the TypeScript CLI.
import { register } from 'tsx/esm/api';

register();
await import('../src/cli.ts');
