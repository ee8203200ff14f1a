import * as os from 'node:os';
import { execFileSync, spawnSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import anyTest, { type TestFn } from 'ava';
import { ContainerState } from '../../src/generated/runtime/v1/api';
import { removeCgroupParents } from '../fixtures/test_network';
import { connectSpdy, readAll, spdyRemoteCommand } from '../fixtures/spdy_client';
import type { PushedImage } from '../fixtures/images';
import { criLogText, type PodEnv, readCriLog, runContainer, shellContainer, startBusyboxRegistry, startPodEnv, waitExited } from '../fixtures/pod_env';
import type { RegistryHandle } from '../fixtures/registry';

/**
 * Containers through the daemon's socket, from images in a real registry. Pods use host networking
 * here (no CNI needed); networking is covered by the sandbox tests.
 */
interface Context {
  registry: RegistryHandle;
  busybox: PushedImage;
  userImage: PushedImage;
  multilayer: PushedImage;
  volumeDev: PushedImage;
}
const test = anyTest as TestFn<Context>;
const tag = crypto.randomBytes(3).toString('hex');
const CGROUP_PARENT = `/crisp-test-c${tag}`;

test.before(async (t) => {
  const { registry, busybox, pushed } = await startBusyboxRegistry(['user-name', 'multilayer', 'volume-dev']);
  t.context = { registry, busybox, userImage: pushed['user-name']!, multilayer: pushed.multilayer!, volumeDev: pushed['volume-dev']! };
});

test.after.always(async (t) => {
  await t.context.registry?.stop();
  removeCgroupParents(CGROUP_PARENT);
});

type Env = PodEnv;

async function setup(t: any, podExtra: Record<string, unknown> = {}, daemonConfig?: string): Promise<Env> {
  return startPodEnv(t, {
    image: t.context.busybox.reference,
    cgroupParent: CGROUP_PARENT,
    name: 'ctr-pod',
    podExtra: { linux: { cgroupParent: CGROUP_PARENT, securityContext: { namespaceOptions: { network: 2 } } }, ...podExtra },
    daemonConfig,
  });
}

function containerConfig(t: any, script: string, extra: Record<string, unknown> = {}) {
  return shellContainer(t.context.busybox.reference, 'c', script, { labels: { test: 'container' }, ...extra });
}

const run = runContainer;
const readLog = readCriLog;
const logText = criLogText;

test('exit codes and reasons; output in the CRI log format', async (t) => {
  const env = await setup(t);
  const ok = await run(env, containerConfig(t, 'echo hello; echo oops >&2; exit 0'));
  const bad = await run(env, containerConfig(t, 'exit 3'));
  const okSt = await waitExited(env, ok);
  t.is(okSt.exitCode, 0);
  t.is(okSt.reason, 'Completed');
  t.true(okSt.startedAt > 0n && okSt.finishedAt >= okSt.startedAt);
  const badSt = await waitExited(env, bad);
  t.is(badSt.exitCode, 3);
  t.is(badSt.reason, 'Error');

  const lines = readLog(okSt.logPath);
  t.deepEqual(
    lines.map((l) => [l.stream, l.tag, l.content]).sort(),
    [
      ['stderr', 'F', 'oops'],
      ['stdout', 'F', 'hello'],
    ],
  );
  // RFC3339Nano as Go formats it: trailing zeros of the fraction are dropped.
  for (const l of lines) t.regex(l.time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$/);
  t.is(okSt.logPath, path.join(env.logDir, (okSt.metadata!.name as string) + '.log'));

  const list = await env.c.call('listContainers', { filter: { podSandboxId: env.pod } });
  t.deepEqual(list.containers.map((c) => c.id).sort(), [ok, bad].sort());
  const exited = await env.c.call('listContainers', { filter: { state: { state: ContainerState.CONTAINER_EXITED }, labelSelector: { test: 'container' } } });
  t.is(exited.containers.length, 2);
});

test('long lines become partial records; the log is reopened after kubelet renames it', async (t) => {
  const env = await setup(t);
  const id = await run(env, containerConfig(t, 'head -c 40000 /dev/zero | tr "\\\\0" a; echo; echo first; sleep 2; echo second'));
  const st0 = (await env.c.call('containerStatus', { containerId: id })).status!;
  for (let i = 0; i < 100 && !(fs.existsSync(st0.logPath) && fs.readFileSync(st0.logPath, 'utf8').includes('first')); i++) {
    await new Promise((r) => setTimeout(r, 20));
  }
  const lines = readLog(st0.logPath);
  t.true(lines.filter((l) => l.tag === 'P').length >= 2, 'a 40000-byte line is split into partial records');
  t.is(logText(st0.logPath).split('\n')[0], 'a'.repeat(40000));
  fs.renameSync(st0.logPath, `${st0.logPath}.1`);
  await env.c.call('reopenContainerLog', { containerId: id });
  await waitExited(env, id);
  t.true(fs.readFileSync(`${st0.logPath}.1`, 'utf8').includes('first'));
  t.is(logText(st0.logPath), 'second\n', 'output after the reopen goes to the new file');
  const err = (await t.throwsAsync(env.c.call('reopenContainerLog', { containerId: id }))) as grpc.ServiceError;
  t.is(err.code, grpc.status.FAILED_PRECONDITION);
});

test('users, groups and supplemental groups', async (t) => {
  const env = await setup(t);
  await env.c.call('pullImage', { image: { image: t.context.userImage.reference } });
  const byImage = await run(env, { ...containerConfig(t, 'id'), image: { image: t.context.userImage.reference } });
  const byUid = await run(env, containerConfig(t, 'id', { linux: { securityContext: { runAsUser: { value: 1234n }, runAsGroup: { value: 4321n }, supplementalGroups: [5000n] } } }));
  const st1 = await waitExited(env, byImage);
  t.regex(logText(st1.logPath), /^uid=1000\(test\) gid=1000\(test\) groups=.*2000.*3000/);
  t.is(st1.user?.linux?.uid, 1000n);
  const st2 = await waitExited(env, byUid);
  t.regex(logText(st2.logPath), /^uid=1234 gid=4321 groups=.*5000/);
  const err = (await t.throwsAsync(
    env.c.call('createContainer', { podSandboxId: env.pod, config: containerConfig(t, 'id', { linux: { securityContext: { runAsGroup: { value: 1n } } } }) }),
  )) as grpc.ServiceError;
  t.is(err.code, grpc.status.INVALID_ARGUMENT);

  // Strict: the image's /etc/group adds nothing; kubelet admits such pods only on runtimes saying so.
  t.true((await env.c.call('status', {})).features?.supplementalGroupsPolicy);
  const strict = await run(env, {
    ...containerConfig(t, 'id', { linux: { securityContext: { supplementalGroups: [5000n], supplementalGroupsPolicy: 1 } } }),
    image: { image: t.context.userImage.reference },
  });
  const st3 = await waitExited(env, strict);
  t.regex(logText(st3.logPath), /^uid=1000\(test\) gid=1000\(test\) groups=1000\(test\),5000\n?$/);
  t.deepEqual(st3.user?.linux?.supplementalGroups, [1000n, 5000n]);
});

test('image volumes: the image as the container root would show it, read-only; a sub directory or file; errors', async (t) => {
  const env = await setup(t);
  const volumeImage = t.context.multilayer.reference;
  const mount = (containerPath: string, imageSubPath = '') => ({ containerPath, image: { image: volumeImage }, imageSubPath, readonly: true });
  const script = [
    'cat /vol/data/keep.txt /vol/data/recreated.txt /vol/data/type-change/inner.txt',
    'ls /vol/data/remove-me.txt /vol/gone-dir 2>/dev/null || echo hidden',
    'ls /opq',
    'cat /keep',
    'touch /vol/new 2>/dev/null || echo read-only',
    "grep ' /vol ' /proc/self/mounts | grep -o 'ro,nosuid,nodev' | head -1",
  ].join('; ');
  const config = containerConfig(t, script, { mounts: [mount('/vol'), mount('/opq', 'opaque'), mount('/keep', 'data/keep.txt')] });
  const missing = (await t.throwsAsync(env.c.call('createContainer', { podSandboxId: env.pod, config }))) as grpc.ServiceError;
  t.is(missing.code, grpc.status.NOT_FOUND, 'the volume image must be pulled first');
  t.regex(missing.details, /multilayer.*not found/);

  await env.c.call('pullImage', { image: { image: volumeImage } });
  const id = await run(env, config);
  const st = await waitExited(env, id);
  t.is(st.exitCode, 0, logText(st.logPath));
  t.deepEqual(logText(st.logPath).trim().split('\n'), [
    'kept from layer 1',
    'recreated in layer 3',
    'the file became a directory',
    'hidden',
    'new.txt',
    'kept from layer 1',
    'read-only',
    'ro,nosuid,nodev',
  ]);

  for (const [sub, code] of [['gone-dir', grpc.status.INVALID_ARGUMENT], ['../etc', grpc.status.INVALID_ARGUMENT], ['data/symlink', grpc.status.INVALID_ARGUMENT]] as const) {
    const err = (await t.throwsAsync(
      env.c.call('createContainer', { podSandboxId: env.pod, config: containerConfig(t, 'true', { mounts: [mount('/v', sub)] }) }),
    )) as grpc.ServiceError;
    t.is(err.code, code, `${sub}: ${err.details}`);
    t.regex(err.details, /image_sub_path/);
  }
});

test('CDI devices from a YAML spec: nodes with their cgroup permissions, environment, mounts; unknown devices fail', async (t) => {
  const cdiDir = fs.mkdtempSync(path.join(os.tmpdir(), 'crisp-cdi-e2e-'));
  t.teardown(() => fs.rmSync(cdiDir, { recursive: true, force: true }));
  const info = path.join(cdiDir, 'info.txt');
  fs.writeFileSync(info, 'from the CDI spec\n');
  fs.writeFileSync(
    path.join(cdiDir, 'crisp-test.yaml'),
    [
      'cdiVersion: 0.6.0',
      'kind: crisp.test/dev',
      'containerEdits:',
      '  mounts:',
      `    - {hostPath: ${info}, containerPath: /etc/cdi-info, options: [ro, nosuid, nodev, bind]}`,
      'devices:',
      '  - name: "null"',
      '    containerEdits:',
      '      env: [CDI_DEV=null]',
      '      deviceNodes: [{path: /dev/crisp-null, hostPath: /dev/null}]',
      // Not among the nodes every container may use: its cgroup rule is the spec's alone.
      '  - name: loop-control',
      '    containerEdits:',
      '      deviceNodes: [{path: /dev/crisp-loop, hostPath: /dev/loop-control, permissions: r}]',
      '',
    ].join('\n'),
  );
  const env = await setup(t, {}, `[cdi]\nspec_dirs = ${JSON.stringify([cdiDir])}\n`);
  const script = [
    'echo written > /dev/crisp-null && echo "$CDI_DEV"',
    'cat /etc/cdi-info',
    '(exec 3</dev/crisp-loop) 2>/dev/null && echo readable || echo unreadable',
    '(exec 3>/dev/crisp-loop) 2>/dev/null && echo writable || echo denied',
  ].join('; ');
  const id = await run(
    env,
    containerConfig(t, script, { CDIDevices: [{ name: 'crisp.test/dev=null' }], annotations: { 'cdi.k8s.io/test-plugin': 'crisp.test/dev=loop-control' } }),
  );
  const st = await waitExited(env, id);
  t.is(st.exitCode, 0, logText(st.logPath));
  t.deepEqual(logText(st.logPath).trim().split('\n').map((l) => l.trim()), ['null', 'from the CDI spec', 'readable', 'denied']);

  const err = (await t.throwsAsync(
    env.c.call('createContainer', { podSandboxId: env.pod, config: containerConfig(t, 'true', { CDIDevices: [{ name: 'crisp.test/dev=gpu' }] }) }),
  )) as grpc.ServiceError;
  t.is(err.code, grpc.status.NOT_FOUND);
  t.regex(err.details, /crisp\.test\/dev=gpu/);
});

test('device cgroup: a container may create a node for a host block device but not open it; privileged ones may', async (t) => {
  const env = await setup(t, { linux: { cgroupParent: CGROUP_PARENT, securityContext: { privileged: true, namespaceOptions: { network: 2 } } } });
  // A block device of this host that root may read: a loop device (this VM forbids opening its
  // disk even on the host).
  const blocks = fs.readdirSync('/sys/block').sort((a, b) => Number(!a.startsWith('loop')) - Number(!b.startsWith('loop')));
  const disk = fs.readFileSync(`/sys/block/${blocks[0]}/dev`, 'utf8').trim();
  const [major, minor] = disk.split(':');
  const script = `mknod /tmp/disk b ${major} ${minor} && echo created; (head -c 1 /tmp/disk > /dev/null) 2>/dev/null && echo readable || echo denied; echo ok > /dev/null && echo null-usable`;
  const plain = await run(env, containerConfig(t, script));
  const privileged = await run(env, containerConfig(t, script, { linux: { securityContext: { privileged: true } } }));
  t.deepEqual(logText((await waitExited(env, plain)).logPath).trim().split('\n'), ['created', 'denied', 'null-usable']);
  t.deepEqual(logText((await waitExited(env, privileged)).logPath).trim().split('\n'), ['created', 'readable', 'null-usable']);
});

test('CDI hooks: createContainer in the container\'s mount namespace before pivot_root, the others where OCI says; a failing one fails the start', async (t) => {
  const cdiDir = fs.mkdtempSync(path.join(os.tmpdir(), 'crisp-cdi-hooks-'));
  t.teardown(() => fs.rmSync(cdiDir, { recursive: true, force: true }));
  const hook = path.join(cdiDir, 'hook.sh');
  // The bundle's rootfs directory shows the container's root only inside its mount namespace.
  fs.writeFileSync(
    hook,
    [
      '#!/bin/sh',
      'state=$(cat)',
      'bundle=$(echo "$state" | sed -n \'s/.*"bundle":"\\([^"]*\\)".*/\\1/p\')',
      'id=$(echo "$state" | sed -n \'s/.*"id":"\\([^"]*\\)".*/\\1/p\')',
      'echo "$id $HOOK_ENV $1" > "$bundle/rootfs/etc/hooked"',
      '',
    ].join('\n'),
    { mode: 0o755 },
  );
  const failing = path.join(cdiDir, 'fail.sh');
  fs.writeFileSync(failing, '#!/bin/sh\necho "no such accelerator" >&2\nexit 3\n', { mode: 0o755 });
  fs.writeFileSync(
    path.join(cdiDir, 'hooks.json'),
    JSON.stringify({
      cdiVersion: '0.6.0',
      kind: 'crisp.test/acc',
      devices: [
        { name: 'ok', containerEdits: { hooks: [{ hookName: 'createContainer', path: hook, args: ['ldcache-hook', 'update'], env: ['PATH=/usr/bin:/bin', 'HOOK_ENV=from-env'] }] } },
        { name: 'broken', containerEdits: { hooks: [{ hookName: 'createContainer', path: failing, timeout: 5 }] } },
        {
          name: 'lifecycle',
          containerEdits: {
            hooks: [
              // Runtime namespaces: host paths; the state says where in the life cycle it runs.
              ...['createRuntime', 'poststart', 'poststop'].map((hookName) => ({
                hookName,
                path: '/bin/sh',
                args: ['sh', '-c', `grep -o '"status":"[a-z]*"' > ${cdiDir}/${hookName}`],
              })),
              // The container's namespaces after pivot_root: the path is the container's own sh.
              { hookName: 'startContainer', path: '/bin/sh', args: ['sh', '-c', 'echo from-start-hook > /tmp/start-hook'] },
            ],
          },
        },
        { name: 'start-fails', containerEdits: { hooks: [{ hookName: 'startContainer', path: '/bin/sh', args: ['sh', '-c', 'echo refused >&2; exit 5'] }] } },
      ],
    }),
  );
  const env = await setup(t, {}, `[cdi]\nspec_dirs = ${JSON.stringify([cdiDir])}\n`);
  const id = await run(env, containerConfig(t, 'cat /etc/hooked', { CDIDevices: [{ name: 'crisp.test/acc=ok' }] }));
  const st = await waitExited(env, id);
  t.is(st.exitCode, 0, logText(st.logPath));
  t.is(logText(st.logPath).trim(), `${id} from-env update`, 'the state on stdin, the hook\'s env and arguments');
  t.false(fs.existsSync(path.join(env.d.state, 'containers', id, 'rootfs', 'etc', 'hooked')), 'nothing was written on the host side');

  const cycle = await run(env, containerConfig(t, 'cat /tmp/start-hook', { CDIDevices: [{ name: 'crisp.test/acc=lifecycle' }] }));
  const cycleStatus = await waitExited(env, cycle);
  t.is(logText(cycleStatus.logPath).trim(), 'from-start-hook');
  const hookFile = (kind: string) => path.join(cdiDir, kind);
  for (let i = 0; i < 100 && !fs.existsSync(hookFile('poststop')); i++) await new Promise((r) => setTimeout(r, 50));
  t.is(fs.readFileSync(hookFile('createRuntime'), 'utf8').trim(), '"status":"creating"');
  t.is(fs.readFileSync(hookFile('poststart'), 'utf8').trim(), '"status":"running"');
  t.is(fs.readFileSync(hookFile('poststop'), 'utf8').trim(), '"status":"stopped"');

  const { containerId } = await env.c.call('createContainer', {
    podSandboxId: env.pod,
    config: containerConfig(t, 'true', { CDIDevices: [{ name: 'crisp.test/acc=broken' }] }),
    sandboxConfig: env.podConfig,
  });
  const err = (await t.throwsAsync(env.c.call('startContainer', { containerId }))) as grpc.ServiceError;
  t.regex(err.details, /createContainer hook .*fail\.sh.*exit status: 3: no such accelerator/);
  const failed = (await env.c.call('containerStatus', { containerId })).status!;
  t.is(failed.state, ContainerState.CONTAINER_EXITED);
  t.is(failed.reason, 'StartError');

  const refused = await env.c.call('createContainer', {
    podSandboxId: env.pod,
    config: containerConfig(t, 'echo must not run', { CDIDevices: [{ name: 'crisp.test/acc=start-fails' }] }),
    sandboxConfig: env.podConfig,
  });
  const startErr = (await t.throwsAsync(env.c.call('startContainer', { containerId: refused.containerId }))) as grpc.ServiceError;
  t.regex(startErr.details, /startContainer hook \/bin\/sh: exit status: 5: refused/);
  const notRun = await waitExited(env, refused.containerId);
  t.is(notRun.reason, 'StartError');
  t.is(logText(notRun.logPath), '', 'the process never ran');
});

test('user namespaces: a hostUsers=false pod maps its root to an unprivileged node range; files, volumes, image volumes and exec follow', async (t) => {
  const mapping = { hostId: 200000, containerId: 0, length: 65536 };
  const userns = { mode: 0 /* POD */, uids: [mapping], gids: [mapping] };
  const env = await setup(t, { linux: { cgroupParent: CGROUP_PARENT, securityContext: { namespaceOptions: { network: 0, pid: 1, ipc: 0, usernsOptions: userns } } } });
  t.true((await env.c.call('status', {})).runtimeHandlers.every((h) => h.features?.userNamespaces), 'advertised for every handler');
  const volume = fs.mkdtempSync(path.join(os.tmpdir(), 'crisp-userns-vol-'));
  t.teardown(() => fs.rmSync(volume, { recursive: true, force: true }));
  fs.writeFileSync(path.join(volume, 'owned-by-node-root'), 'data\n');
  const script = [
    'id -u',
    'cat /proc/self/uid_map | tr -s " " | sed "s/^ //"',
    'stat -c %u /etc/passwd',
    'touch /etc/written && echo rootfs-writable',
    'stat -c %u /vol/owned-by-node-root',
    'touch /vol/from-container && echo volume-writable',
    'stat -c %u /img/data/keep.txt',
    'sleep 30',
  ].join('; ');
  await env.c.call('pullImage', { image: { image: t.context.multilayer.reference } });
  const id = await run(
    env,
    containerConfig(t, script, {
      linux: { securityContext: { namespaceOptions: { network: 0, pid: 1, ipc: 0, usernsOptions: userns } } },
      mounts: [
        { containerPath: '/vol', hostPath: volume, uidMappings: [mapping], gidMappings: [mapping] },
        { containerPath: '/img', image: { image: t.context.multilayer.reference }, readonly: true },
      ],
    }),
  );
  let out = '';
  for (let i = 0; i < 100 && out.trim().split('\n').length < 7; i++) {
    await new Promise((r) => setTimeout(r, 50));
    const st = (await env.c.call('containerStatus', { containerId: id })).status!;
    out = fs.existsSync(st.logPath) ? logText(st.logPath) : '';
  }
  t.deepEqual(out.trim().split('\n'), ['0', '0 200000 65536', '0', 'rootfs-writable', '0', 'volume-writable', '0'], 'ids as the container sees them');
  // On the node the process is an unprivileged id, and what it wrote belongs to node root.
  const verbose = await env.c.call('containerStatus', { containerId: id, verbose: true });
  const pid = JSON.parse(verbose.info.info!).pid as number;
  t.regex(fs.readFileSync(`/proc/${pid}/status`, 'utf8'), /^Uid:\s+200000\s+200000/m);
  t.is(fs.statSync(path.join(volume, 'from-container')).uid, 0);
  const exec = await env.c.call('execSync', { containerId: id, cmd: ['sh', '-c', 'id -u; head -1 /proc/self/uid_map | tr -s " " | sed "s/^ //"'], timeout: 10n });
  t.is(exec.exitCode, 0, exec.stderr.toString());
  t.deepEqual(exec.stdout.toString().trim().split('\n'), ['0', '0 200000 65536']);
  await env.c.call('stopContainer', { containerId: id, timeout: 0n });
});

test('recursive read-only mounts: mounts below the source are read-only too, unlike with plain readonly', async (t) => {
  const env = await setup(t);
  const host = fs.mkdtempSync(path.join(os.tmpdir(), 'crisp-rro-'));
  fs.mkdirSync(path.join(host, 'sub'));
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', path.join(host, 'sub')]);
  t.teardown(() => {
    execFileSync('umount', ['-l', path.join(host, 'sub')]);
    fs.rmSync(host, { recursive: true, force: true });
  });
  const status = await env.c.call('status', {});
  t.true(status.runtimeHandlers.every((h) => h.features?.recursiveReadOnlyMounts), 'advertised for every handler');
  const script = [
    'touch /ro/sub/a 2>/dev/null && echo ro-sub-writable || echo ro-sub-readonly',
    'touch /rro/sub/b 2>/dev/null && echo rro-sub-writable || echo rro-sub-readonly',
    'touch /rro/top 2>/dev/null && echo rro-writable || echo rro-readonly',
  ].join('; ');
  const id = await run(
    env,
    containerConfig(t, script, {
      mounts: [
        { containerPath: '/ro', hostPath: host, readonly: true },
        { containerPath: '/rro', hostPath: host, readonly: true, recursiveReadOnly: true },
      ],
    }),
  );
  t.deepEqual(logText((await waitExited(env, id)).logPath).trim().split('\n'), ['ro-sub-writable', 'rro-sub-readonly', 'rro-readonly']);
});

test('capabilities, no_new_privs, read-only rootfs and masked paths', async (t) => {
  const env = await setup(t);
  const script = 'grep -E "^(CapEff|NoNewPrivs)" /proc/self/status; touch /probe && echo writable || echo readonly; wc -c < /proc/keys';
  const dflt = await run(env, containerConfig(t, script));
  const locked = await run(
    env,
    containerConfig(t, script, {
      linux: { securityContext: { capabilities: { dropCapabilities: ['ALL'], addCapabilities: ['NET_ADMIN'] }, noNewPrivs: true, readonlyRootfs: true } },
    }),
  );
  const out1 = logText((await waitExited(env, dflt)).logPath);
  t.regex(out1, /CapEff:\s+00000000a80425fb/, 'the default capability set');
  t.regex(out1, /NoNewPrivs:\s+0/);
  t.regex(out1, /writable/);
  t.regex(out1, /^0$/m, '/proc/keys is masked');
  const out2 = logText((await waitExited(env, locked)).logPath);
  t.regex(out2, /CapEff:\s+0000000000001000/, 'only CAP_NET_ADMIN');
  t.regex(out2, /NoNewPrivs:\s+1/);
  t.regex(out2, /readonly/);
});

test('masked paths stay masked when an image VOLUME covers /dev and /sys/firmware, or a volume replaces /dev', async (t) => {
  const env = await setup(t);
  const image = t.context.volumeDev.reference;
  await env.c.call('pullImage', { image: { image } });
  const probe = [
    'wc -c < /proc/keys',
    'wc -c < /proc/timer_list',
    'ls -A /sys/firmware | wc -l',
    'touch /sys/firmware/probe 2>&- && echo firmware-writable || echo firmware-read-only',
  ].join('; ');
  // The image's VOLUME /dev is ignored: /dev stays the runtime's tmpfs with its device nodes.
  const fromImage = await run(env, containerConfig(t, `${probe}; [ -c /dev/null ] && echo dev-null-device; touch /data/probe && echo data-volume-writable`, { image: { image } }));
  t.deepEqual(logText((await waitExited(env, fromImage)).logPath).trim().split('\n'), ['0', '0', '0', 'firmware-read-only', 'dev-null-device', 'data-volume-writable']);

  // A CRI volume at /dev is the operator's to give, but masks do not come from it: its "null"
  // is a planted file, and without the host's /dev/null the masks used to be skipped.
  const devVolume = path.join(env.d.dir, 'dev-volume');
  fs.mkdirSync(devVolume);
  fs.writeFileSync(path.join(devVolume, 'null'), 'planted\n');
  const fromVolume = await run(env, containerConfig(t, `${probe}; cat /dev/null`, { mounts: [{ containerPath: '/dev', hostPath: devVolume }] }));
  t.deepEqual(logText((await waitExited(env, fromVolume)).logPath).trim().split('\n'), ['0', '0', '0', 'firmware-read-only', 'planted']);
});

test('AppArmor on a host without it: a Localhost profile is refused, RuntimeDefault and Unconfined run', async (t) => {
  const env = await setup(t);
  t.false(fs.existsSync('/sys/kernel/security/apparmor'), 'this test is about a host without AppArmor');
  for (const apparmor of [{ profileType: 2, localhostRef: 'localhost/k8s-apparmor-example-deny-write' }, { profileType: 2, localhostRef: 'k8s-apparmor-example-deny-write' }]) {
    const err = (await t.throwsAsync(
      env.c.call('createContainer', { podSandboxId: env.pod, config: containerConfig(t, 'true', { linux: { securityContext: { apparmor } } }), sandboxConfig: env.podConfig }),
    )) as grpc.ServiceError;
    t.is(err.code, grpc.status.FAILED_PRECONDITION);
    t.is(err.details, 'AppArmor profile "k8s-apparmor-example-deny-write" was requested, but this host does not enforce AppArmor; refusing to run the container unconfined');
  }
  const legacy = (await t.throwsAsync(
    env.c.call('createContainer', { podSandboxId: env.pod, config: containerConfig(t, 'true', { linux: { securityContext: { apparmorProfile: 'localhost/deny-write' } } }), sandboxConfig: env.podConfig }),
  )) as grpc.ServiceError;
  t.is(legacy.code, grpc.status.FAILED_PRECONDITION);
  const listed = await env.c.call('listContainers', {});
  t.is(listed.containers.length, 0, 'nothing was left created');

  // kubelet sends RuntimeDefault for ordinary pods: they run, as under containerd without AppArmor.
  for (const apparmor of [{ profileType: 0, localhostRef: '' }, { profileType: 1, localhostRef: '' }]) {
    const id = await run(env, containerConfig(t, 'cat /proc/self/attr/current 2>/dev/null; echo ran', { linux: { securityContext: { apparmor } } }));
    const st = await waitExited(env, id);
    t.is(st.exitCode, 0);
    t.regex(logText(st.logPath), /ran/);
  }
});

test('a seccomp profile that blocks sethostname blocks it, unless privileged', async (t) => {
  // A privileged container needs a privileged pod; the pod has its own UTS namespace for hostname.
  const env = await setup(t, { hostname: 'ctr-pod', linux: { cgroupParent: CGROUP_PARENT, securityContext: { privileged: true } } });
  const profile = path.join(env.d.dir, 'deny-sethostname.json');
  fs.writeFileSync(
    profile,
    JSON.stringify({ defaultAction: 'SCMP_ACT_ALLOW', syscalls: [{ names: ['sethostname'], action: 'SCMP_ACT_ERRNO', errnoRet: 1 }] }),
  );
  const seccomp = { profileType: 2, localhostRef: profile };
  const blocked = await run(env, containerConfig(t, 'hostname changed-a && echo changed || echo denied', { linux: { securityContext: { seccomp } } }));
  const privileged = await run(
    env,
    containerConfig(t, 'hostname changed-b && echo changed || echo denied', { linux: { securityContext: { seccomp, privileged: true } } }),
  );
  t.regex(logText((await waitExited(env, blocked)).logPath), /denied/);
  t.regex(logText((await waitExited(env, privileged)).logPath), /changed/);
  const err = (await t.throwsAsync(
    env.c.call('createContainer', {
      podSandboxId: env.pod,
      config: containerConfig(t, 'true', { linux: { securityContext: { seccomp: { profileType: 2, localhostRef: '/nonexistent/profile.json' } } } }),
    }),
  )) as grpc.ServiceError;
  t.is(err.code, grpc.status.INVALID_ARGUMENT);
});

test('memory limit exceeded is OOMKilled; limits are applied and updated live', async (t) => {
  const env = await setup(t);
  const hog = await run(
    env,
    containerConfig(t, 'x=0123456789; while true; do x="$x$x"; done', { linux: { resources: { memoryLimitInBytes: 32n * 1024n * 1024n } } }),
  );
  const st = await waitExited(env, hog, 60_000);
  t.is(st.reason, 'OOMKilled');
  t.is(st.exitCode, 137);

  const sleeper = await run(env, containerConfig(t, 'sleep 60', { linux: { resources: { memoryLimitInBytes: 64n * 1024n * 1024n, cpuShares: 512n } } }));
  const info = JSON.parse((await env.c.call('containerStatus', { containerId: sleeper, verbose: true })).info.info);
  const memFile = path.join('/sys/fs/cgroup/memory', info.cgroupPath, 'memory.limit_in_bytes');
  t.is(fs.readFileSync(memFile, 'utf8').trim(), String(64 * 1024 * 1024));
  t.is(fs.readFileSync(path.join('/sys/fs/cgroup/cpu', info.cgroupPath, 'cpu.shares'), 'utf8').trim(), '512');
  await env.c.call('updateContainerResources', { containerId: sleeper, linux: { memoryLimitInBytes: 96n * 1024n * 1024n, cpuShares: 256n } });
  t.is(fs.readFileSync(memFile, 'utf8').trim(), String(96 * 1024 * 1024));
  const st2 = (await env.c.call('containerStatus', { containerId: sleeper })).status!;
  t.is(st2.resources?.linux?.memoryLimitInBytes, 96n * 1024n * 1024n);
  await env.c.call('stopContainer', { containerId: sleeper, timeout: 1n });
  t.is((await waitExited(env, sleeper)).exitCode, 143, 'SIGTERM ends sleep');
});

test('stop: SIGTERM, then SIGKILL after the timeout; idempotent; remove of a running container', async (t) => {
  const env = await setup(t);
  const stubborn = await run(env, containerConfig(t, 'trap "" TERM; while true; do sleep 1; done'));
  const started = Date.now();
  await env.c.call('stopContainer', { containerId: stubborn, timeout: 1n });
  t.true(Date.now() - started >= 900, 'waited for the timeout before killing');
  const st = await waitExited(env, stubborn);
  t.is(st.exitCode, 137);
  await env.c.call('stopContainer', { containerId: stubborn, timeout: 1n });

  const running = await run(env, containerConfig(t, 'sleep 60'));
  await env.c.call('removeContainer', { containerId: running });
  await env.c.call('removeContainer', { containerId: running });
  const err = (await t.throwsAsync(env.c.call('containerStatus', { containerId: running }))) as grpc.ServiceError;
  t.is(err.code, grpc.status.NOT_FOUND);
});

test('bad input: unknown pod or container, stopped pod, missing image, failed exec', async (t) => {
  const env = await setup(t);
  const code = async (p: Promise<unknown>) => ((await t.throwsAsync(p)) as grpc.ServiceError);
  t.is((await code(env.c.call('createContainer', { podSandboxId: 'f'.repeat(64), config: containerConfig(t, 'true') }))).code, grpc.status.NOT_FOUND);
  t.is((await code(env.c.call('containerStatus', { containerId: 'f'.repeat(64) }))).code, grpc.status.NOT_FOUND);
  t.is((await code(env.c.call('startContainer', { containerId: 'f'.repeat(64) }))).code, grpc.status.NOT_FOUND);
  const missing = await code(
    env.c.call('createContainer', { podSandboxId: env.pod, config: { ...containerConfig(t, 'true'), image: { image: `${t.context.registry.host}/nope:1` } } }),
  );
  t.is(missing.code, grpc.status.NOT_FOUND);
  t.true(missing.details.includes('nope:1'));

  const { containerId } = await env.c.call('createContainer', { podSandboxId: env.pod, config: { ...containerConfig(t, ''), command: ['/no/such/binary'] } });
  const execErr = await code(env.c.call('startContainer', { containerId }));
  t.regex(execErr.details, /no such file or directory/i);

  // A set-up step that fails inside the container (a file bound over the image's /etc
  // directory) fails StartContainer with the step, as with runc-based runtimes, and the
  // container is left exited with reason StartError.
  const hostFile = path.join(env.d.dir, 'not-a-directory');
  fs.writeFileSync(hostFile, 'x');
  const setupFails = await env.c.call('createContainer', {
    podSandboxId: env.pod,
    config: containerConfig(t, 'true', { mounts: [{ containerPath: '/etc', hostPath: hostFile, readonly: true }] }),
  });
  const setupErr = await code(env.c.call('startContainer', { containerId: setupFails.containerId }));
  t.regex(setupErr.details, /\/etc/, setupErr.details);
  const failed = (await env.c.call('containerStatus', { containerId: setupFails.containerId })).status!;
  t.is(failed.state, ContainerState.CONTAINER_EXITED);
  t.is(failed.reason, 'StartError');
  t.is(failed.message, setupErr.details);
  await env.c.call('removeContainer', { containerId: setupFails.containerId });
  // Never started: stopping and removing it needs no start.
  const neverStarted = await env.c.call('createContainer', {
    podSandboxId: env.pod,
    config: containerConfig(t, 'true', { mounts: [{ containerPath: '/etc', hostPath: hostFile, readonly: true }] }),
  });
  // Its set-up fails and its exit is recorded before anyone starts it: a start still gets the
  // set-up failure, and the status says so too.
  await waitExited(env, neverStarted.containerId);
  const lateErr = await code(env.c.call('startContainer', { containerId: neverStarted.containerId }));
  t.regex(lateErr.details, /\/etc/, lateErr.details);
  const lateStatus = (await env.c.call('containerStatus', { containerId: neverStarted.containerId })).status!;
  t.is(lateStatus.reason, 'StartError');
  t.is(lateStatus.message, lateErr.details);
  const stopStarted = Date.now();
  await env.c.call('stopContainer', { containerId: neverStarted.containerId, timeout: 10n });
  await env.c.call('removeContainer', { containerId: neverStarted.containerId });
  t.true(Date.now() - stopStarted < 5000, 'stop and remove do not wait for an exit that happened already');

  await env.c.call('stopPodSandbox', { podSandboxId: env.pod });
  t.is((await code(env.c.call('createContainer', { podSandboxId: env.pod, config: containerConfig(t, 'true') }))).code, grpc.status.FAILED_PRECONDITION);
  await env.c.call('removePodSandbox', { podSandboxId: env.pod });
  t.deepEqual(fs.readdirSync(path.join(env.d.state, 'containers')), [], 'no container state left');
  t.deepEqual(fs.readdirSync(path.join(env.d.root, 'containers')), [], 'no writable layer left');
});

test('daemon kill -9 while 10 containers run and 3 exit meanwhile: all listed, codes right, logs complete', async (t) => {
  const env = await setup(t);
  const ids: string[] = [];
  for (let i = 0; i < 10; i++) {
    const script = i < 3 ? `echo before-${i}; sleep 2; echo after-${i}; exit ${10 + i}` : `echo up-${i}; exec sleep 300`;
    ids.push(await run(env, containerConfig(t, script)));
  }
  await env.d.kill9();
  await new Promise((r) => setTimeout(r, 3500));
  await env.d.start();
  const c2 = env.d.client();
  const list = (await c2.call('listContainers', {})).containers;
  t.is(list.length, 10);
  for (let i = 0; i < 10; i++) {
    const st = (await c2.call('containerStatus', { containerId: ids[i] })).status!;
    if (i < 3) {
      t.is(st.state, ContainerState.CONTAINER_EXITED, `container ${i} exited during the outage`);
      t.is(st.exitCode, 10 + i);
      t.is(logText(st.logPath), `before-${i}\nafter-${i}\n`, 'output written while the daemon was down is in the log');
    } else {
      t.is(st.state, ContainerState.CONTAINER_RUNNING, `container ${i} still runs`);
    }
  }
  env.c = c2;
  await c2.call('stopContainer', { containerId: ids[5], timeout: 1n });
  t.is((await waitExited(env, ids[5])).exitCode, 143, 'a re-adopted container is stopped and its exit seen');
});

test('ExecSync: output, exit codes, timeout, output cap; errors for stopped and unknown containers', async (t) => {
  const env = await setup(t);
  const id = await run(env, containerConfig(t, 'echo ready > /tmp/state; exec sleep 300', { envs: [{ key: 'GREETING', value: 'hi' }] }));
  const ok = await env.c.call('execSync', { containerId: id, cmd: ['sh', '-c', 'echo $GREETING; cat /tmp/state; echo err >&2'], timeout: 10n });
  t.is(ok.exitCode, 0);
  t.is(Buffer.from(ok.stdout).toString(), 'hi\nready\n', 'runs with the container env and sees its filesystem');
  t.is(Buffer.from(ok.stderr).toString(), 'err\n');
  // The container's user, groups and working directory, as its main process has them.
  const who = await run(
    env,
    containerConfig(t, 'exec sleep 300', {
      workingDir: '/tmp',
      envs: [{ key: 'GREETING', value: 'hello' }],
      linux: { securityContext: { runAsUser: { value: 1234n }, runAsGroup: { value: 2345n }, supplementalGroups: [3456n] } },
    }),
  );
  const ids = await env.c.call('execSync', { containerId: who, cmd: ['sh', '-c', 'id -u; id -g; id -G; pwd; echo $GREETING'], timeout: 10n });
  t.is(Buffer.from(ids.stdout).toString(), '1234\n2345\n2345 3456\n/tmp\nhello\n');
  const three = await env.c.call('execSync', { containerId: id, cmd: ['sh', '-c', 'exit 3'], timeout: 10n });
  t.is(three.exitCode, 3);
  // `/bin/true` is a real exec (the busybox shell would run a builtin in-process).
  t.is((await env.c.call('execSync', { containerId: id, cmd: ['/bin/true'], timeout: 10n })).exitCode, 0);

  const started = Date.now();
  const slow = (await t.throwsAsync(env.c.call('execSync', { containerId: id, cmd: ['sleep', '30'], timeout: 1n }))) as grpc.ServiceError;
  t.is(slow.code, grpc.status.DEADLINE_EXCEEDED);
  t.true(Date.now() - started < 2000, `the timeout is honoured within 1 s of the deadline (${Date.now() - started} ms)`);

  const big = await env.c.call('execSync', { containerId: id, cmd: ['sh', '-c', 'head -c 20000000 /dev/zero'], timeout: 30n });
  t.true(big.stdout.length <= 8 * 1024 * 1024 + 200, 'output is capped');
  t.regex(Buffer.from(big.stdout.subarray(big.stdout.length - 100)).toString(), /output truncated/);

  const unknown = (await t.throwsAsync(env.c.call('execSync', { containerId: 'f'.repeat(64), cmd: ['true'] }))) as grpc.ServiceError;
  t.is(unknown.code, grpc.status.NOT_FOUND);
  await env.c.call('stopContainer', { containerId: id, timeout: 1n });
  const stopped = (await t.throwsAsync(env.c.call('execSync', { containerId: id, cmd: ['true'] }))) as grpc.ServiceError;
  t.is(stopped.code, grpc.status.FAILED_PRECONDITION);
});

test('streaming: Exec over SPDY with exit codes; PortForward into the pod network namespace; tokens are single-use', async (t) => {
  const env = await setup(t);
  const id = await run(env, containerConfig(t, 'exec busybox nc -ll -p 8080 -e /bin/cat'));
  const { url } = await env.c.call('exec', { containerId: id, cmd: ['sh', '-c', 'echo hello; echo oops >&2; exit 3'], stdout: true, stderr: true });
  const res = await spdyRemoteCommand(url, { stderr: true });
  t.is(res.protocol, 'v4.channel.k8s.io');
  t.is(res.stdout, 'hello\n');
  t.is(res.stderr, 'oops\n');
  const status = JSON.parse(res.error);
  t.is(status.reason, 'NonZeroExitCode');
  t.deepEqual(status.details.causes, [{ reason: 'ExitCode', message: '3' }]);
  const reused = (await t.throwsAsync(connectSpdy(url, ['v4.channel.k8s.io']))) as Error;
  t.regex(reused.message, /404/);

  const pf = await env.c.call('portForward', { podSandboxId: env.pod, port: [8080] });
  const client = await connectSpdy(pf.url, ['portforward.k8s.io']);
  t.teardown(() => client.conn.destroy());
  const error = client.conn.openStream({ streamtype: 'error', port: '8080', requestid: '0' });
  const data = client.conn.openStream({ streamtype: 'data', port: '8080', requestid: '0' });
  await Promise.all([error.waitReply(), data.waitReply()]);
  const echoed = readAll(data);
  data.write('ping through the pod\n');
  data.end();
  t.is((await echoed).toString(), 'ping through the pod\n', 'reached the server listening on localhost inside the pod');
  t.is((await readAll(error)).toString(), '');
});

test('containers of a pod share its network and IPC namespaces, not the host\'s', async (t) => {
  const env = await setup(t, { linux: { cgroupParent: CGROUP_PARENT } });
  // Both run at once: namespace inode numbers are reused once a namespace is gone.
  const script = 'for n in net ipc mnt; do readlink /proc/self/ns/$n; done; sleep 1';
  const [idA, idB] = [await run(env, containerConfig(t, script)), await run(env, containerConfig(t, script))];
  const a = await waitExited(env, idA);
  const b = await waitExited(env, idB);
  const [netA, ipcA, mntA] = logText(a.logPath).trim().split('\n');
  const [netB, ipcB, mntB] = logText(b.logPath).trim().split('\n');
  t.is(netA, netB, 'same network namespace');
  t.is(ipcA, ipcB, 'same IPC namespace');
  t.not(mntA, mntB, 'each container has its own mount namespace');
  t.not(netA, fs.readlinkSync('/proc/self/ns/net'));
  t.not(ipcA, fs.readlinkSync('/proc/self/ns/ipc'));
});

test('mount propagation: private, host-to-container (rslave) and bidirectional (rshared)', async (t) => {
  const env = await setup(t, { linux: { cgroupParent: CGROUP_PARENT, securityContext: { privileged: true } } });
  const host = fs.mkdtempSync(path.join('/tmp', 'crisp-test-prop-'));
  // The host side must be a shared mount for host-to-container and bidirectional propagation.
  execFileSync('mount', ['--bind', host, host]);
  execFileSync('mount', ['--make-shared', host]);
  t.teardown(() => {
    for (const sub of ['sub', 'inner']) {
      try {
        execFileSync('umount', ['-l', path.join(host, sub)]);
      } catch {
        // Not mounted.
      }
    }
    execFileSync('umount', ['-l', host]);
    fs.rmSync(host, { recursive: true, force: true });
  });
  fs.mkdirSync(path.join(host, 'sub'));
  fs.mkdirSync(path.join(host, 'inner'));
  const watch = 'while [ ! -e /mnt/h/ready ]; do sleep 0.1; done; ls /mnt/h/sub; echo end';
  const mount = (propagation: number) => ({ mounts: [{ containerPath: '/mnt/h', hostPath: host, propagation }] });
  const priv = await run(env, containerConfig(t, watch, mount(0)));
  const slave = await run(env, containerConfig(t, watch, mount(1)));
  const shared = await run(
    env,
    containerConfig(t, 'mount -t tmpfs tmpfs /mnt/h/inner && touch /mnt/h/inner/from-container && exec sleep 60', {
      ...mount(2),
      linux: { securityContext: { privileged: true } },
    }),
  );
  // Both watchers are up once their processes run; then a mount appears on the host side.
  await new Promise((r) => setTimeout(r, 300));
  execFileSync('mount', ['-t', 'tmpfs', 'tmpfs', path.join(host, 'sub')]);
  fs.writeFileSync(path.join(host, 'sub', 'from-host'), 'x');
  fs.writeFileSync(path.join(host, 'ready'), '');
  t.is(logText((await waitExited(env, priv)).logPath), 'end\n', 'a private mount does not see mounts made on the host later');
  t.is(logText((await waitExited(env, slave)).logPath), 'from-host\nend\n', 'rslave sees the host\'s new mount');
  for (let i = 0; i < 100 && !fs.existsSync(path.join(host, 'inner', 'from-container')); i++) await new Promise((r) => setTimeout(r, 50));
  t.true(fs.existsSync(path.join(host, 'inner', 'from-container')), 'rshared: the container\'s mount shows on the host');
  await env.c.call('stopContainer', { containerId: shared, timeout: 0n });
});

test('ImageFsInfo reports the image filesystem and the containers\' writable layers', async (t) => {
  const env = await setup(t);
  const before = await env.c.call('imageFsInfo', {});
  t.is(before.containerFilesystems[0].fsId?.mountpoint, path.join(env.d.root, 'containers'));
  const id = await run(env, containerConfig(t, 'head -c 6000000 /dev/zero > /big; echo written; exec sleep 60'));
  for (let i = 0; i < 100; i++) {
    const st = (await env.c.call('containerStatus', { containerId: id })).status!;
    if (fs.existsSync(st.logPath) && fs.readFileSync(st.logPath, 'utf8').includes('written')) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  const after = await env.c.call('imageFsInfo', {});
  t.true(after.containerFilesystems[0].usedBytes!.value >= before.containerFilesystems[0].usedBytes!.value + 6_000_000n);
  t.true(after.imageFilesystems[0].usedBytes!.value > 0n);
});

/** Runs `cat file` as the host's `nobody`; what it printed, or the error it got. */
function readAsNobody(file: string): { ok: boolean; output: string } {
  const res = spawnSync('/bin/cat', [file], { uid: 65534, gid: 65534, encoding: 'utf8' });
  return { ok: res.status === 0, output: res.status === 0 ? res.stdout : res.stderr };
}

test('files a container plants in its writable layer or /dev/shm are out of reach of unprivileged host users, also after a restart repairs the modes', async (t) => {
  const env = await setup(t, { linux: { cgroupParent: CGROUP_PARENT, securityContext: { namespaceOptions: { network: 2, ipc: 0 } } } });
  // Like /var/lib and /run: the daemon's own directories are all that stands between a local user
  // and the container's files (the test's temporary directory is 0700 otherwise).
  fs.chmodSync(env.d.dir, 0o711);
  const script = [
    // What a hostile container root leaves for a local user: a setuid shell, a world-readable and
    // writable file, and the same in the pod's shared memory.
    'cp /bin/busybox /planted-shell && chmod 4755 /planted-shell',
    'echo planted > /planted-file && chmod 0666 /planted-file',
    'echo planted > /dev/shm/planted-shm && chmod 0666 /dev/shm/planted-shm',
    'echo planted',
    'exec sleep 60',
  ].join('; ');
  const id = await run(env, containerConfig(t, script));
  const st = (await env.c.call('containerStatus', { containerId: id })).status!;
  for (let i = 0; i < 100 && !logText(st.logPath).includes('planted'); i++) await new Promise((r) => setTimeout(r, 50));
  t.is(logText(st.logPath), 'planted\n');
  const upper = path.join(env.d.root, 'containers', id, 'upper');
  const planted = [path.join(upper, 'planted-file'), path.join(upper, 'planted-shell'), path.join(env.d.state, 'sandboxes', env.pod, 'shm', 'planted-shm')];
  for (const file of planted) t.true(fs.existsSync(file), `${file} is there for root`);
  const check = (when: string) => {
    for (const file of planted) {
      const res = readAsNobody(file);
      t.false(res.ok, `${when}: nobody reads ${file}`);
      t.regex(res.output, /Permission denied/, `${when}: ${file}`);
    }
    for (const dir of [path.join(env.d.root, 'containers'), path.join(env.d.state, 'containers'), path.join(env.d.state, 'sandboxes')]) {
      t.is(fs.statSync(dir).mode & 0o7777, 0o700, `${when}: ${dir}`);
    }
  };
  check('created');
  // A root made by an older version keeps its modes unless the daemon repairs them at start.
  await env.d.stop();
  for (const dir of ['root/containers', `root/containers/${id}`, 'state/containers', 'state/sandboxes', `state/sandboxes/${env.pod}`]) {
    fs.chmodSync(path.join(env.d.dir, dir), 0o711);
  }
  t.true(readAsNobody(planted[0]!).ok, 'with the old modes, nobody reads the planted file');
  await env.d.start();
  check('after a restart');
  t.is((await env.c.call('containerStatus', { containerId: id })).status!.state, ContainerState.CONTAINER_RUNNING, 'the container survived');
});

test('a symlink planted at the container log path is not followed, on create or on reopen', async (t) => {
  const env = await setup(t);
  const victim = path.join(env.d.dir, 'victim');
  fs.writeFileSync(victim, 'precious\n');
  // The log directory is kubelet's; a pod that has it mounted can leave a link where the log goes.
  const planted = containerConfig(t, 'echo appended-to-the-victim');
  fs.mkdirSync(env.logDir, { recursive: true });
  fs.symlinkSync(victim, path.join(env.logDir, planted.logPath));
  const err = (await t.throwsAsync(run(env, planted))) as grpc.ServiceError;
  t.is(err.code, grpc.status.FAILED_PRECONDITION, err.details);
  t.regex(err.details, /open log file .*symbolic links/);

  // Rotation: kubelet renames the log and asks for a reopen; a link is there by then.
  const rotated = containerConfig(t, 'sleep 1; echo after-reopen; sleep 30');
  const id = await run(env, rotated);
  const logPath = path.join(env.logDir, rotated.logPath);
  for (let i = 0; i < 100 && !fs.existsSync(logPath); i++) await new Promise((r) => setTimeout(r, 20));
  fs.renameSync(logPath, `${logPath}.1`);
  fs.symlinkSync(victim, logPath);
  const reopenErr = (await t.throwsAsync(env.c.call('reopenContainerLog', { containerId: id }))) as grpc.ServiceError;
  t.is(reopenErr.code, grpc.status.FAILED_PRECONDITION, reopenErr.details);
  await new Promise((r) => setTimeout(r, 1500));
  t.is(fs.readFileSync(victim, 'utf8'), 'precious\n', 'nothing was written through the links');
  await env.c.call('stopContainer', { containerId: id, timeout: 0n });
});
