import { execFileSync, spawnSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import anyTest, { type ExecutionContext, type TestFn } from 'ava';
import type { CriClient } from '../../src/client/cri_client';
import { ContainerState, NamespaceMode } from '../../src/generated/runtime/v1/api';
import { TestDaemon, tempDir } from '../fixtures/daemon';
import { buildFixtureImages, type PushedImage, pushFixtures } from '../fixtures/images';
import { type RegistryHandle, startRegistry } from '../fixtures/registry';

/**
 * CheckpointContainer through the daemon's socket. The pod has its own network namespace
 * (loopback only), so the dump must treat the pod's namespaces and bind mounts as external.
 *
 * Whether CRIU can dump anything depends on the host: the CRIU in PATH must support the running
 * kernel (`criu check`). Where it does, the archive is taken apart and checked; where it does not,
 * the call must say so (UNIMPLEMENTED, with CRIU's reason) and leave the container alone.
 */
interface Context {
  registry: RegistryHandle;
  busybox: PushedImage;
  dir: string;
  d: TestDaemon;
  c: CriClient;
  pod: string;
  podConfig: Record<string, unknown>;
}
const test = anyTest.serial as TestFn<Context>;
const tag = crypto.randomBytes(3).toString('hex');
const CGROUP_PARENT = `/crisp-test-ckpt${tag}`;

const criuWorks = spawnSync('criu', ['check'], { stdio: 'ignore' }).status === 0;

test.before(async (t) => {
  const dir = tempDir('crisp-test-ckpt-');
  t.context = { dir } as Context;
  const cniConfDir = path.join(dir, 'net.d');
  fs.mkdirSync(cniConfDir);
  fs.writeFileSync(path.join(cniConfDir, '10-lo.conflist'), JSON.stringify({ cniVersion: '1.0.0', name: 'lo-only', plugins: [{ type: 'loopback' }] }));
  const set = await buildFixtureImages();
  t.context.registry = await startRegistry();
  t.context.busybox = (await pushFixtures(t.context.registry, ['busybox'], { set })).busybox!;
  t.context.d = await TestDaemon.start({ cniConfDir });
  const c = t.context.d.client();
  t.context.c = c;
  await c.call('pullImage', { image: { image: t.context.busybox.reference } });
  const podConfig = {
    metadata: { name: 'ckpt', namespace: 'e2e', uid: `uid-ckpt-${tag}`, attempt: 0 },
    hostname: 'ckpt',
    logDirectory: path.join(dir, 'logs'),
    linux: { cgroupParent: CGROUP_PARENT },
  };
  t.context.podConfig = podConfig;
  t.context.pod = (await c.call('runPodSandbox', { config: podConfig })).podSandboxId;
});

test.after.always(async (t) => {
  const { d, registry, dir } = t.context ?? {};
  await d?.destroy();
  await registry?.stop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
  for (const hierarchy of fs.readdirSync('/sys/fs/cgroup')) {
    const cg = path.join('/sys/fs/cgroup', hierarchy, CGROUP_PARENT);
    if (fs.existsSync(cg)) fs.rmdirSync(cg);
  }
  if (fs.existsSync(`/sys/fs/cgroup${CGROUP_PARENT}`)) fs.rmdirSync(`/sys/fs/cgroup${CGROUP_PARENT}`);
});

let counter = 0;
async function run(t: ExecutionContext<Context>, script: string, extra: Record<string, unknown> = {}): Promise<{ id: string; log: string }> {
  const { c, pod, podConfig, busybox, dir } = t.context;
  const name = `c${counter++}`;
  const { containerId } = await c.call('createContainer', {
    podSandboxId: pod,
    sandboxConfig: podConfig,
    config: { metadata: { name, attempt: 0 }, image: { image: busybox.reference }, command: ['/bin/sh', '-c', script], logPath: `${name}.log`, ...extra },
  });
  await c.call('startContainer', { containerId });
  return { id: containerId, log: path.join(dir, 'logs', `${name}.log`) };
}

async function until(what: string, done: () => boolean, timeoutMs = 10_000): Promise<void> {
  for (const deadline = Date.now() + timeoutMs; !done(); ) {
    if (Date.now() > deadline) throw new Error(`${what}: not reached within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function logLines(file: string): string[] {
  return fs.existsSync(file) ? fs.readFileSync(file, 'utf8').split('\n').filter(Boolean) : [];
}

function tarMembers(archive: string): string[] {
  return execFileSync('tar', ['--list', '--file', archive], { encoding: 'utf8' }).split('\n').filter(Boolean);
}

function extract(archive: string, member: string): Buffer {
  return execFileSync('tar', ['--extract', '--to-stdout', '--file', archive, member], { maxBuffer: 64 << 20 });
}

async function state(t: ExecutionContext<Context>, id: string): Promise<ContainerState> {
  return (await t.context.c.call('containerStatus', { containerId: id })).status!.state;
}

test('a running container is checkpointed and keeps running (refused as unimplemented where CRIU cannot run)', async (t) => {
  const { c, dir } = t.context;
  // A file the image has, removed; a file of its own; output that shows it is alive.
  const script = 'rm /etc/group; echo kept-state > /root/state.txt; i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done';
  const { id, log } = await run(t, script);
  await until('the container prints', () => logLines(log).length >= 3);
  const out = path.join(dir, 'archives');
  fs.mkdirSync(out, { recursive: true });
  const location = path.join(out, `checkpoint-${id.slice(0, 12)}.tar`);

  if (!criuWorks) {
    const err = (await t.throwsAsync(c.call('checkpointContainer', { containerId: id, location, timeout: 30n }))) as grpc.ServiceError;
    t.is(err.code, grpc.status.UNIMPLEMENTED);
    t.regex(err.details, /CRIU that works on this kernel: (criu check failed: .+|"criu" was not found in PATH)/);
    t.false(fs.existsSync(location));
    t.deepEqual(fs.readdirSync(out), []);
    t.is(await state(t, id), ContainerState.CONTAINER_RUNNING);
    return;
  }

  await c.call('checkpointContainer', { containerId: id, location, timeout: 60n });
  const linesAtCheckpoint = logLines(log).length;

  // The archive, and nothing else, is left in the directory; it holds memory, so root only.
  t.deepEqual(fs.readdirSync(out), [path.basename(location)]);
  t.is(fs.statSync(location).mode & 0o777, 0o600);
  const members = tarMembers(location);
  for (const m of ['checkpoint/inventory.img', 'checkpoint/pstree.img', 'checkpoint/descriptors.json', 'config.dump', 'spec.dump', 'rootfs-diff.tar', 'dump.log', 'deleted.files']) {
    t.true(members.includes(m), `${m} in ${members.join(', ')}`);
  }
  t.true(members.some((m) => /^checkpoint\/pages-\d+\.img$/.test(m)), 'memory pages were dumped');
  t.regex(extract(location, 'dump.log').toString(), /Dumping finished successfully/);

  const config = JSON.parse(extract(location, 'config.dump').toString()) as Record<string, string>;
  t.is(config.id, id);
  t.is(config.name, 'c0');
  t.is(config.rootfsImageName, t.context.busybox.reference);
  t.true(config.rootfsImageRef.startsWith('sha256:'));
  t.false(Number.isNaN(Date.parse(config.checkpointedTime)));
  const spec = JSON.parse(extract(location, 'spec.dump').toString()) as { process: { args: string[] } };
  t.deepEqual(spec.process.args, ['/bin/sh', '-c', script]);
  t.deepEqual(JSON.parse(extract(location, 'deleted.files').toString()), ['/etc/group']);

  // The writable layer: the container's own file, not the mountpoints of the pod's files.
  const diff = path.join(dir, 'rootfs-diff.tar');
  fs.writeFileSync(diff, extract(location, 'rootfs-diff.tar'));
  const diffMembers = tarMembers(diff);
  t.true(diffMembers.includes('root/state.txt'), diffMembers.join(', '));
  t.false(diffMembers.some((m) => m.startsWith('etc/')), diffMembers.join(', '));
  t.is(extract(diff, 'root/state.txt').toString(), 'kept-state\n');

  // Still running, still printing.
  t.is(await state(t, id), ContainerState.CONTAINER_RUNNING);
  await until('the container prints after the checkpoint', () => logLines(log).length >= linesAtCheckpoint + 5);
  const last = logLines(log).at(-1)!;
  t.regex(last, /stdout F tick \d+$/);
});

test('a container with a terminal: its pty is external to the dump', async (t) => {
  const { c, dir } = t.context;
  const { id, log } = await run(t, 'while true; do date; sleep 0.2; done', { tty: true, stdin: true });
  await until('the container prints', () => logLines(log).length >= 2);
  const location = path.join(dir, `tty-${id.slice(0, 12)}.tar`);
  if (criuWorks) {
    await c.call('checkpointContainer', { containerId: id, location, timeout: 60n });
    t.true(tarMembers(location).includes('checkpoint/inventory.img'));
    // The container's stdio is the pty the monitor holds (dumped as an external tty).
    const descriptors = JSON.parse(extract(location, 'checkpoint/descriptors.json').toString()) as string[];
    t.is(descriptors.length, 3);
    for (const d of descriptors) t.regex(d, /^\/dev\/pts\/\d+$/);
  } else {
    const err = (await t.throwsAsync(c.call('checkpointContainer', { containerId: id, location, timeout: 60n }))) as grpc.ServiceError;
    t.is(err.code, grpc.status.UNIMPLEMENTED);
    t.log(err.details);
    t.false(fs.existsSync(location));
  }
  const before = logLines(log).length;
  await until('the container prints after the checkpoint', () => logLines(log).length > before + 2);
  t.is(await state(t, id), ContainerState.CONTAINER_RUNNING);
});

test('a container that is not its PID namespace\'s init: the pod\'s namespace is external to the dump', async (t) => {
  const { c, dir, busybox } = t.context;
  const podConfig = {
    metadata: { name: 'ckpt-shared-pid', namespace: 'e2e', uid: `uid-ckpt-pid-${tag}`, attempt: 0 },
    hostname: 'ckpt-shared-pid',
    logDirectory: path.join(dir, 'logs-shared-pid'),
    linux: { cgroupParent: CGROUP_PARENT, securityContext: { namespaceOptions: { pid: NamespaceMode.POD } } },
  };
  const pod = (await c.call('runPodSandbox', { config: podConfig })).podSandboxId;
  t.teardown(async () => {
    await c.call('stopPodSandbox', { podSandboxId: pod });
    await c.call('removePodSandbox', { podSandboxId: pod });
  });
  const { containerId } = await c.call('createContainer', {
    podSandboxId: pod,
    sandboxConfig: podConfig,
    config: { metadata: { name: 'counter', attempt: 0 }, image: { image: busybox.reference }, command: ['/bin/sh', '-c', 'while true; do echo $$; sleep 0.2; done'], logPath: 'counter.log' },
  });
  await c.call('startContainer', { containerId });
  const log = path.join(dir, 'logs-shared-pid', 'counter.log');
  await until('the container prints', () => logLines(log).length >= 2);
  // Not the namespace's init: the pod's first process is.
  t.not(logLines(log)[0]!.split(' ').at(-1), '1');
  const location = path.join(dir, `shared-pid-${containerId.slice(0, 12)}.tar`);
  if (!criuWorks) {
    const err = (await t.throwsAsync(c.call('checkpointContainer', { containerId, location, timeout: 60n }))) as grpc.ServiceError;
    t.is(err.code, grpc.status.UNIMPLEMENTED);
    return;
  }
  await c.call('checkpointContainer', { containerId, location, timeout: 60n });
  t.true(tarMembers(location).includes('checkpoint/inventory.img'));
  const before = logLines(log).length;
  await until('the container prints after the checkpoint', () => logLines(log).length > before + 2);
});

test('bad requests are refused before anything is dumped', async (t) => {
  const { c, dir } = t.context;
  const location = path.join(dir, 'refused.tar');
  const code = async (req: Record<string, unknown>): Promise<grpc.status> =>
    ((await t.throwsAsync(c.call('checkpointContainer', { timeout: 0n, ...req }))) as grpc.ServiceError).code;

  t.is(await code({ containerId: 'f'.repeat(64), location }), grpc.status.NOT_FOUND);
  t.is(await code({ containerId: '', location }), grpc.status.INVALID_ARGUMENT);

  const { id } = await run(t, 'sleep 600');
  t.is(await code({ containerId: id, location: 'relative/archive.tar' }), grpc.status.INVALID_ARGUMENT);
  t.is(await code({ containerId: id, location: path.join(dir, 'no-such-dir', 'a.tar') }), grpc.status.INVALID_ARGUMENT);
  t.is(await code({ containerId: id, location: dir }), grpc.status.INVALID_ARGUMENT);

  await c.call('stopContainer', { containerId: id, timeout: 0n });
  t.is(await state(t, id), ContainerState.CONTAINER_EXITED);
  const err = (await t.throwsAsync(c.call('checkpointContainer', { containerId: id, location, timeout: 0n }))) as grpc.ServiceError;
  t.is(err.code, grpc.status.FAILED_PRECONDITION);
  t.regex(err.details, /only running containers can be checkpointed/);

  const created = (
    await c.call('createContainer', {
      podSandboxId: t.context.pod,
      sandboxConfig: t.context.podConfig,
      config: { metadata: { name: 'never-started', attempt: 0 }, image: { image: t.context.busybox.reference }, command: ['true'] },
    })
  ).containerId;
  t.is(await code({ containerId: created, location }), grpc.status.FAILED_PRECONDITION);
  t.false(fs.existsSync(location));
});
