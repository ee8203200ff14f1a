import test from 'ava';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import {
  CniConfigWatcher,
  compareCniVersions,
  isLoadedCniConfig,
  listCniConfigFiles,
  loadCniConfig,
  parseCniConfig,
  type CniConfigState,
} from '../../src/network/cni_config';

async function tempDir(t: { teardown(fn: () => Promise<void>): void }): Promise<string> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'crisp-cniconf-'));
  t.teardown(() => fsp.rm(dir, { recursive: true, force: true }));
  return dir;
}

function write(dir: string, name: string, value: unknown): Promise<void> {
  return fsp.writeFile(path.join(dir, name), typeof value === 'string' ? value : JSON.stringify(value));
}

/** A pino logger whose records are collected for assertions. */
function capturingLogger(): { logger: pino.Logger; records: Record<string, unknown>[] } {
  const records: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString('utf8').split('\n')) if (line.trim() !== '') records.push(JSON.parse(line));
      cb();
    },
  });
  return { logger: pino({ level: 'debug' }, sink), records };
}

const bridgeList = (name: string, cniVersion = '1.0.0') => ({
  cniVersion,
  name,
  plugins: [
    { type: 'bridge', bridge: 'cni0', ipam: { type: 'host-local', subnet: '10.1.0.0/16' } },
    { type: 'portmap', capabilities: { portMappings: true } },
  ],
});

