import * as fs from 'node:fs';
import * as path from 'node:path';

let cached: string | undefined;

/** The version in package.json; compiled code runs from dist/src/, two levels below the package root. */
export function packageVersion(): string {
  cached ??= (JSON.parse(fs.readFileSync(path.join(packageRoot(), 'package.json'), 'utf8')) as { version: string }).version;
  return cached;
}

export function packageRoot(): string {
  return path.resolve(__dirname, '..', '..');
}
