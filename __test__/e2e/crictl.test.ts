import { type ChildProcess, spawn } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import anyTest, { type ExecutionContext, type TestFn } from 'ava';
import { TestDaemon } from '../fixtures/daemon';
import type { PushedImage } from '../fixtures/images';
import { startBusyboxRegistry } from '../fixtures/pod_env';
import type { RegistryHandle } from '../fixtures/registry';
import { createBridgeNetwork, removeCgroupParents, type TestNetwork } from '../fixtures/test_network';

/**
 * crisp driven by the real crictl (cri-tools v1.26.1 by default: grpc-go, the socket path as the
 * HTTP/2 :authority, as kubelets of that era send it) through a pod's whole life on a bridge
 * network of this file's own: every command's output is parsed and checked, not only its exit code.
 * `CRICTL` names another binary; without one the tests are skipped with a message (failed under CI).
 */
const REPO = path.resolve(__dirname, '..', '..', '..');
const CRICTL = process.env.CRICTL ?? path.resolve(REPO, '..', 'shared', 'bin', 'crictl');
const crictlFound = (() => {
  try {
    fs.accessSync(CRICTL, fs.constants.X_OK);
    return true;
  } catch {
    return false;
  }
})();
const MISSING = `crictl not found at ${CRICTL}: set CRICTL to a crictl binary (../shared/bin/crictl beside the checkout by default)`;

interface Context {
  registry: RegistryHandle;
  busybox: PushedImage;
  net: TestNetwork;
  daemon: TestDaemon;
  /** Pod and container config files given to crictl. */
  files: string;
  /** Ids one test creates and the next ones use: tests get copies of the context, this is shared. */
  ids: { imageId: string; pod: string; main: string; web: string };
  /** crictl processes still running (follow, port-forward, terminals), killed at the end. */
  running: Set<ChildProcess>;
}
const anyContext = anyTest as TestFn<Context>;
let test = anyContext.serial;
if (!crictlFound) {
  if (process.env.CI) {
    anyContext('crictl is available', (t) => t.fail(MISSING));
  } else {
    console.warn(`crictl e2e tests skipped: ${MISSING}`);
  }
  test = anyContext.serial.skip as unknown as typeof test;
}

const tag = crypto.randomBytes(3).toString('hex');
const CGROUP_PARENT = `/crisp-test-crictl-${tag}`;
const WEB_PORT = 8080;
const WEB_TEXT = `hello from the pod ${tag}`;

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** The global flags every call gets: this daemon's socket for both services, a generous timeout. */
function endpointArgs(daemon: TestDaemon, configFile: string): string[] {
  const endpoint = `unix://${daemon.socket}`;
  // --config: a file of the test's own, so a /etc/crictl.yaml on the host changes nothing.
  return ['--config', configFile, '--runtime-endpoint', endpoint, '--image-endpoint', endpoint, '--timeout', '60s'];
}

interface StartOptions {
  /** Another program (the terminal for exec -it), given `args` as they are. */
  command?: string;
  /** Another daemon than the file's, with its crictl config file. */
  daemon?: TestDaemon;
  configFile?: string;
}

