import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import test from 'ava';
import { parse as parseToml } from 'smol-toml';
import { applyDocument, ConfigError, defaultConfig, loadConfigFile, parseDuration, renderConfig } from '../../src/config/config';

test('embedded defaults', (t) => {
  const c = defaultConfig();
  t.is(c.socket, '/run/crisp/crisp.sock');
  t.is(c.root, '/var/lib/crisp');
  t.is(c.state, '/run/crisp');
  t.is(c.registry.configPath, '/etc/crisp/certs.d');
  t.is(c.registry.stallTimeoutMs, 60_000);
  t.is(c.streaming.tokenTtlMs, 60_000);
  t.is(c.cgroup.driver, 'cgroupfs');
});

test('durations', (t) => {
  t.is(parseDuration('90s'), 90_000);
  t.is(parseDuration('1m'), 60_000);
  t.is(parseDuration('250ms'), 250);
  t.is(parseDuration('1.5h'), 5_400_000);
  t.is(parseDuration('10'), undefined);
  t.is(parseDuration('1d'), undefined);
});

test('a document overrides only what it names', (t) => {
  const c = applyDocument(defaultConfig(), { socket: '/x.sock', cni: { bin_dirs: ['/a'] }, registry: { stall_timeout: '5s' } }, 'f.toml');
  t.is(c.socket, '/x.sock');
  t.deepEqual(c.cni.binDirs, ['/a']);
  t.is(c.cni.confDir, '/etc/cni/net.d');
  t.is(c.registry.stallTimeoutMs, 5000);
  t.is(defaultConfig().socket, '/run/crisp/crisp.sock', 'defaults are not mutated');
});

test('wrong keys and types are rejected naming the file and key', (t) => {
  const bad = (doc: Record<string, unknown>) => t.throws(() => applyDocument(defaultConfig(), doc, 'f.toml'), { instanceOf: ConfigError })!.message;
  t.is(bad({ nope: 1 }), 'f.toml: unknown key "nope"');
  t.is(bad({ cni: { nope: 1 } }), 'f.toml: unknown key "cni.nope"');
  t.is(bad({ cni: 'x' }), 'f.toml: key "cni": expected a table [cni], got "x"');
  t.is(bad({ log_level: 'loud' }), 'f.toml: key "log_level": expected one of trace, debug, info, warn, error, fatal, got "loud"');
  t.is(bad({ streaming: { port: 70000 } }), 'f.toml: key "streaming.port": expected a port number 0-65535, got number 70000');
  t.is(bad({ cni: { bin_dirs: [1] } }), 'f.toml: key "cni.bin_dirs": expected an array of strings, got an array');
  t.is(bad({ registry: { stall_timeout: 5 } }), 'f.toml: key "registry.stall_timeout": expected a duration such as "30s" or "1m", got number 5');
  t.is(bad({ cgroup: { driver: 'sd' } }), 'f.toml: key "cgroup.driver": expected "cgroupfs" or "systemd", got "sd"');
});

test('invalid TOML reports file, line and column', (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'crisp-test-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'c.toml');
  fs.writeFileSync(file, 'socket = "/a"\n[cni\n');
  const err = t.throws(() => loadConfigFile(file), { instanceOf: ConfigError })!;
  t.true(err.message.startsWith(`${file}:2:`));
});

test('the rendered default config parses back to the same config', (t) => {
  const text = renderConfig(defaultConfig());
  const again = applyDocument(defaultConfig(), parseToml(text) as Record<string, unknown>, 'rendered');
  t.deepEqual(again, defaultConfig());
  const custom = applyDocument(defaultConfig(), { streaming: { token_ttl: '90s' }, runtime: { handlers: ['kata'] } }, 'x');
  t.deepEqual(applyDocument(defaultConfig(), parseToml(renderConfig(custom)) as Record<string, unknown>, 'r'), custom);
});

test('registry credentials per host', (t) => {
  const c = applyDocument(defaultConfig(), { registry: { auths: { 'reg.example:5000': { username: 'u', password: 'p' }, 'b.example': { auth: 'dTpw' } } } }, 'f.toml');
  t.deepEqual(c.registry.auths, { 'reg.example:5000': { username: 'u', password: 'p' }, 'b.example': { auth: 'dTpw' } });
  t.deepEqual(applyDocument(defaultConfig(), parseToml(renderConfig(c)) as Record<string, unknown>, 'r'), c);
  t.throws(() => applyDocument(defaultConfig(), { registry: { auths: { h: { user: 'x' } } } }, 'f.toml'), {
    message: 'f.toml: key "registry.auths": "h": unknown key "user"',
  });
});

test('[grpc] api_versions: both CRI versions by default, a subset when configured, one-line errors otherwise', (t) => {
  t.deepEqual(defaultConfig().grpc.apiVersions, ['v1', 'v1alpha2']);
  const legacy = applyDocument(defaultConfig(), { grpc: { api_versions: ['v1alpha2'] } }, 'f.toml');
  t.deepEqual(legacy.grpc.apiVersions, ['v1alpha2']);
  t.deepEqual(applyDocument(defaultConfig(), parseToml(renderConfig(legacy)) as Record<string, unknown>, 'r'), legacy);
  t.regex(renderConfig(defaultConfig()), /\n\[grpc\]\n# CRI API versions served[^\n]*\napi_versions = \["v1","v1alpha2"\]\n/);
  const bad = (value: unknown) => t.throws(() => applyDocument(defaultConfig(), { grpc: { api_versions: value } }, 'f.toml'), { instanceOf: ConfigError })!.message;
  t.is(bad([]), 'f.toml: key "grpc.api_versions": expected a non-empty array of "v1", "v1alpha2", got an array');
  t.is(bad('v1'), 'f.toml: key "grpc.api_versions": expected a non-empty array of "v1", "v1alpha2", got "v1"');
  t.is(bad(['v1beta1']), 'f.toml: key "grpc.api_versions": expected a non-empty array of "v1", "v1alpha2", got "v1beta1" in the array');
  t.is(bad(['v1', 'v1']), 'f.toml: key "grpc.api_versions": "v1" is listed twice');
});
