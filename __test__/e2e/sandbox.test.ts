import { execFileSync, spawn } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import anyTest, { type TestFn } from 'ava';
import type { CriClient } from '../../src/client/cri_client';
import { NamespaceMode, PodSandboxState } from '../../src/generated/runtime/v1/api';
import { TestDaemon, tempDir } from '../fixtures/daemon';
import { natRules } from '../fixtures/iptables';
import { createBridgeNetwork, removeCgroupParents, type TestNetwork } from '../fixtures/test_network';

/**
 * Pod sandboxes through the daemon's socket with the real CNI plugins, on a bridge and /24 that
 * belong to this run only (no masquerade, no route off the subnet). Serial: they share the bridge.
 */
interface Context {
  net: TestNetwork;
}
const test = anyTest.serial as TestFn<Context>;

const tag = crypto.randomBytes(3).toString('hex');

test.before(async (t) => {
  t.context = { net: await createBridgeNetwork({ label: 'sandbox', subnetPrefix: '10.214', portmap: true }) };
});

test.after.always(async (t) => {
  await t.context.net?.cleanup();
  removeCgroupParents(`crisp-test-${tag}`);
});

function podConfig(name: string, extra: Record<string, unknown> = {}) {
  return {
    metadata: { name, namespace: 'e2e', uid: `uid-${name}-${tag}`, attempt: 0 },
    hostname: name,
    logDirectory: '',
    dnsConfig: { servers: ['192.0.2.10'], searches: ['e2e.svc.cluster.local'], options: ['ndots:5'] },
    labels: { app: name, suite: 'sandbox' },
    annotations: { 'crisp.test/annotation': 'yes' },
    linux: { cgroupParent: `/crisp-test-${tag}`, sysctls: { 'net.ipv4.ip_unprivileged_port_start': '80' } },
    ...extra,
  };
}

async function daemon(t: any, env: NodeJS.ProcessEnv = {}): Promise<{ d: TestDaemon; c: CriClient }> {
  const d = await TestDaemon.start({ cniConfDir: t.context.net.confDir, env });
  t.teardown(() => d.destroy());
  return { d, c: d.client() };
}

function nsenter(ns: string, pinned: string, argv: string[]): string {
  return execFileSync('nsenter', [`--${ns}=${pinned}`, ...argv], { encoding: 'utf8' });
}

function mountsUnder(dir: string): string[] {
  return fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter((l) => l.split(' ')[4]?.startsWith(dir));
}

function cgroupExists(parent: string): boolean {
  return fs.existsSync(path.join('/sys/fs/cgroup/memory', parent));
}

function assertNothingLeft(t: any, d: TestDaemon, id: string): void {
  t.deepEqual(mountsUnder(d.dir), [], 'no mount left under the daemon directories');
  t.false(fs.existsSync(path.join(d.state, 'sandboxes', id)), 'no state left');
  t.false(cgroupExists(`/crisp-test-${tag}/${id}`), 'no cgroup left');
  const monitors = execFileSync('ps', ['-eo', 'args'], { encoding: 'utf8' })
    .split('\n')
    .filter((l) => l.includes('crisp-monitor') && l.includes(id));
  t.deepEqual(monitors, [], 'no monitor left');
}

