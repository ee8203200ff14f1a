import { spawn, spawnSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import test from 'ava';
import { parse as parseToml } from 'smol-toml';
import { CgroupDriver } from '../../src/generated/runtime/v1/api';
import { packageVersion } from '../../src/version';
import { runCli, TestDaemon, tempDir } from '../fixtures/daemon';

test('Version and Status answer over runtime.v1 and runtime.v1alpha2', async (t) => {
  const daemon = await TestDaemon.start();
  t.teardown(() => daemon.destroy());

  const v1 = daemon.client('v1');
  const version = await v1.call('version', { version: '0.1.0' });
  t.is(version.runtimeName, 'crisp');
  t.is(version.runtimeVersion, packageVersion());
  t.is(version.runtimeApiVersion, 'v1');
  t.is(version.version, '0.1.0');

  const legacy = daemon.client('v1alpha2');
  const legacyVersion = await legacy.call('version', { version: '0.1.0' });
  t.is(legacyVersion.runtimeName, 'crisp');
  t.is(legacyVersion.runtimeApiVersion, 'v1alpha2');

  for (const client of [v1, legacy]) {
    const status = await client.call('status', { verbose: true });
    const conditions = Object.fromEntries(status.status!.conditions.map((c) => [c.type, c]));
    t.true(conditions.RuntimeReady.status);
    t.false(conditions.NetworkReady.status, 'the daemon was given an empty CNI conf dir');
    t.is(conditions.NetworkReady.reason, 'NetworkPluginNotReady');
    t.regex(conditions.NetworkReady.message, /no network config found/);
    const config = JSON.parse(status.info.config);
    t.is(config.socket, daemon.socket);
    t.true(status.runtimeHandlers.some((h) => h.name === ''), 'the default handler is advertised under the empty name');
  }

  const rc = await v1.call('runtimeConfig', {});
  t.is(rc.linux?.cgroupDriver, CgroupDriver.CGROUPFS);

  await v1.call('updateRuntimeConfig', { runtimeConfig: { networkConfig: { podCidr: '10.244.1.0/24' } } });
  const after = await v1.call('status', { verbose: true });
  t.is(JSON.parse(after.info.runtime).podCidr, '10.244.1.0/24', 'the pod CIDR from kubelet is recorded');
});

test('the socket is root-only and the state directory is created', async (t) => {
  const daemon = await TestDaemon.start();
  t.teardown(() => daemon.destroy());
  const st = fs.statSync(daemon.socket);
  t.true(st.isSocket());
  t.is(st.mode & 0o777, 0o660);
  t.is(st.uid, 0);
  t.is(fs.statSync(path.dirname(daemon.socket)).mode & 0o777, 0o711, 'a missing socket directory is created 0711');
  t.true(fs.existsSync(path.join(daemon.state, 'crisp.pid')));
});

test('an RPC crisp does not know (a newer CRI) answers UNIMPLEMENTED naming it, and the daemon keeps serving', async (t) => {
  const daemon = await TestDaemon.start();
  t.teardown(() => daemon.destroy());
  // CheckpointPod exists only in unreleased CRI versions.
  const raw = new grpc.Client(`unix://${daemon.socket}`, grpc.credentials.createInsecure());
  t.teardown(() => raw.close());
  const err = await new Promise<grpc.ServiceError>((resolve) => {
    raw.makeUnaryRequest(
      '/runtime.v1.RuntimeService/CheckpointPod',
      (b: Buffer) => b,
      (b: Buffer) => b,
      Buffer.alloc(0),
      (e) => resolve(e as grpc.ServiceError),
    );
  });
  t.is(err.code, grpc.status.UNIMPLEMENTED);
  t.regex(err.details, /CheckpointPod/);
  t.is((await daemon.client().call('version', {})).runtimeName, 'crisp');
});

test('SIGTERM removes the socket and exits 0; a stale socket after SIGKILL is replaced', async (t) => {
  const daemon = await TestDaemon.start();
  t.teardown(() => daemon.destroy());
  t.is(await daemon.stop(), 0);
  t.false(fs.existsSync(daemon.socket));

  await daemon.start();
  await daemon.kill9();
  t.true(fs.existsSync(daemon.socket), 'SIGKILL leaves the socket file behind');
  await daemon.start();
  const version = await daemon.client().call('version', {});
  t.is(version.runtimeName, 'crisp');
});

test('a second daemon on the same root or socket refuses to start', async (t) => {
  const daemon = await TestDaemon.start();
  t.teardown(() => daemon.destroy());

  const sameRoot = await runCli(['daemon', '--config', daemon.configFile, '--socket', path.join(daemon.dir, 'other.sock')]);
  t.not(sameRoot.code, 0);
  t.regex(sameRoot.stderr, /another crisp daemon \(pid \d+\) is already using root/);

  const otherRoot = tempDir();
  t.teardown(() => fs.rmSync(otherRoot, { recursive: true, force: true }));
  const sameSocket = await runCli([
    'daemon',
    '--config',
    daemon.configFile,
    '--root',
    path.join(otherRoot, 'root'),
    '--state',
    path.join(otherRoot, 'state'),
  ]);
  t.not(sameSocket.code, 0);
  t.regex(sameSocket.stderr, /socket .* is in use by another process/);
  // The first daemon is untouched.
  t.is((await daemon.client().call('version', {})).runtimeName, 'crisp');
});

test('the root lock is a root-only file: a local user squatting a name cannot keep crisp from starting', async (t) => {
  const daemon = new TestDaemon();
  t.teardown(() => daemon.destroy());
  // Like /var/lib: only the daemon's own modes keep a local user out (mkdtemp made it 0700).
  fs.chmodSync(daemon.dir, 0o711);
  fs.mkdirSync(daemon.root, { mode: 0o711 });
  // The name an abstract-socket lock would have for this root, bound first by nobody.
  const name = `\0crisp-${crypto.createHash('sha256').update(fs.realpathSync(daemon.root)).digest('hex').slice(0, 32)}`;
  const squatter = spawn(process.execPath, ['-e', `require('net').createServer().listen({ path: ${JSON.stringify(name)} }, () => console.log('bound'))`], {
    uid: 65534,
    gid: 65534,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  t.teardown(() => squatter.kill('SIGKILL'));
  await new Promise<void>((resolve, reject) => {
    squatter.stdout!.once('data', () => resolve());
    squatter.once('exit', (code) => reject(new Error(`the squatter exited with ${code}`)));
  });

  await daemon.start();
  t.is((await daemon.client().call('version', {})).runtimeName, 'crisp');
  const lock = fs.lstatSync(path.join(daemon.root, 'crisp.lock'));
  t.true(lock.isFile());
  t.is(lock.mode & 0o7777, 0o600);
  t.is(lock.uid, 0);
  const asNobody = spawnSync('/bin/cat', [path.join(daemon.root, 'crisp.lock')], { uid: 65534, gid: 65534, encoding: 'utf8' });
  t.not(asNobody.status, 0);
  t.regex(asNobody.stderr, /Permission denied/, 'nobody cannot even open the lock file');
  // Still one daemon per root.
  const second = await runCli(['daemon', '--config', daemon.configFile, '--socket', path.join(daemon.dir, 'other.sock')]);
  t.not(second.code, 0);
  t.regex(second.stderr, /another crisp daemon \(pid \d+\) is already using root/);
});

test('a path at the socket location that is not a socket is not clobbered', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const socket = path.join(dir, 'crisp.sock');
  fs.writeFileSync(socket, 'precious');
  const res = await runCli(['daemon', '--socket', socket, '--root', path.join(dir, 'root'), '--state', path.join(dir, 'state')]);
  t.not(res.code, 0);
  t.regex(res.stderr, /exists and is not a socket/);
  t.is(fs.readFileSync(socket, 'utf8'), 'precious');
});

test('a malformed config file gives one line naming the file, key and problem, and exit code 2', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'bad.toml');

  fs.writeFileSync(file, '[streaming]\nport = "eighty"\n');
  let res = await runCli(['daemon', '--config', file]);
  t.is(res.code, 2);
  t.is(res.stderr.trim().split('\n').length, 1);
  t.true(res.stderr.includes(file));
  t.regex(res.stderr, /key "streaming\.port": expected a port number/);

  fs.writeFileSync(file, 'sockett = "/x"\n');
  res = await runCli(['daemon', '--config', file]);
  t.is(res.code, 2);
  t.regex(res.stderr, /unknown key "sockett"/);

  fs.writeFileSync(file, 'socket = \n');
  res = await runCli(['daemon', '--config', file]);
  t.is(res.code, 2);
  t.regex(res.stderr, new RegExp(`${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:1:\\d+: invalid TOML`));

  res = await runCli(['daemon', '--config', path.join(dir, 'missing.toml')]);
  t.is(res.code, 2);
  t.regex(res.stderr, /missing\.toml: cannot read config file: no such file/);
});