/** Starts crictl; the caller reads its output as it comes. Killed at the end of the file if still running. */
function startCrictl(t: ExecutionContext<Context>, args: string[], options: StartOptions = {}): ChildProcess & { out: () => string; err: () => string; done: Promise<Run> } {
  const daemon = options.daemon ?? t.context.daemon;
  const configFile = options.configFile ?? path.join(t.context.files, 'crictl.yaml');
  const command = options.command ?? CRICTL;
  const fullArgs = options.command ? args : [...endpointArgs(daemon, configFile), ...args];
  const child = spawn(command, fullArgs, { stdio: ['pipe', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  child.stdin!.on('error', () => undefined);
  t.context.running.add(child);
  const done = new Promise<Run>((resolve) => {
    child.on('close', (code) => {
      t.context.running.delete(child);
      resolve({ code, stdout, stderr });
    });
  });
  return Object.assign(child, { out: () => stdout, err: () => stderr, done });
}

/** Runs crictl to completion (killed after `timeoutMs`). */
async function crictl(t: ExecutionContext<Context>, args: string[], options: StartOptions = {}, timeoutMs = 90_000): Promise<Run> {
  const child = startCrictl(t, args, options);
  child.stdin!.end();
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  const res = await child.done;
  clearTimeout(timer);
  return res;
}

/** Runs crictl and returns its stdout, failing with its stderr when it exits non-zero. */
async function ok(t: ExecutionContext<Context>, args: string[]): Promise<string> {
  const res = await crictl(t, args);
  if (res.code !== 0) throw new Error(`crictl ${args.join(' ')} exited ${res.code}:\n${res.stderr}${res.stdout}`);
  return res.stdout;
}

/** Runs `crictl <command> -o json <args…>` (flags go before arguments) and parses what it prints. */
async function json(t: ExecutionContext<Context>, args: string[]): Promise<any> {
  const [command, ...rest] = args;
  const out = await ok(t, [command, '-o', 'json', ...rest]);
  try {
    return JSON.parse(out);
  } catch {
    throw new Error(`crictl ${args.join(' ')} -o json printed no JSON:\n${out}`);
  }
}

async function until(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The numbers of the `tick N` lines in `text`. */
function ticks(text: string): number[] {
  return [...text.matchAll(/^tick (\d+)$/gm)].map((m) => Number(m[1]));
}

function writeJson(dir: string, name: string, value: unknown): string {
  const file = path.join(dir, name);
  fs.writeFileSync(file, JSON.stringify(value, null, 2));
  return file;
}

anyContext.before(async (t) => {
  t.context.running = new Set();
  t.context.ids = { imageId: '', pod: '', main: '', web: '' };
  if (!crictlFound) return;
  const { registry, busybox } = await startBusyboxRegistry();
  t.context.registry = registry;
  t.context.busybox = busybox;
  t.context.net = await createBridgeNetwork({ label: 'crictl', subnetPrefix: '10.217' });
  t.context.daemon = await TestDaemon.start({ cniConfDir: t.context.net.confDir });
  const files = path.join(t.context.daemon.dir, 'crictl');
  fs.mkdirSync(files);
  t.context.files = files;
  const endpoint = `unix://${t.context.daemon.socket}`;
  fs.writeFileSync(path.join(files, 'crictl.yaml'), `runtime-endpoint: ${endpoint}\nimage-endpoint: ${endpoint}\ntimeout: 60\n`);
  // crictl reads these with the CRI types' JSON names (snake_case).
  writeJson(files, 'pod.json', {
    metadata: { name: 'crictl-pod', namespace: 'e2e', uid: `uid-crictl-${tag}`, attempt: 0 },
    hostname: 'crictl-pod',
    log_directory: path.join(t.context.daemon.dir, 'logs'),
    labels: { app: 'crictl' },
    linux: { cgroup_parent: CGROUP_PARENT },
  });
  // Exits 0 on SIGTERM, so a graceful stop shows in its exit code.
  writeJson(files, 'main.json', {
    metadata: { name: 'main' },
    image: { image: busybox.reference },
    command: ['/bin/sh', '-c', "trap 'echo terminated; exit 0' TERM; echo started; i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.3; done"],
    log_path: 'main.log',
    labels: { role: 'main' },
  });
  writeJson(files, 'web.json', {
    metadata: { name: 'web' },
    image: { image: busybox.reference },
    // As PID 1 httpd would ignore SIGTERM, and the pod's stop would wait out its grace period.
    command: ['/bin/sh', '-c', `mkdir -p /www && echo '${WEB_TEXT}' > /www/index.html; trap 'kill $!; exit 0' TERM; httpd -f -p ${WEB_PORT} -h /www & wait`],
    log_path: 'web.log',
  });
  writeJson(files, 'echo.json', {
    metadata: { name: 'echo' },
    image: { image: busybox.reference },
    command: ['/bin/sh', '-c', 'while read line; do echo got:$line; done; echo bye'],
    log_path: 'echo.log',
    stdin: true,
    stdin_once: true,
  });
});

anyContext.after.always(async (t) => {
  for (const child of t.context.running ?? []) child.kill('SIGKILL');
  await t.context.daemon?.destroy();
  await t.context.net?.cleanup();
  await t.context.registry?.stop();
  removeCgroupParents(CGROUP_PARENT);
});

test('version and info: runtime, API version, conditions and the containerd-style info sections', async (t) => {
  const version = await ok(t, ['version']);
  const fields = Object.fromEntries([...version.matchAll(/^(\w+):\s+(.*)$/gm)].map((m) => [m[1], m[2]]));
  t.like(fields, { Version: '0.1.0', RuntimeName: 'crisp', RuntimeApiVersion: 'v1' });
  t.regex(fields.RuntimeVersion, /^\d+\.\d+\.\d+/);

  const info = await json(t, ['info']);
  const conditions = Object.fromEntries(info.status.conditions.map((c: { type: string; status: boolean }) => [c.type, c.status]));
  t.deepEqual(conditions, { RuntimeReady: true, NetworkReady: true });
  const { net } = t.context;
  t.is(info.config.sandboxImage, '', 'the key kubeadm reads is there');
  t.is(info.config.cni.confDir, net.confDir);
  t.deepEqual(info.config.cni.binDirs, ['/opt/cni/bin', '/usr/lib/cni']);
  t.is(info.config.cni.binDir, '/opt/cni/bin');
  t.is(info.config.rootDir, t.context.daemon.root);
  t.is(info.cniconfig.PluginConfDir, net.confDir);
  t.deepEqual(info.cniconfig.PluginDirs, ['/opt/cni/bin', '/usr/lib/cni']);
  t.is(info.cniconfig.Networks[0].Config.Name, net.name);
  t.is(info.cniconfig.Networks[0].Config.Plugins[0].Network.type, 'bridge');
  t.is(info.lastCNILoadStatus, 'OK');
  t.is(info.runtime.name, 'crisp');
});

test('pull, images, inspecti, imagefsinfo', async (t) => {
  const { busybox } = t.context;
  const pulled = await ok(t, ['pull', busybox.reference]);
  const id = /^Image is up to date for (sha256:[0-9a-f]{64})$/m.exec(pulled)?.[1];
  t.truthy(id, pulled);
  t.context.ids.imageId = id!;

  const { images } = await json(t, ['images']);
  const image = images.find((i: { id: string }) => i.id === id);
  t.truthy(image, JSON.stringify(images));
  t.true(image.repoTags.includes(busybox.reference));
  t.true(image.repoDigests.includes(busybox.digestReference));
  t.true(Number(image.size) > 0);

  const inspected = await json(t, ['inspecti', busybox.reference]);
  t.is(inspected.status.id, id);
  t.true(inspected.status.repoTags.includes(busybox.reference));

  const fsInfo = await json(t, ['imagefsinfo']);
  t.true(fsInfo.status.fsId.mountpoint.startsWith(t.context.daemon.root), fsInfo.status.fsId.mountpoint);
  t.true(Number(fsInfo.status.usedBytes.value) > 0);
  t.true(Number(fsInfo.status.inodesUsed.value) > 0);
});

test('runp, pods, inspectp: a ready pod with an address on the test bridge', async (t) => {
  const out = await ok(t, ['runp', path.join(t.context.files, 'pod.json')]);
  const pod = out.trim().split('\n').pop()!;
  t.regex(pod, /^[0-9a-f]{64}$/, out);
  t.context.ids.pod = pod;

  const { items } = await json(t, ['pods']);
  t.is(items.length, 1);
  t.like(items[0], { id: pod, state: 'SANDBOX_READY', metadata: { name: 'crictl-pod', namespace: 'e2e' }, labels: { app: 'crictl' } });
  const byName = await json(t, ['pods', '--name', 'crictl-pod']);
  t.deepEqual(byName.items.map((p: { id: string }) => p.id), [pod]);

  const inspected = await json(t, ['inspectp', pod]);
  t.is(inspected.status.id, pod);
  t.is(inspected.status.state, 'SANDBOX_READY');
  t.true(inspected.status.network.ip.startsWith(`${t.context.net.subnet}.`), inspected.status.network.ip);
});

test('create, start, ps, inspect', async (t) => {
  const { files } = t.context;
  const { pod } = t.context.ids;
  const create = async (name: string) => {
    const out = await ok(t, ['create', '--no-pull', pod, path.join(files, `${name}.json`), path.join(files, 'pod.json')]);
    const id = out.trim().split('\n').pop()!;
    t.regex(id, /^[0-9a-f]{64}$/, out);
    return id;
  };
  const main = await create('main');
  t.context.ids.main = main;
  const created = await json(t, ['inspect', main]);
  t.is(created.status.state, 'CONTAINER_CREATED');

  t.is((await ok(t, ['start', main])).trim(), main);
  const web = await create('web');
  t.context.ids.web = web;
  t.is((await ok(t, ['start', web])).trim(), web);

  const { containers } = await json(t, ['ps']);
  const states = Object.fromEntries(containers.map((c: { id: string; state: string }) => [c.id, c.state]));
  t.deepEqual(states, { [main]: 'CONTAINER_RUNNING', [web]: 'CONTAINER_RUNNING' });
  const mainEntry = containers.find((c: { id: string }) => c.id === main);
  t.like(mainEntry, { podSandboxId: pod, metadata: { name: 'main' }, labels: { role: 'main' }, imageRef: t.context.busybox.digestReference });
  const filtered = await json(t, ['ps', '--name', 'main', '--pod', pod]);
  t.deepEqual(filtered.containers.map((c: { id: string }) => c.id), [main]);

  const inspected = await json(t, ['inspect', main]);
  t.is(inspected.status.id, main);
  t.is(inspected.status.state, 'CONTAINER_RUNNING');
  t.is(inspected.status.metadata.name, 'main');
  t.is(inspected.status.image.image, t.context.busybox.reference);
  t.true(inspected.status.logPath.endsWith('main.log'));
});

test('exec: synchronous (ExecSync) and streamed, output and exit codes', async (t) => {
  const { main } = t.context.ids;
  // crictl prints the captured stdout and then stderr, each followed by a newline of its own.
  t.is((await ok(t, ['exec', '--sync', main, 'sh', '-c', 'echo $((6*7)); hostname'])).trimEnd(), '42\ncrictl-pod');
  const failedSync = await crictl(t, ['exec', '--sync', main, 'sh', '-c', 'echo to-stderr >&2; exit 3']);
  // crictl 1.26 exits 1 and names the command's status and its stderr.
  t.is(failedSync.code, 1, failedSync.stderr);
  t.regex(failedSync.stderr, /command 'sh -c echo to-stderr >&2; exit 3' exited with 3: to-stderr/);

  const streamed = await crictl(t, ['exec', main, 'sh', '-c', 'echo streamed; echo err >&2']);
  t.is(streamed.code, 0, streamed.stderr);
  t.is(streamed.stdout, 'streamed\n');
  t.regex(streamed.stderr, /^err$/m);
  const piped = startCrictl(t, ['exec', '-i', main, 'sh', '-c', 'cat; echo eof']);
  piped.stdin!.end('through stdin\n');
  const pipedRes = await piped.done;
  t.is(pipedRes.code, 0, pipedRes.stderr);
  t.is(pipedRes.stdout, 'through stdin\neof\n');
  const failed = await crictl(t, ['exec', main, 'sh', '-c', 'exit 5']);
  t.not(failed.code, 0);
});

test('exec -it through a real terminal: type a command, read its answer, exit', async (t) => {
  const { daemon, files } = t.context;
  const { main } = t.context.ids;
  // util-linux script gives crictl a pty as its terminal; the test types into script's stdin.
  const command = [CRICTL, ...endpointArgs(daemon, path.join(files, 'crictl.yaml')), 'exec', '-it', main, 'sh']
    .map((a) => `'${a.replace(/'/g, `'\\''`)}'`)
    .join(' ');
  const term = startCrictl(t, ['-qfec', command, '/dev/null'], { command: 'script' });
  const seen = (what: string, check: () => boolean) =>
    until(what, check, 30_000).catch((err) => {
      throw new Error(`${err.message}; the terminal shows ${JSON.stringify(term.out())}, stderr ${JSON.stringify(term.err())}`);
    });
  await seen('the shell prompt', () => term.out().includes('/ # '));
  // busybox's line editor asks the terminal where its cursor is; answer as a terminal does.
  if (term.out().includes('\x1b[6n')) {
    term.stdin!.write('\x1b[1;5R');
    // Typed keys must not reach the editor as part of the report.
    await new Promise((r) => setTimeout(r, 300));
  }
  term.stdin!.write('test -t 0 && test -t 1 && echo on-a-terminal; echo tty=$(tty); echo answer-$((6*7))\n');
  await seen('the answer', () => /\r\nanswer-42\r\n/.test(term.out()));
  t.regex(term.out(), /\r\non-a-terminal\r\n/, "the shell's stdin and stdout are a terminal");
  // The terminal is on the container's own devpts, so it has a name there (as runc's consoles do).
  t.regex(term.out(), /\r\ntty=\/dev\/pts\/\d+\r\n/, 'tty names the terminal inside the container');
  term.stdin!.write('exit\n');
  const res = await term.done;
  t.is(res.code, 0, res.stderr + res.stdout);
});

test('attach: input reaches the container, its output comes back; stdin_once ends it', async (t) => {
  const { files } = t.context;
  const { pod } = t.context.ids;
  const echo = (await ok(t, ['create', '--no-pull', pod, path.join(files, 'echo.json'), path.join(files, 'pod.json')])).trim().split('\n').pop()!;
  await ok(t, ['start', echo]);
  const attach = startCrictl(t, ['attach', '-i', echo]);
  // The attachment completes a moment after crictl connects; output before it is not seen.
  for (let i = 0; !attach.out().includes('got:probe'); i++) {
    if (i > 100) throw new Error(`attach never echoed:\n${attach.err()}`);
    attach.stdin!.write(`probe${i}\n`);
    await new Promise((r) => setTimeout(r, 200));
  }
  attach.stdin!.write('hello over attach\n');
  await until('the echo', () => attach.out().includes('got:hello over attach\n'));
  attach.stdin!.end();
  const res = await attach.done;
  t.is(res.code, 0, res.stderr);
  t.regex(res.stdout, /^(got:probe\d+\n)+got:hello over attach\nbye\n$/);
  await until('the echo container to exit', async () => (await json(t, ['inspect', echo])).status.state === 'CONTAINER_EXITED');
  const logs = await ok(t, ['logs', echo]);
  t.regex(logs, /got:hello over attach\nbye\n$/);
  await ok(t, ['rm', echo]);
});

test('logs, and logs -f: new lines arrive until it is stopped', async (t) => {
  const { main } = t.context.ids;
  const logs = await ok(t, ['logs', main]);
  t.true(logs.startsWith('started\ntick 1\n'), logs);
  const tail = await ok(t, ['logs', '--tail', '1', main]);
  t.regex(tail, /^tick \d+\n$/);

  const follow = startCrictl(t, ['logs', '-f', main]);
  await until('the first lines', () => ticks(follow.out()).length > 0);
  const first = Math.max(...ticks(follow.out()));
  await until('new lines', () => Math.max(...ticks(follow.out())) >= first + 3);
  t.deepEqual(
    ticks(follow.out()),
    ticks(follow.out()).map((_, i) => i + 1),
    'every line once, in order',
  );
  t.true(follow.exitCode === null, 'still following');
  follow.kill('SIGINT');
  await follow.done;
  t.false(t.context.running.has(follow));
});

test('port-forward: a local port reaches a server inside the pod', async (t) => {
  const forward = startCrictl(t, ['port-forward', t.context.ids.pod, `0:${WEB_PORT}`]);
  await until('the local listener', () => /Forwarding from 127\.0\.0\.1:\d+ ->/.test(forward.out()), 30_000);
  const port = Number(/Forwarding from 127\.0\.0\.1:(\d+) -> (\d+)/.exec(forward.out())![1]);
  // httpd may still be starting: retry until it answers.
  let reply = '';
  await until('the reply through the forward', async () => {
    reply = await new Promise<string>((resolve) => {
      const conn = net.connect({ host: '127.0.0.1', port });
      let data = '';
      conn.on('data', (d) => (data += d.toString()));
      conn.on('error', () => resolve(''));
      conn.on('close', () => resolve(data));
      conn.on('connect', () => conn.write('GET / HTTP/1.0\r\n\r\n'));
    });
    return reply.includes(WEB_TEXT);
  });
  t.regex(reply, /^HTTP\/1\.[01] 200 OK\r\n/);
  t.true(reply.endsWith(`${WEB_TEXT}\n`));
  forward.kill('SIGINT');
  await forward.done;
});

test('stats and statsp', async (t) => {
  const { main, pod } = t.context.ids;
  const { stats } = await json(t, ['stats', '--id', main]);
  t.is(stats.length, 1);
  t.is(stats[0].attributes.id, main);
  t.is(stats[0].attributes.metadata.name, 'main');
  t.true(Number(stats[0].memory.workingSetBytes.value) > 0, JSON.stringify(stats[0]));
  t.true(Number(stats[0].cpu.usageCoreNanoSeconds.value) > 0);

  const podStats = (await json(t, ['statsp', '--id', pod])).stats;
  t.is(podStats.length, 1);
  t.is(podStats[0].attributes.id, pod);
  t.is(podStats[0].attributes.metadata.name, 'crictl-pod');
  t.true(Number(podStats[0].linux.memory.workingSetBytes.value) > 0, JSON.stringify(podStats[0]));
  const ids = podStats[0].linux.containers.map((c: { attributes: { id: string } }) => c.attributes.id).sort();
  t.deepEqual(ids, [main, t.context.ids.web].sort());
});

test('update --memory: the new limit is in the container status', async (t) => {
  const { main } = t.context.ids;
  const limit = 96 * 1024 * 1024;
  await ok(t, ['update', '--memory', String(limit), main]);
  const inspected = await json(t, ['inspect', main]);
  t.is(Number(inspected.status.resources.linux.memoryLimitInBytes), limit, JSON.stringify(inspected.status.resources));
  const inside = await ok(t, ['exec', '--sync', main, 'sh', '-c', 'cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes']);
  t.is(Number(inside.trim()), limit, "the container's cgroup has it");
});

test('ps: a ListContainers reply larger than 4 MiB (the default grpc-go receive limit) reaches crictl', async (t) => {
  const { files } = t.context;
  const { pod, main, web } = t.context.ids;
  // 72 created containers with a 60 KiB annotation each: about 4.3 MiB of reply.
  const big = 'a'.repeat(60 * 1024);
  const ids: string[] = [];
  for (let i = 0; i < 72; i++) {
    const config = writeJson(files, `big-${i}.json`, {
      metadata: { name: `big-${i}` },
      image: { image: t.context.busybox.reference },
      command: ['/bin/true'],
      annotations: { 'e2e.crisp/padding': big },
    });
    ids.push((await ok(t, ['create', '--no-pull', pod, config, path.join(files, 'pod.json')])).trim().split('\n').pop()!);
  }
  const res = await crictl(t, ['ps', '-a', '-o', 'json']);
  t.is(res.code, 0, res.stderr);
  t.true(res.stdout.length > 4 * 1024 * 1024, `${res.stdout.length} octets printed`);
  const { containers } = JSON.parse(res.stdout);
  t.is(containers.length, ids.length + 2);
  t.true(containers.every((c: { id: string; annotations: Record<string, string> }) => [main, web].includes(c.id) || c.annotations['e2e.crisp/padding'] === big));
  await ok(t, ['rm', ...ids]);
  t.deepEqual(
    (await json(t, ['ps', '-a'])).containers.map((c: { id: string }) => c.id).sort(),
    [main, web].sort(),
  );
});

test('stop, rm, stopp, rmp, rmi', async (t) => {
  const { main, web, pod, imageId } = t.context.ids;
  const { busybox } = t.context;
  t.is((await ok(t, ['stop', '--timeout', '10', main])).trim(), main);
  const stopped = await json(t, ['inspect', main]);
  t.is(stopped.status.state, 'CONTAINER_EXITED');
  t.is(stopped.status.exitCode, 0, 'it exited from its TERM trap');
  t.regex(await ok(t, ['logs', '--tail', '1', main]), /^terminated\n$/);
  t.is((await ok(t, ['rm', main])).trim(), main);
  const { containers } = await json(t, ['ps', '-a']);
  t.deepEqual(containers.map((c: { id: string }) => c.id), [web]);

  await ok(t, ['stopp', pod]);
  t.is((await json(t, ['inspectp', pod])).status.state, 'SANDBOX_NOTREADY');
  t.is((await json(t, ['ps', '-a'])).containers[0].state, 'CONTAINER_EXITED', 'stopping the pod stopped its containers');
  await ok(t, ['rmp', pod]);
  t.deepEqual((await json(t, ['pods'])).items, []);
  t.deepEqual((await json(t, ['ps', '-a'])).containers, []);

  await ok(t, ['rmi', busybox.reference]);
  const { images } = await json(t, ['images']);
  t.false(
    images.some((i: { id: string }) => i.id === imageId),
    JSON.stringify(images),
  );
});

test('a daemon serving only runtime.v1alpha2: v1 is refused as UNIMPLEMENTED, v1alpha2 is served', async (t) => {
  const legacy = await TestDaemon.start({ apiVersion: 'v1alpha2', extraConfig: '[grpc]\napi_versions = ["v1alpha2"]\n' });
  t.teardown(() => legacy.destroy());
  const configFile = path.join(legacy.dir, 'crictl.yaml');
  fs.writeFileSync(configFile, '');
  const run = (args: string[]) => crictl(t, args, { daemon: legacy, configFile });
  const version = await run(['version']);
  if (version.code === 0) {
    // A crictl that falls back to v1alpha2 when v1 answers UNIMPLEMENTED (cri-tools 1.23–1.25).
    t.regex(version.stdout, /^RuntimeName:\s+crisp$/m);
    t.regex(version.stdout, /^RuntimeApiVersion:\s+v1alpha2$/m);
    const pods = await run(['pods', '-o', 'json']);
    t.is(pods.code, 0, pods.stderr);
    t.deepEqual(JSON.parse(pods.stdout).items, []);
  } else {
    // cri-tools 1.26 speaks v1 only: it reports exactly the refusal a v1 kubelet would get.
    t.log('this crictl has no v1alpha2 fallback; the v1alpha2 path is checked with a v1alpha2 client');
    t.regex(version.stderr, /CRI v1 runtime API is not implemented for endpoint .*: rpc error: code = Unimplemented desc = runtime\.v1 is not served: crisp is configured to serve runtime\.v1alpha2 only/);
    const pods = await run(['pods', '-o', 'json']);
    t.not(pods.code, 0);
    t.regex(pods.stderr, /code = Unimplemented/);
  }
  // What kubelet 1.20–1.25 does: calls through runtime.v1alpha2.
  const client = legacy.client('v1alpha2');
  t.is((await client.call('version', {})).runtimeApiVersion, 'v1alpha2');
  t.deepEqual((await client.call('listPodSandbox', {})).items, []);
  const status = await client.call('status', { verbose: true });
  t.deepEqual(JSON.parse(status.info.config).grpc.apiVersions, ['v1alpha2']);
});
