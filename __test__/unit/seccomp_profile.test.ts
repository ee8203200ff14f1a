import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import test from 'ava';
import { SecurityProfile_ProfileType } from '../../src/generated/runtime/v1/api';
import { DEFAULT_CAPABILITIES } from '../../src/container/capabilities';
import {
  CLONE_NAMESPACE_FLAGS,
  defaultSeccompProfile,
  evaluateSeccomp,
  loadSeccompProfile,
  parseSeccompProfile,
  selectSeccompProfile,
} from '../../src/container/seccomp_profile';
import { isCrispError } from '../../src/util/errors';

const EPERM = 1;
const ENOSYS = 38;
const CLONE_NEWNET = 0x4000_0000;
const CLONE_THREAD_FLAGS = 0x003d0f00; // what pthread_create passes

test('RuntimeDefault: an allowlist failing everything else with EPERM', (t) => {
  const p = defaultSeccompProfile(DEFAULT_CAPABILITIES, 'x64');
  t.is(p.defaultAction, 'SCMP_ACT_ERRNO');
  t.is(p.defaultErrnoRet, EPERM);
  t.deepEqual(p.architectures, ['SCMP_ARCH_X86_64', 'SCMP_ARCH_X86', 'SCMP_ARCH_X32']);
  for (const name of ['read', 'write', 'openat', 'execve', 'futex', 'arch_prctl', 'chroot']) {
    t.is(evaluateSeccomp(p, name).action, 'SCMP_ACT_ALLOW', name);
  }
  for (const name of ['mount', 'umount2', 'sethostname', 'setns', 'unshare', 'bpf', 'reboot', 'init_module', 'kexec_load', 'io_uring_setup', 'open_by_handle_at']) {
    t.deepEqual(evaluateSeccomp(p, name), { action: 'SCMP_ACT_ERRNO', errno: EPERM }, name);
  }
});

test('RuntimeDefault: clone without CAP_SYS_ADMIN may not create namespaces; clone3 gets ENOSYS', (t) => {
  const p = defaultSeccompProfile(DEFAULT_CAPABILITIES, 'x64');
  t.is(evaluateSeccomp(p, 'clone', [CLONE_THREAD_FLAGS]).action, 'SCMP_ACT_ALLOW');
  t.deepEqual(evaluateSeccomp(p, 'clone', [CLONE_THREAD_FLAGS | CLONE_NEWNET]), { action: 'SCMP_ACT_ERRNO', errno: EPERM });
  t.deepEqual(evaluateSeccomp(p, 'clone3'), { action: 'SCMP_ACT_ERRNO', errno: ENOSYS });
  t.is(CLONE_NAMESPACE_FLAGS, 0x7e020000);
});

test('RuntimeDefault: s390x checks clone flags in the second argument', (t) => {
  const p = defaultSeccompProfile(DEFAULT_CAPABILITIES, 's390x');
  t.is(evaluateSeccomp(p, 'clone', [CLONE_NEWNET, 0]).action, 'SCMP_ACT_ALLOW');
  t.is(evaluateSeccomp(p, 'clone', [0, CLONE_NEWNET]).action, 'SCMP_ACT_ERRNO');
});

test('RuntimeDefault: capability-gated calls follow the bounding set', (t) => {
  const p = defaultSeccompProfile([...DEFAULT_CAPABILITIES, 'CAP_SYS_ADMIN', 'CAP_SYS_PTRACE', 'CAP_SYS_TIME'], 'x64');
  for (const name of ['mount', 'sethostname', 'unshare', 'setns', 'clone3', 'kcmp', 'process_vm_readv', 'clock_settime']) {
    t.is(evaluateSeccomp(p, name).action, 'SCMP_ACT_ALLOW', name);
  }
  t.is(evaluateSeccomp(p, 'clone', [CLONE_NEWNET]).action, 'SCMP_ACT_ALLOW');
  t.is(evaluateSeccomp(p, 'reboot').action, 'SCMP_ACT_ERRNO');

  const noChroot = defaultSeccompProfile(['CAP_CHOWN'], 'x64');
  t.is(evaluateSeccomp(noChroot, 'chroot').action, 'SCMP_ACT_ERRNO');
});

test('RuntimeDefault: personality only for the allowed personas', (t) => {
  const p = defaultSeccompProfile(DEFAULT_CAPABILITIES, 'x64');
  for (const persona of [0, 8, 0x20000, 0x20008, 0xffffffff]) t.is(evaluateSeccomp(p, 'personality', [persona]).action, 'SCMP_ACT_ALLOW');
  t.is(evaluateSeccomp(p, 'personality', [0x0040000 /* ADDR_NO_RANDOMIZE */]).action, 'SCMP_ACT_ERRNO');
});

test('RuntimeDefault: architecture-specific calls', (t) => {
  const arm = defaultSeccompProfile(DEFAULT_CAPABILITIES, 'arm64');
  t.deepEqual(arm.architectures, ['SCMP_ARCH_ARM', 'SCMP_ARCH_AARCH64']);
  t.is(evaluateSeccomp(arm, 'set_tls').action, 'SCMP_ACT_ALLOW');
  t.is(evaluateSeccomp(arm, 'arch_prctl').action, 'SCMP_ACT_ERRNO');
});