async function waitFor(t: { timeout(ms: number): void }, what: () => boolean, ms = 5_000): Promise<void> {
  t.timeout(ms + 2_000);
  const deadline = Date.now() + ms;
  while (!what()) {
    if (Date.now() > deadline) throw new Error('condition not reached in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}

test('a conflist is parsed with its plugins, version and disableCheck', (t) => {
  const list = parseCniConfig('/x/10-net.conflist', JSON.stringify({ ...bridgeList('podnet', '0.4.0'), disableCheck: 'true' }));
  t.is(list.name, 'podnet');
  t.is(list.cniVersion, '0.4.0');
  t.true(list.disableCheck);
  t.deepEqual(
    list.plugins.map((p) => p.type),
    ['bridge', 'portmap'],
  );
  t.deepEqual(list.plugins[1]?.capabilities, { portMappings: true });
  t.is((list.plugins[0]?.ipam as { subnet: string }).subnet, '10.1.0.0/16');
});

test('a single-plugin .conf is wrapped into a one-plugin list', (t) => {
  const conf = { cniVersion: '0.3.1', name: 'single', type: 'bridge', bridge: 'br9', isGateway: true };
  const list = parseCniConfig('/x/10-single.conf', JSON.stringify(conf));
  t.is(list.name, 'single');
  t.is(list.cniVersion, '0.3.1');
  t.false(list.disableCheck);
  t.is(list.plugins.length, 1);
  t.like(list.plugins[0], { type: 'bridge', bridge: 'br9', isGateway: true });
});

test('a .json file holding a list is read as a list', (t) => {
  const list = parseCniConfig('/x/10-list.json', JSON.stringify(bridgeList('jsonlist')));
  t.is(list.plugins.length, 2);
});

test('cniVersions selects the highest supported version', (t) => {
  const list = parseCniConfig('/x/a.conflist', JSON.stringify({ ...bridgeList('n'), cniVersion: undefined, cniVersions: ['0.4.0', '1.0.0', '9.0.0'] }));
  t.is(list.cniVersion, '1.0.0');
  t.true(compareCniVersions('1.1.0', '1.0.0') > 0);
  t.true(compareCniVersions('0.3.1', '0.4.0') < 0);
  t.is(compareCniVersions('1.0.0', '1.0.0'), 0);
});

test('invalid configs are rejected with the reason', (t) => {
  const bad: [string, unknown, RegExp][] = [
    ['a.conflist', '{not json', /invalid JSON/],
    ['a.conflist', [], /not a JSON object/],
    ['a.conflist', { ...bridgeList('x'), name: undefined }, /name is missing/],
    ['a.conflist', { ...bridgeList('x'), name: '-bad name' }, /name "-bad name" is invalid/],
    ['a.conflist', { ...bridgeList('x'), cniVersion: undefined }, /cniVersion is missing/],
    ['a.conflist', { ...bridgeList('x'), cniVersion: '0.2.0' }, /cniVersion "0.2.0" is not supported/],
    ['a.conflist', { ...bridgeList('x'), plugins: [] }, /plugins is empty/],
    ['a.conflist', { ...bridgeList('x'), plugins: undefined }, /plugins must be a list/],
    ['a.conflist', { ...bridgeList('x'), plugins: [{ bridge: 'x' }] }, /plugins\[0\]\.type is missing/],
    ['a.conflist', { ...bridgeList('x'), plugins: [{ type: '../../bin/sh' }] }, /not a valid plugin name/],
    ['a.conflist', { ...bridgeList('x'), disableCheck: 'maybe' }, /disableCheck/],
    ['a.conflist', { ...bridgeList('x'), cniVersion: undefined, cniVersions: ['0.1.0'] }, /none of cniVersions/],
    ['a.conf', { cniVersion: '1.0.0', name: 'x' }, /config\.type is missing/],
    ['a.conf', { cniVersion: '1.0.0', name: 'x', type: 'bridge', ipam: { type: 'a/b' } }, /ipam\.type/],
  ];
  for (const [file, value, reason] of bad) {
    const text = typeof value === 'string' ? value : JSON.stringify(value);
    t.throws(() => parseCniConfig(file, text), { message: reason }, `${file}: ${text}`);
  }
});

test('config files are listed by name with only known extensions', async (t) => {
  const dir = await tempDir(t);
  for (const name of ['20-b.conflist', '10-a.conf', '99-z.json', '05-c.conflist.bak', 'README', '.hidden.swp']) {
    await write(dir, name, '{}');
  }
  const files = await listCniConfigFiles(dir);
  t.deepEqual(
    files.map((f) => path.basename(f)),
    ['10-a.conf', '20-b.conflist', '99-z.json'],
  );
  t.true(files.every((f) => path.isAbsolute(f)));
});

test('the first valid file by name wins and invalid files are skipped with a logged reason', async (t) => {
  const dir = await tempDir(t);
  await write(dir, '05-broken.conflist', { ...bridgeList('broken'), plugins: [] });
  await write(dir, '10-first.conf', { cniVersion: '1.0.0', name: 'first', type: 'bridge' });
  await write(dir, '20-second.conflist', bridgeList('second'));
  const { logger, records } = capturingLogger();

  const state = await loadCniConfig(dir, logger);
  if (!isLoadedCniConfig(state)) return t.fail(state.error);
  t.is(state.config.name, 'first');
  t.is(state.file, path.join(dir, '10-first.conf'));

  const skip = records.find((r) => r.msg === 'skipping invalid CNI network config');
  t.truthy(skip);
  t.is(skip?.file, path.join(dir, '05-broken.conflist'));
  t.regex(String(skip?.reason), /plugins is empty/);
});

test('no config: an empty or missing dir, and a dir with only invalid files, explain why', async (t) => {
  const dir = await tempDir(t);
  t.deepEqual(await loadCniConfig(dir), { error: `no network config found in ${dir}` });
  const missing = path.join(dir, 'nope');
  t.deepEqual(await loadCniConfig(missing), { error: `no network config found in ${missing}` });

  await write(dir, '10-bad.conflist', { ...bridgeList('bad'), cniVersion: '0.1.0' });
  await write(dir, '20-bad.conf', '[]');
  const state = await loadCniConfig(dir);
  t.false(isLoadedCniConfig(state));
  t.is(
    (state as { error: string }).error,
    `no valid network config found in ${dir}: 10-bad.conflist: cniVersion "0.1.0" is not supported (0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0); 20-bad.conf: not a JSON object`,
  );
});

test('the watcher follows files being added, replaced by an earlier name, and removed', async (t) => {
  const dir = await tempDir(t);
  const watcher = new CniConfigWatcher({ confDir: dir, debounceMs: 20, staleAfterMs: 60_000 });
  t.teardown(() => watcher.close());
  const changes: CniConfigState[] = [];
  watcher.on('change', (s: CniConfigState) => changes.push(s));

  const initial = await watcher.start();
  t.false(isLoadedCniConfig(initial));
  t.regex((initial as { error: string }).error, /no network config found/);

  await write(dir, '20-net.conflist', bridgeList('net-a'));
  await waitFor(t, () => {
    const s = watcher.current();
    return isLoadedCniConfig(s) && s.config.name === 'net-a';
  });

  await write(dir, '10-earlier.conf', { cniVersion: '0.4.0', name: 'net-b', type: 'bridge' });
  await waitFor(t, () => {
    const s = watcher.current();
    return isLoadedCniConfig(s) && s.config.name === 'net-b' && s.config.cniVersion === '0.4.0';
  });

  await fsp.rm(path.join(dir, '10-earlier.conf'));
  await fsp.rm(path.join(dir, '20-net.conflist'));
  await waitFor(t, () => !isLoadedCniConfig(watcher.current()));
  t.regex((watcher.current() as { error: string }).error, /no network config found/);

  const names = changes.map((s) => (isLoadedCniConfig(s) ? s.config.name : 'none'));
  t.deepEqual(names.filter((n, i) => n !== names[i - 1]), ['none', 'net-a', 'net-b', 'none']);
});

test('refresh() reads the directory on demand, without waiting for the debounce', async (t) => {
  const dir = await tempDir(t);
  // A debounce this long means only the explicit refresh can see the new file in time.
  const watcher = new CniConfigWatcher({ confDir: dir, debounceMs: 60_000, staleAfterMs: 60_000 });
  t.teardown(() => watcher.close());
  await watcher.start();
  await write(dir, '10-net.conflist', bridgeList('on-demand'));
  const state = await watcher.refresh();
  t.true(isLoadedCniConfig(state));
  t.is((watcher.current() as { config: { name: string } }).config.name, 'on-demand');
});

test('the watcher creates a missing conf dir and survives the dir being replaced', async (t) => {
  const base = await tempDir(t);
  const dir = path.join(base, 'net.d');
  const watcher = new CniConfigWatcher({ confDir: dir, debounceMs: 20, staleAfterMs: 200 });
  t.teardown(() => watcher.close());
  await watcher.start();
  t.true((await fsp.stat(dir)).isDirectory());

  await write(dir, '10-old.conflist', bridgeList('old'));
  await waitFor(t, () => {
    const s = watcher.current();
    return isLoadedCniConfig(s) && s.config.name === 'old';
  });

  // Replacing the directory invalidates the inotify watch on the old inode.
  await fsp.rm(dir, { recursive: true });
  await fsp.mkdir(dir);
  await write(dir, '10-new.conflist', bridgeList('new'));
  await waitFor(t, () => {
    const s = watcher.current();
    return isLoadedCniConfig(s) && s.config.name === 'new';
  });
  t.pass();
});