test('a pod gets its own network, IP, hostname, DNS and sysctls; stop and remove leave nothing', async (t) => {
  const { d, c } = await daemon(t);
  const status = await c.call('status', {});
  t.true(status.status!.conditions.find((x) => x.type === 'NetworkReady')!.status, 'the conflist makes the network ready');

  const logDirectory = path.join(d.dir, 'pod-logs', 'web');
  const { podSandboxId: id } = await c.call('runPodSandbox', { config: podConfig('web', { logDirectory }) });
  t.regex(id, /^[0-9a-f]{64}$/);
  t.true(fs.statSync(logDirectory).isDirectory(), 'log_directory is created');
  t.regex(fs.readFileSync(path.join(d.state, 'sandboxes', id, 'hosts'), 'utf8'), /^127\.0\.0\.1\tlocalhost$/m);
  const shm = mountsUnder(path.join(d.state, 'sandboxes', id, 'shm'));
  t.is(shm.length, 1, 'a private /dev/shm is mounted for the pod');
  t.regex(shm[0], / - tmpfs shm .*size=65536k/);
  const st = (await c.call('podSandboxStatus', { podSandboxId: id, verbose: true })).status!;
  t.is(st.state, PodSandboxState.SANDBOX_READY);
  t.is(st.metadata?.name, 'web');
  t.deepEqual(st.labels, { app: 'web', suite: 'sandbox' });
  t.is(st.annotations['crisp.test/annotation'], 'yes');
  t.true(st.network!.ip.startsWith(`${t.context.net.subnet}.`), st.network!.ip);
  t.true(st.createdAt > 0n);

  const netns = path.join(d.state, 'sandboxes', id, 'ns', 'net');
  execFileSync('busybox', ['ping', '-c', '1', '-W', '2', st.network!.ip]);
  t.regex(nsenter('net', netns, ['ip', '-o', 'addr', 'show', 'eth0']), new RegExp(st.network!.ip.replaceAll('.', '\\.')));
  t.regex(nsenter('net', netns, ['ip', '-o', 'link', 'show', 'lo']), /UP/, 'lo is up');
  t.is(nsenter('uts', path.join(d.state, 'sandboxes', id, 'ns', 'uts'), ['hostname']).trim(), 'web');
  t.is(nsenter('net', netns, ['cat', '/proc/sys/net/ipv4/ip_unprivileged_port_start']).trim(), '80');
  t.is(
    fs.readFileSync(path.join(d.state, 'sandboxes', id, 'resolv.conf'), 'utf8'),
    'search e2e.svc.cluster.local\nnameserver 192.0.2.10\noptions ndots:5\n',
  );
  t.true(cgroupExists(`/crisp-test-${tag}/${id}`), 'the pod cgroup exists');

  const list = await c.call('listPodSandbox', { filter: { labelSelector: { app: 'web' } } });
  t.deepEqual(list.items.map((i) => i.id), [id]);
  t.deepEqual((await c.call('listPodSandbox', { filter: { labelSelector: { app: 'other' } } })).items, []);
  t.deepEqual((await c.call('listPodSandbox', { filter: { id: id.slice(0, 12) } })).items.map((i) => i.id), [id]);

  await c.call('stopPodSandbox', { podSandboxId: id });
  t.is((await c.call('podSandboxStatus', { podSandboxId: id })).status!.state, PodSandboxState.SANDBOX_NOTREADY);
  await c.call('stopPodSandbox', { podSandboxId: id });
  const ipam = fs.readdirSync(t.context.net.ipamDir).filter((f) => f.startsWith('10.'));
  t.deepEqual(ipam, [], 'the IP allocation was released');
  await c.call('removePodSandbox', { podSandboxId: id });
  await c.call('removePodSandbox', { podSandboxId: id });
  const err = (await t.throwsAsync(c.call('podSandboxStatus', { podSandboxId: id }))) as grpc.ServiceError;
  t.is(err.code, grpc.status.NOT_FOUND);
  assertNothingLeft(t, d, id);
});

test('a kubelet retry of an in-flight RunPodSandbox gets the same sandbox', async (t) => {
  const { d, c } = await daemon(t);
  const config = podConfig('retry');
  const [a, b] = await Promise.all([c.call('runPodSandbox', { config }), c.call('runPodSandbox', { config })]);
  t.is(a.podSandboxId, b.podSandboxId);
  const again = await c.call('runPodSandbox', { config });
  t.is(again.podSandboxId, a.podSandboxId);
  t.is((await c.call('listPodSandbox', {})).items.length, 1);
  await c.call('removePodSandbox', { podSandboxId: a.podSandboxId });
  assertNothingLeft(t, d, a.podSandboxId);
});

test('host network pods share the host network namespace and get no IP', async (t) => {
  const { d, c } = await daemon(t);
  const config = podConfig('hostnet', {
    linux: { cgroupParent: `/crisp-test-${tag}`, securityContext: { namespaceOptions: { network: NamespaceMode.NODE } } },
  });
  const { podSandboxId: id } = await c.call('runPodSandbox', { config });
  const st = (await c.call('podSandboxStatus', { podSandboxId: id })).status!;
  t.is(st.state, PodSandboxState.SANDBOX_READY);
  t.is(st.network!.ip, '');
  t.is(st.linux?.namespaces?.options?.network, NamespaceMode.NODE);
  t.false(fs.existsSync(path.join(d.state, 'sandboxes', id, 'ns', 'net')), 'no network namespace is pinned');
  await c.call('removePodSandbox', { podSandboxId: id });
  assertNothingLeft(t, d, id);
});