test('an unknown flag or command exits 2 with a message', async (t) => {
  let res = await runCli(['daemon', '--sockt', '/x']);
  t.is(res.code, 2);
  t.regex(res.stderr, /--sockt/);
  res = await runCli(['frobnicate']);
  t.is(res.code, 2);
  t.regex(res.stderr, /unknown command "frobnicate"/);
});

test('crisp version and crisp config default', async (t) => {
  const version = await runCli(['version']);
  t.is(version.code, 0);
  t.is(version.stdout.trim(), `crisp ${packageVersion()}`);

  const config = await runCli(['config', 'default']);
  t.is(config.code, 0);
  const doc = parseToml(config.stdout) as Record<string, any>;
  t.is(doc.socket, '/run/crisp/crisp.sock');
  t.is(doc.root, '/var/lib/crisp');
  t.is(doc.state, '/run/crisp');
  t.is(doc.streaming.token_ttl, '1m');
  t.regex(config.stdout, /^# /m, 'the output is commented');

  // What it prints is itself a valid config file.
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.writeFileSync(path.join(dir, 'c.toml'), config.stdout);
  const again = await runCli(['config', 'default', '--config', path.join(dir, 'c.toml')]);
  t.is(again.code, 0);
  t.is(again.stdout, config.stdout);
});
