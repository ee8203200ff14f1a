import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import anyTest, { type TestFn } from 'ava';
import { NamespaceMode } from '../../src/generated/runtime/v1/api';
import { removeCgroupParents } from '../fixtures/test_network';
import type { PushedImage } from '../fixtures/images';
import { criLogText, type PodEnv, runContainer, shellContainer, startBusyboxRegistry, startPodEnv, waitExited } from '../fixtures/pod_env';
import type { RegistryHandle } from '../fixtures/registry';

/**
 * What a container of a pod sharing its PID namespace (shareProcessNamespace) can reach through
 * the processes crisp puts there: the pod's init, exec'd processes while they are set up, and
 * startContainer hooks. Each test performs the attack through the daemon's socket.
 */
interface Context {
  registry: RegistryHandle;
  busybox: PushedImage;
}
const test = anyTest as TestFn<Context>;
const tag = crypto.randomBytes(3).toString('hex');
const CGROUP_PARENT = `/crisp-test-p${tag}`;
const POD_PID = { namespaceOptions: { network: NamespaceMode.NODE, pid: NamespaceMode.POD } };

test.before(async (t) => {
  const { registry, busybox } = await startBusyboxRegistry();
  t.context = { registry, busybox };
});

test.after.always(async (t) => {
  await t.context.registry?.stop();
  removeCgroupParents(CGROUP_PARENT);
});

async function sharedPidPod(t: any, daemonConfig?: string): Promise<PodEnv> {
  return startPodEnv(t, {
    image: t.context.busybox.reference,
    cgroupParent: CGROUP_PARENT,
    name: 'shared-pid',
    podExtra: { linux: { cgroupParent: CGROUP_PARENT, securityContext: POD_PID } },
    daemonConfig,
  });
}

function container(t: any, script: string, securityContext: Record<string, unknown> = {}, extra: Record<string, unknown> = {}) {
  return shellContainer(t.context.busybox.reference, 'p', script, { linux: { securityContext }, ...extra });
}

/** A file only the node has, in a directory of its own: what a container must never reach. */
function nodeSecret(t: any): { dir: string; file: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'crisp-node-secret-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'secret');
  fs.writeFileSync(file, `node-only-${tag}\n`);
  return { dir, file };
}

async function sh(env: PodEnv, containerId: string, script: string) {
  const r = await env.c.call('execSync', { containerId, cmd: ['/bin/sh', '-c', script], timeout: 30n });
  return { code: r.exitCode, out: r.stdout.toString(), err: r.stderr.toString() };
}

test('the pod init holds nothing of the node: not its root through /proc/1/root, not its mounts through /proc/1/mountinfo', async (t) => {
  const secret = nodeSecret(t);
  const env = await sharedPidPod(t);
  const ptrace = await runContainer(env, container(t, 'sleep 3600', { capabilities: { addCapabilities: ['SYS_PTRACE'] } }));
  const bare = await runContainer(env, container(t, 'sleep 3600', { capabilities: { dropCapabilities: ['ALL'] } }));

  t.is((await sh(env, ptrace, 'cat /proc/1/comm')).out.trim(), 'crisp-pod-init', 'PID 1 is the pod init');
  const read = await sh(env, ptrace, `cat /proc/1/root${secret.file}`);
  t.false(read.out.includes('node-only'), 'the node\'s files are not readable through the init');
  t.not(read.code, 0);
  const write = await sh(env, ptrace, `echo pwned > /proc/1/root${secret.dir}/written`);
  t.not(write.code, 0);
  t.false(fs.existsSync(path.join(secret.dir, 'written')), 'nor writable');
  const listing = await sh(env, ptrace, 'ls -A /proc/1/root/ /proc/1/cwd/ | grep -v : | grep . ; grep -E "^(CapEff|CapBnd|NoNewPrivs|Seccomp):" /proc/1/status');
  t.deepEqual(
    listing.out.trim().split('\n').map((l) => l.replace(/\s+/g, ' ')),
    ['CapEff: 0000000000000000', 'CapBnd: 0000000000000000', 'NoNewPrivs: 1', 'Seccomp: 2'],
    'an empty root and working directory; no capability, none to regain, a seccomp filter',
  );

  // Without any capability: the init is not dumpable, and its mount table is its own.
  t.not((await sh(env, bare, 'ls /proc/1/root/')).code, 0);
  const mounts = await sh(env, bare, 'cat /proc/1/mountinfo');
  t.is(mounts.code, 0, mounts.err);
  const lines = mounts.out.trim().split('\n');
  t.is(lines.length, 1, `only its empty root is mounted: ${mounts.out}`);
  t.is(lines[0]!.split(' ')[4], '/');
  t.false(mounts.out.includes(os.tmpdir()) || mounts.out.includes('cgroup'), 'nothing of the node\'s mounts');

  // Confined, it still does its job: an orphan of the pod is reaped, not left a zombie.
  const orphan = await sh(env, bare, 'sleep 0.2 & echo $!');
  const orphanPid = orphan.out.trim();
  let state = '';
  for (let i = 0; i < 50; i++) {
    await new Promise((r) => setTimeout(r, 100));
    state = (await sh(env, bare, `cat /proc/${orphanPid}/stat 2>/dev/null | cut -d' ' -f3; true`)).out.trim();
    if (state === '') break;
  }
  t.is(state, '', `the orphan ${orphanPid} is gone (state ${state})`);
  t.is((await sh(env, bare, 'cat /proc/1/comm')).out.trim(), 'crisp-pod-init', 'and the init is alive');
});