test('bad input: missing metadata, unknown ids, bad sysctls, unknown handler', async (t) => {
  const { c } = await daemon(t);
  const code = async (p: Promise<unknown>) => ((await t.throwsAsync(p)) as grpc.ServiceError).code;
  t.is(await code(c.call('runPodSandbox', { config: { hostname: 'x' } })), grpc.status.INVALID_ARGUMENT);
  t.is(await code(c.call('runPodSandbox', {})), grpc.status.INVALID_ARGUMENT);
  t.is(await code(c.call('podSandboxStatus', { podSandboxId: 'f'.repeat(64) })), grpc.status.NOT_FOUND);
  t.is(
    await code(c.call('runPodSandbox', { config: podConfig('bad-sysctl', { linux: { sysctls: { 'vm.swappiness': '1' } } }) })),
    grpc.status.INVALID_ARGUMENT,
  );
  t.is(await code(c.call('runPodSandbox', { config: podConfig('bad-handler'), runtimeHandler: 'kata' })), grpc.status.INVALID_ARGUMENT);
  await c.call('stopPodSandbox', { podSandboxId: 'f'.repeat(64) });
  await c.call('removePodSandbox', { podSandboxId: 'f'.repeat(64) });
  t.deepEqual((await c.call('listPodSandbox', {})).items, []);
});

test('a failing CNI plugin fails RunPodSandbox with its message and leaves nothing', async (t) => {
  const confDir = tempDir('crisp-test-badcni-');
  const bin = path.join(confDir, 'bin');
  fs.mkdirSync(bin);
  fs.writeFileSync(
    path.join(bin, 'crisp-failing'),
    '#!/bin/sh\ncat >/dev/null\nif [ "$CNI_COMMAND" = ADD ]; then echo \'{"cniVersion":"1.0.0","code":11,"msg":"no addresses left","details":"pool exhausted"}\'; exit 1; fi\nif [ "$CNI_COMMAND" = VERSION ]; then echo \'{"cniVersion":"1.0.0","supportedVersions":["1.0.0"]}\'; fi\nexit 0\n',
    { mode: 0o755 },
  );
  fs.writeFileSync(path.join(confDir, '10-bad.conflist'), JSON.stringify({ cniVersion: '1.0.0', name: 'bad', plugins: [{ type: 'crisp-failing' }] }));
  const d = await TestDaemon.start({ cniConfDir: confDir, cniBinDirs: [bin] });
  t.teardown(async () => {
    await d.destroy();
    fs.rmSync(confDir, { recursive: true, force: true });
  });
  const c = d.client();
  const err = (await t.throwsAsync(c.call('runPodSandbox', { config: podConfig('cni-fail') }))) as grpc.ServiceError;
  t.regex(err.details, /plugin crisp-failing failed \(ADD\): no addresses left: pool exhausted/);
  t.deepEqual((await c.call('listPodSandbox', {})).items, []);
  t.deepEqual(fs.readdirSync(path.join(d.state, 'sandboxes')), []);
  t.deepEqual(mountsUnder(d.dir), []);
});

test('kill -9 of the daemon half-way through RunPodSandbox: after restart the pod is fully gone', async (t) => {
  const { d } = await daemon(t, { CRISP_FAILPOINTS: 'sandbox-after-network' });
  const c = d.client();
  await t.throwsAsync(c.call('runPodSandbox', { config: podConfig('crash') }));
  await new Promise((resolve) => (d.child!.exitCode !== null || d.child!.signalCode !== null ? resolve(undefined) : d.child!.once('exit', resolve)));
  t.is(d.child!.signalCode, 'SIGKILL');
  const ids = fs.readdirSync(path.join(d.state, 'sandboxes'));
  t.is(ids.length, 1, 'the crash left a sandbox being created');
  d.options.env = {};
  await d.start();
  const c2 = d.client();
  t.deepEqual((await c2.call('listPodSandbox', {})).items, []);
  assertNothingLeft(t, d, ids[0]);
  const ipam = fs.readdirSync(t.context.net.ipamDir).filter((f) => f.startsWith('10.'));
  t.deepEqual(ipam, [], 'the IP allocated before the crash was released');
});