test('selectSeccompProfile: the field wins, else the deprecated path', (t) => {
  const root = '/var/lib/kubelet/seccomp';
  t.deepEqual(selectSeccompProfile(undefined, ''), { kind: 'unconfined' });
  t.deepEqual(selectSeccompProfile(undefined, 'unconfined'), { kind: 'unconfined' });
  t.deepEqual(selectSeccompProfile(undefined, 'runtime/default'), { kind: 'runtime-default' });
  t.deepEqual(selectSeccompProfile(undefined, 'docker/default'), { kind: 'runtime-default' });
  t.deepEqual(selectSeccompProfile(undefined, 'localhost//abs/p.json'), { kind: 'localhost', path: '/abs/p.json' });
  t.deepEqual(selectSeccompProfile(undefined, 'localhost/profiles/p.json', root), { kind: 'localhost', path: `${root}/profiles/p.json` });
  t.deepEqual(selectSeccompProfile({ profileType: SecurityProfile_ProfileType.RuntimeDefault, localhostRef: '' }, 'unconfined'), { kind: 'runtime-default' });
  t.deepEqual(selectSeccompProfile({ profileType: SecurityProfile_ProfileType.Unconfined, localhostRef: '' }, 'runtime/default'), { kind: 'unconfined' });
  t.deepEqual(selectSeccompProfile({ profileType: SecurityProfile_ProfileType.Localhost, localhostRef: '/x/y.json' }, ''), { kind: 'localhost', path: '/x/y.json' });
  t.deepEqual(selectSeccompProfile({ profileType: SecurityProfile_ProfileType.Localhost, localhostRef: 'y.json' }, '', '/root'), { kind: 'localhost', path: '/root/y.json' });
});

test('selectSeccompProfile: invalid requests are InvalidArgument', (t) => {
  for (const [field, p] of [
    [undefined, 'bogus/profile'],
    [{ profileType: SecurityProfile_ProfileType.Localhost, localhostRef: '' }, ''],
    [{ profileType: SecurityProfile_ProfileType.RuntimeDefault, localhostRef: '/x' }, ''],
  ] as const) {
    const err = t.throws(() => selectSeccompProfile(field, p));
    t.true(isCrispError(err, 'InvalidArgument'), String(err));
  }
});

test('parseSeccompProfile accepts OCI and Docker-format profiles', (t) => {
  const oci = parseSeccompProfile({
    defaultAction: 'SCMP_ACT_ALLOW',
    architectures: ['SCMP_ARCH_X86_64'],
    syscalls: [{ names: ['mkdir'], action: 'SCMP_ACT_ERRNO', errnoRet: 13 }],
  });
  t.deepEqual(evaluateSeccomp(oci, 'mkdir'), { action: 'SCMP_ACT_ERRNO', errno: 13 });
  t.is(evaluateSeccomp(oci, 'read').action, 'SCMP_ACT_ALLOW');

  const docker = parseSeccompProfile({
    defaultAction: 'SCMP_ACT_ERRNO',
    archMap: [{ architecture: 'SCMP_ARCH_X86_64', subArchitectures: ['SCMP_ARCH_X86', 'SCMP_ARCH_X32'] }],
    syscalls: [{ name: 'read', action: 'SCMP_ACT_ALLOW', args: [{ index: 0, value: 3, op: 'SCMP_CMP_GE' }] }],
  });
  t.deepEqual(docker.architectures, ['SCMP_ARCH_X86_64', 'SCMP_ARCH_X86', 'SCMP_ARCH_X32']);
  t.is(evaluateSeccomp(docker, 'read', [3]).action, 'SCMP_ACT_ALLOW');
  t.is(evaluateSeccomp(docker, 'read', [2]).action, 'SCMP_ACT_ERRNO');
});

test('parseSeccompProfile rejects malformed profiles', (t) => {
  const bad: unknown[] = [
    [],
    {},
    { defaultAction: 'SCMP_ACT_NOTIFY' },
    { defaultAction: 'SCMP_ACT_ALLOW', syscalls: [{ names: [], action: 'SCMP_ACT_ALLOW' }] },
    { defaultAction: 'SCMP_ACT_ALLOW', syscalls: [{ names: ['read'], action: 'ALLOW' }] },
    { defaultAction: 'SCMP_ACT_ALLOW', syscalls: [{ names: ['read'], action: 'SCMP_ACT_ALLOW', args: [{ index: 6, value: 0, op: 'SCMP_CMP_EQ' }] }] },
    { defaultAction: 'SCMP_ACT_ALLOW', syscalls: [{ names: ['read'], action: 'SCMP_ACT_ALLOW', args: [{ index: 0, value: 0, op: 'EQ' }] }] },
    { defaultAction: 'SCMP_ACT_ALLOW', listenerPath: '/run/agent.sock' },
  ];
  for (const profile of bad) t.throws(() => parseSeccompProfile(profile), undefined, JSON.stringify(profile));
});

test('loadSeccompProfile: unreadable or invalid files are InvalidArgument naming the file', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'crisp-seccomp-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const good = path.join(dir, 'good.json');
  fs.writeFileSync(good, JSON.stringify({ defaultAction: 'SCMP_ACT_LOG' }));
  t.deepEqual(await loadSeccompProfile(good), { defaultAction: 'SCMP_ACT_LOG', syscalls: [] });

  const missing = path.join(dir, 'missing.json');
  let err = await t.throwsAsync(loadSeccompProfile(missing), { message: new RegExp(`cannot load seccomp profile "${missing}"`) });
  t.true(isCrispError(err, 'InvalidArgument'));

  const garbage = path.join(dir, 'garbage.json');
  fs.writeFileSync(garbage, '{not json');
  err = await t.throwsAsync(loadSeccompProfile(garbage), { message: new RegExp(`invalid seccomp profile "${garbage}"`) });
  t.true(isCrispError(err, 'InvalidArgument'));
});
