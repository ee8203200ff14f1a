import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import test from 'ava';
import { loadNative } from '../../src/native';
import { childProcessLauncher, nativeLauncher, type PluginLauncher, type PluginProcess } from '../../src/network/plugin_launcher';

const LAUNCHERS: [string, () => PluginLauncher][] = [
  ['child_process', () => childProcessLauncher],
  ['native', () => nativeLauncher(loadNative())],
];

async function collect(p: PluginProcess, input = ''): Promise<{ out: string; err: string; code: number | null; signal: string | null }> {
  let out = '';
  let err = '';
  p.stdout.on('data', (c: Buffer) => (out += c.toString()));
  p.stderr.on('data', (c: Buffer) => (err += c.toString()));
  p.stdin.on('error', () => undefined);
  p.stdin.end(input);
  const { code, signal } = await p.done;
  return { out, err, code, signal };
}

for (const [name, make] of LAUNCHERS) {
  test(`${name}: stdin in, stdout and stderr out, the exit code and exactly the given environment`, async (t) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'crisp-launcher-'));
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
    const plugin = path.join(dir, 'plugin');
    fs.writeFileSync(plugin, '#!/bin/sh\nread line\necho "got $line $CNI_COMMAND ${HOME:-nohome}"\necho warn >&2\nexit 7\n', { mode: 0o755 });
    const p = make()(plugin, { CNI_COMMAND: 'ADD', PATH: '/usr/bin:/bin' });
    t.true(typeof p.pid === 'number');
    const r = await collect(p, 'hello\n');
    t.is(r.out, 'got hello ADD nohome\n', 'the daemon\'s HOME is not passed on');
    t.is(r.err, 'warn\n');
    t.is(r.code, 7);
    t.is(r.signal, null);
  });

  test(`${name}: a process killed by a signal, and the group kill reaching what it started`, async (t) => {
    const p = make()('/bin/sh', { PATH: '/usr/bin:/bin' });
    p.stdout.once('data', () => process.kill(-p.pid!, 'SIGKILL'));
    const r = await collect(p, 'sleep 30 & echo started; wait\n');
    t.is(r.out, 'started\n');
    t.is(r.code, null);
    t.is(r.signal, 'SIGKILL');
  });

  test(`${name}: a program that does not exist rejects with ENOENT`, async (t) => {
    const p = make()('/nonexistent/crisp-plugin', {});
    const err = await t.throwsAsync(p.done);
    t.is((err as NodeJS.ErrnoException).code, 'ENOENT');
  });
}