async function connectWithRetry(port: number, payload: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      await new Promise<void>((resolve, reject) => {
        const sock = net.connect({ host: '127.0.0.1', port }, () => sock.end(payload, () => resolve()));
        sock.on('error', reject);
        sock.setTimeout(3000, () => sock.destroy(new Error('connect timeout')));
      });
      return;
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

test('two pods reach each other, and a hostPort on 127.0.0.1 reaches a server in a pod', async (t) => {
  const { d, c } = await daemon(t);
  const hostPort = 20000 + crypto.randomInt(20000);
  const a = (await c.call('runPodSandbox', { config: podConfig('pa', { portMappings: [{ protocol: 0, containerPort: 8080, hostPort, hostIp: '127.0.0.1' }] }) })).podSandboxId;
  const b = (await c.call('runPodSandbox', { config: podConfig('pb') })).podSandboxId;
  const ipOf = async (id: string) => (await c.call('podSandboxStatus', { podSandboxId: id })).status!.network!.ip;
  const [ipA, ipB] = [await ipOf(a), await ipOf(b)];
  t.not(ipA, ipB);
  const netnsOf = (id: string) => path.join(d.state, 'sandboxes', id, 'ns', 'net');
  nsenter('net', netnsOf(a), ['busybox', 'ping', '-c', '1', '-W', '2', ipB]);
  nsenter('net', netnsOf(b), ['busybox', 'ping', '-c', '1', '-W', '2', ipA]);
  t.true((await natRules()).includes(`--dport ${hostPort}`), 'portmap installed the host port');

  const server = spawn('nsenter', [`--net=${netnsOf(a)}`, 'busybox', 'nc', '-l', '-p', '8080'], { stdio: ['pipe', 'pipe', 'ignore'] });
  t.teardown(() => {
    if (server.exitCode === null) server.kill('SIGKILL');
  });
  let received = '';
  server.stdout.on('data', (chunk: Buffer) => (received += chunk.toString()));
  const token = `hello-${tag}`;
  await connectWithRetry(hostPort, `${token}\n`);
  for (const until = Date.now() + 10_000; !received.includes(token) && Date.now() < until; ) await new Promise((r) => setTimeout(r, 50));
  t.true(received.includes(token), `the pod's server received ${JSON.stringify(received)}`);

  for (const id of [a, b]) await c.call('removePodSandbox', { podSandboxId: id });
  t.false((await natRules()).includes(a), 'no portmap rule for the removed pod is left');
  for (const id of [a, b]) assertNothingLeft(t, d, id);
});

test('a user-namespaced pod: bridge networking and sysctls work, its namespaces belong to its user namespace, removal leaves nothing', async (t) => {
  const { d, c } = await daemon(t);
  const map = { hostId: 300000, containerId: 0, length: 65536 };
  const config = podConfig('userns', {
    linux: {
      cgroupParent: `/crisp-test-${tag}`,
      sysctls: { 'net.ipv4.ip_unprivileged_port_start': '80' },
      securityContext: { namespaceOptions: { usernsOptions: { mode: NamespaceMode.POD, uids: [map], gids: [map] } } },
    },
  });
  const id = (await c.call('runPodSandbox', { config })).podSandboxId;
  const other = (await c.call('runPodSandbox', { config: podConfig('plain') })).podSandboxId;
  const ipOf = async (pod: string) => (await c.call('podSandboxStatus', { podSandboxId: pod })).status!.network!.ip;
  const nsDir = path.join(d.state, 'sandboxes', id, 'ns');
  t.true(fs.existsSync(path.join(nsDir, 'user')), 'the user namespace is pinned');
  nsenter('net', path.join(nsDir, 'net'), ['busybox', 'ping', '-c', '1', '-W', '2', await ipOf(other)]);
  t.is(nsenter('net', path.join(nsDir, 'net'), ['cat', '/proc/sys/net/ipv4/ip_unprivileged_port_start']).trim(), '80');
  // Inside its user namespace the pod's root is root: it may administer its own network.
  const inside = execFileSync('nsenter', [`--user=${path.join(nsDir, 'user')}`, `--net=${path.join(nsDir, 'net')}`, 'busybox', 'sh', '-c', 'cat /proc/self/uid_map; ip link set lo mtu 1400 && echo admin'], {
    encoding: 'utf8',
  });
  t.regex(inside, /^\s*0\s+300000\s+65536\n/);
  t.regex(inside, /admin/);
  for (const pod of [id, other]) await c.call('removePodSandbox', { podSandboxId: pod });
  for (const pod of [id, other]) assertNothingLeft(t, d, pod);
});

test('PID namespace shared by the pod: PID 1 there is crisp\'s init, not a container', async (t) => {
  const { d, c } = await daemon(t);
  const config = podConfig('sharedpid', {
    linux: { cgroupParent: `/crisp-test-${tag}`, securityContext: { namespaceOptions: { pid: NamespaceMode.POD } } },
  });
  const { podSandboxId: id } = await c.call('runPodSandbox', { config });
  const pidns = path.join(d.state, 'sandboxes', id, 'ns', 'pid');
  t.true(fs.existsSync(pidns), 'the pod PID namespace is pinned');
  const out = execFileSync('nsenter', [`--pid=${pidns}`, '--', 'unshare', '--mount', '--mount-proc', '--', 'busybox', 'sh', '-c', 'cat /proc/1/comm; echo $$'], {
    encoding: 'utf8',
  }).split('\n');
  t.is(out[0], 'crisp-pod-init', 'PID 1 of the pod is the monitor\'s init');
  t.not(out[1], '1', 'a process entering the pod is not PID 1');
  await c.call('removePodSandbox', { podSandboxId: id });
  assertNothingLeft(t, d, id);
});

test('host IPC and host PID pods use the node namespaces', async (t) => {
  const { d, c } = await daemon(t);
  const config = podConfig('hostipc', {
    linux: {
      cgroupParent: `/crisp-test-${tag}`,
      securityContext: { namespaceOptions: { ipc: NamespaceMode.NODE, pid: NamespaceMode.NODE } },
    },
  });
  const { podSandboxId: id } = await c.call('runPodSandbox', { config });
  const st = (await c.call('podSandboxStatus', { podSandboxId: id, verbose: true }));
  const pid = JSON.parse(st.info.info).pid as number;
  const nsOf = (p: number | string, kind: string) => fs.readlinkSync(`/proc/${p}/ns/${kind}`);
  t.is(nsOf(pid, 'ipc'), nsOf('self', 'ipc'), 'host IPC namespace');
  t.is(nsOf(pid, 'pid'), nsOf('self', 'pid'), 'host PID namespace');
  t.not(nsOf(pid, 'net'), nsOf('self', 'net'), 'still its own network namespace');
  t.false(fs.existsSync(path.join(d.state, 'sandboxes', id, 'ns', 'ipc')));
  t.false(fs.existsSync(path.join(d.state, 'sandboxes', id, 'ns', 'pid')));
  t.false(mountsUnder(d.dir).some((l) => l.includes('/shm ')), 'no private /dev/shm for host IPC');
  await c.call('removePodSandbox', { podSandboxId: id });
  assertNothingLeft(t, d, id);
});

test('kill -9 right after the monitor started: after restart the pod is fully gone', async (t) => {
  const { d } = await daemon(t, { CRISP_FAILPOINTS: 'sandbox-after-monitor' });
  await t.throwsAsync(d.client().call('runPodSandbox', { config: podConfig('crash2') }));
  await new Promise((resolve) => (d.child!.exitCode !== null || d.child!.signalCode !== null ? resolve(undefined) : d.child!.once('exit', resolve)));
  const ids = fs.readdirSync(path.join(d.state, 'sandboxes'));
  t.is(ids.length, 1);
  d.options.env = {};
  await d.start();
  t.deepEqual((await d.client().call('listPodSandbox', {})).items, []);
  assertNothingLeft(t, d, ids[0]);
});

test('a pod whose monitor dies turns NOTREADY at once, and stop and remove still clean up', async (t) => {
  const { d, c } = await daemon(t);
  const { podSandboxId: id } = await c.call('runPodSandbox', { config: podConfig('lost') });
  const verbose = await c.call('podSandboxStatus', { podSandboxId: id, verbose: true });
  t.is(verbose.status!.state, PodSandboxState.SANDBOX_READY);
  const pid = (JSON.parse(verbose.info.info!) as { pid: number }).pid;
  t.true(pid > 0);
  // Asked for often, as kubelet does, so liveness is being answered from what the daemon knows.
  t.is((await c.call('listPodSandbox', {})).items.find((p) => p.id === id)?.state, PodSandboxState.SANDBOX_READY);
  process.kill(pid, 'SIGKILL');
  const until = Date.now() + 2000;
  let state = PodSandboxState.SANDBOX_READY;
  while (Date.now() < until) {
    state = (await c.call('listPodSandbox', {})).items.find((p) => p.id === id)!.state;
    if (state === PodSandboxState.SANDBOX_NOTREADY) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  t.is(state, PodSandboxState.SANDBOX_NOTREADY, 'listed NOTREADY within 2 s of the monitor dying');
  t.is((await c.call('podSandboxStatus', { podSandboxId: id })).status!.state, PodSandboxState.SANDBOX_NOTREADY);
  await c.call('stopPodSandbox', { podSandboxId: id });
  await c.call('removePodSandbox', { podSandboxId: id });
  assertNothingLeft(t, d, id);
});