test('exec\'d and starting processes are never seen in the pod outside their container: 200 execs and 10 containers against a sibling watching /proc', async (t) => {
  const secret = nodeSecret(t);
  const env = await sharedPidPod(t);
  const target = await runContainer(env, container(t, 'sleep 3600'));
  // The watcher (root with CAP_SYS_PTRACE, like a debugging sidecar) scans every process of the
  // pod for a working directory or root on the node, or more descriptors than a starting
  // process has of its own (stdio, its status pipe, a container's start gate, for a moment both
  // ends of the pipe that orders it after its set-up process, until its masks are made the copy
  // of the node's /dev/null they are made from, and on LSM hosts the procfs its label is written
  // through): the monitor holds dozens.
  // Shell builtins only: the scan itself starts no process.
  const watch = [
    'self=$$',
    'while :; do',
    '  for p in /proc/[0-9]*; do',
    // The init is the first test's; this one is about processes that come and go.
    '    [ "$p" = /proc/$self ] || [ "$p" = /proc/1 ] && continue',
    `    [ -e $p/cwd${secret.file} ] && echo "cwd $p" >> /tmp/leaks`,
    `    [ -e $p/root${secret.file} ] && echo "root $p" >> /tmp/leaks`,
    '    set -- $p/fd/*',
    '    [ $# -gt 9 ] && read -r comm < $p/comm && echo "fds $p $# $comm" >> /tmp/leaks',
    '  done',
    'done',
  ].join('\n');
  const watcher = await runContainer(env, container(t, watch, { capabilities: { addCapabilities: ['SYS_PTRACE'] } }));
  for (let i = 0; i < 200; i++) {
    const r = await env.c.call('execSync', { containerId: target, cmd: ['true'], timeout: 10n });
    t.is(r.exitCode, 0);
  }
  for (let i = 0; i < 10; i++) await runContainer(env, container(t, 'true'));
  const leaks = await sh(env, watcher, 'cat /tmp/leaks 2>/dev/null; true');
  t.is(leaks.out, '', 'no process of the pod showed the node or the monitor\'s descriptors');
});

test('startContainer hooks run as the container does: its capabilities, identity and PID namespace', async (t) => {
  const cdiDir = fs.mkdtempSync(path.join(os.tmpdir(), 'crisp-cdi-start-'));
  t.teardown(() => fs.rmSync(cdiDir, { recursive: true, force: true }));
  const record = 'grep -E "^(CapEff|Uid|NSpid):" /proc/self/status > /tmp/hook-status; cat /proc/self/cgroup > /tmp/hook-cgroup';
  fs.writeFileSync(
    path.join(cdiDir, 'start.json'),
    JSON.stringify({
      cdiVersion: '0.6.0',
      kind: 'crisp.test/start',
      devices: [{ name: 'caps', containerEdits: { hooks: [{ hookName: 'startContainer', path: '/bin/sh', args: ['sh', '-c', record] }] } }],
    }),
  );
  const env = await sharedPidPod(t, `[cdi]\nspec_dirs = ${JSON.stringify([cdiDir])}\n`);
  const id = await runContainer(
    env,
    container(
      t,
      'cat /tmp/hook-status; cat /proc/self/cgroup | cmp -s - /tmp/hook-cgroup && echo same-cgroup',
      { capabilities: { dropCapabilities: ['ALL'], addCapabilities: ['NET_ADMIN'] } },
      { CDIDevices: [{ name: 'crisp.test/start=caps' }] },
    ),
  );
  const st = await waitExited(env, id);
  const out = criLogText(st.logPath);
  t.is(st.exitCode, 0, out);
  t.regex(out, /^CapEff:\s+0000000000001000$/m, 'only the container\'s CAP_NET_ADMIN');
  // NSpid lists the pid in each PID namespace from that of the container's /proc down: one
  // means the hook ran in the pod's (outside it, /proc/self would not even resolve there).
  t.regex(out, /^NSpid:\s+\d+$/m, 'in the pod\'s PID namespace');
  t.regex(out, /^same-cgroup$/m, 'in the container\'s cgroup');
});
