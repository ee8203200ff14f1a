import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { SecurityProfile_ProfileType, type SecurityProfile } from '../generated/runtime/v1/api';
import { errorMessage, invalidArgument } from '../util/errors';

/** OCI runtime-spec LinuxSeccomp (the parts crisp's launcher compiles). */
export type SeccompAction =
  | 'SCMP_ACT_ALLOW'
  | 'SCMP_ACT_ERRNO'
  | 'SCMP_ACT_KILL'
  | 'SCMP_ACT_KILL_THREAD'
  | 'SCMP_ACT_KILL_PROCESS'
  | 'SCMP_ACT_TRAP'
  | 'SCMP_ACT_LOG'
  | 'SCMP_ACT_TRACE';

export type SeccompOperator =
  | 'SCMP_CMP_NE'
  | 'SCMP_CMP_LT'
  | 'SCMP_CMP_LE'
  | 'SCMP_CMP_EQ'
  | 'SCMP_CMP_GE'
  | 'SCMP_CMP_GT'
  | 'SCMP_CMP_MASKED_EQ';

export interface LinuxSeccompArg {
  index: number;
  value: number;
  valueTwo?: number;
  op: SeccompOperator;
}

export interface LinuxSyscall {
  names: string[];
  action: SeccompAction;
  errnoRet?: number;
  args?: LinuxSeccompArg[];
}

export interface LinuxSeccomp {
  defaultAction: SeccompAction;
  defaultErrnoRet?: number;
  architectures?: string[];
  flags?: string[];
  syscalls?: LinuxSyscall[];
}

const ACTIONS: ReadonlySet<string> = new Set<SeccompAction>([
  'SCMP_ACT_ALLOW',
  'SCMP_ACT_ERRNO',
  'SCMP_ACT_KILL',
  'SCMP_ACT_KILL_THREAD',
  'SCMP_ACT_KILL_PROCESS',
  'SCMP_ACT_TRAP',
  'SCMP_ACT_LOG',
  'SCMP_ACT_TRACE',
]);

const OPERATORS: ReadonlySet<string> = new Set<SeccompOperator>([
  'SCMP_CMP_NE',
  'SCMP_CMP_LT',
  'SCMP_CMP_LE',
  'SCMP_CMP_EQ',
  'SCMP_CMP_GE',
  'SCMP_CMP_GT',
  'SCMP_CMP_MASKED_EQ',
]);

const EPERM = 1;
const ENOSYS = 38;

/** Namespace-creating clone(2) flags; without CAP_SYS_ADMIN clone may not use any of them. */
export const CLONE_NAMESPACE_FLAGS =
  0x0002_0000 /* NEWNS */ |
  0x0200_0000 /* NEWCGROUP */ |
  0x0400_0000 /* NEWUTS */ |
  0x0800_0000 /* NEWIPC */ |
  0x1000_0000 /* NEWUSER */ |
  0x2000_0000 /* NEWPID */ |
  0x4000_0000; /* NEWNET */

/** personality(2) values a container may set: PER_LINUX, PER_LINUX32, UNAME26 variants, query. */
const ALLOWED_PERSONALITIES = [0x0, 0x8, 0x20000, 0x20008, 0xffffffff];

const words = (text: string): string[] => text.trim().split(/\s+/);

/**
 * System calls every container may make. Same content as the Docker/containerd default
 * allowlist, minus io_uring (a recurring source of kernel exploits, dropped from both defaults).
 */
const BASE_SYSCALLS = words(`
  accept accept4 access adjtimex alarm bind brk capget capset chdir chmod chown chown32
  clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime clock_gettime64
  clock_nanosleep clock_nanosleep_time64 close close_range connect copy_file_range creat
  dup dup2 dup3 epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2
  epoll_wait epoll_wait_old eventfd eventfd2 execve execveat exit exit_group
  faccessat faccessat2 fadvise64 fadvise64_64 fallocate fanotify_mark fchdir fchmod fchmodat
  fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr flistxattr flock fork fremovexattr
  fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 fsync ftruncate ftruncate64
  futex futex_time64 futex_waitv futimesat getcpu getcwd getdents getdents64
  getegid getegid32 geteuid geteuid32 getgid getgid32 getgroups getgroups32 getitimer
  getpeername getpgid getpgrp getpid getppid getpriority getrandom getresgid getresgid32
  getresuid getresuid32 getrlimit get_robust_list getrusage getsid getsockname getsockopt
  get_thread_area gettid gettimeofday getuid getuid32 getxattr
  inotify_add_watch inotify_init inotify_init1 inotify_rm_watch
  io_cancel ioctl io_destroy io_getevents io_pgetevents io_pgetevents_time64 ioprio_get ioprio_set
  io_setup io_submit ipc kill landlock_add_rule landlock_create_ruleset landlock_restrict_self
  lchown lchown32 lgetxattr link linkat listen listxattr llistxattr _llseek lremovexattr lseek
  lsetxattr lstat lstat64 madvise membarrier memfd_create memfd_secret mincore mkdir mkdirat
  mknod mknodat mlock mlock2 mlockall mmap mmap2 mprotect mq_getsetattr mq_notify mq_open
  mq_timedreceive mq_timedreceive_time64 mq_timedsend mq_timedsend_time64 mq_unlink mremap
  msgctl msgget msgrcv msgsnd msync munlock munlockall munmap nanosleep newfstatat _newselect
  open openat openat2 pause pidfd_open pidfd_send_signal pipe pipe2 poll ppoll ppoll_time64
  prctl pread64 preadv preadv2 prlimit64 process_mrelease pselect6 pselect6_time64 ptrace
  pwrite64 pwritev pwritev2 read readahead readlink readlinkat readv recv recvfrom recvmmsg
  recvmmsg_time64 recvmsg remap_file_pages removexattr rename renameat renameat2 restart_syscall
  rmdir rseq rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend
  rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_getaffinity sched_getattr
  sched_getparam sched_get_priority_max sched_get_priority_min sched_getscheduler
  sched_rr_get_interval sched_rr_get_interval_time64 sched_setaffinity sched_setattr
  sched_setparam sched_setscheduler sched_yield seccomp select semctl semget semop semtimedop
  semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg sendto setfsgid setfsgid32
  setfsuid setfsuid32 setgid setgid32 setgroups setgroups32 setitimer setpgid setpriority
  setregid setregid32 setresgid setresgid32 setresuid setresuid32 setreuid setreuid32 setrlimit
  set_robust_list setsid setsockopt set_thread_area set_tid_address setuid setuid32 setxattr
  shmat shmctl shmdt shmget shutdown sigaltstack signalfd signalfd4 sigprocmask sigreturn
  socket socketcall socketpair splice stat stat64 statfs statfs64 statx symlink symlinkat sync
  sync_file_range syncfs sysinfo tee tgkill time timer_create timer_delete timer_getoverrun
  timer_gettime timer_gettime64 timer_settime timer_settime64 timerfd_create timerfd_gettime
  timerfd_gettime64 timerfd_settime timerfd_settime64 times tkill truncate truncate64 ugetrlimit
  umask uname unlink unlinkat utime utimensat utimensat_time64 utimes vfork vmsplice wait4
  waitid waitpid write writev
`);

/** Architecture-specific system calls, keyed by Node's process.arch. */
const ARCH_SYSCALLS: Readonly<Record<string, string[]>> = {
  x64: words('arch_prctl modify_ldt'),
  ia32: words('modify_ldt'),
  arm: words('arm_fadvise64_64 arm_sync_file_range sync_file_range2 breakpoint cacheflush set_tls'),
  arm64: words('arm_fadvise64_64 arm_sync_file_range sync_file_range2 breakpoint cacheflush set_tls'),
  ppc64: words('sync_file_range2 swapcontext'),
  s390x: words('s390_pci_mmio_read s390_pci_mmio_write s390_runtime_instr'),
  riscv64: words('riscv_flush_icache'),
};

/** The seccomp architectures a filter must cover so compat-mode syscalls are filtered too. */
const ARCHITECTURES: Readonly<Record<string, string[]>> = {
  x64: ['SCMP_ARCH_X86_64', 'SCMP_ARCH_X86', 'SCMP_ARCH_X32'],
  ia32: ['SCMP_ARCH_X86'],
  arm: ['SCMP_ARCH_ARM'],
  arm64: ['SCMP_ARCH_ARM', 'SCMP_ARCH_AARCH64'],
  ppc64: ['SCMP_ARCH_PPC64LE'],
  s390x: ['SCMP_ARCH_S390', 'SCMP_ARCH_S390X'],
  riscv64: ['SCMP_ARCH_RISCV64'],
};

/** System calls a container may make only while it holds the given capability. */
const CAPABILITY_SYSCALLS: ReadonlyArray<{ capability: string; syscalls: string[] }> = [
  { capability: 'CAP_DAC_READ_SEARCH', syscalls: words('open_by_handle_at') },
  {
    capability: 'CAP_SYS_ADMIN',
    syscalls: words(`
      bpf clone clone3 fanotify_init fsconfig fsmount fsopen fspick lookup_dcookie mount
      mount_setattr move_mount name_to_handle_at open_tree perf_event_open quotactl quotactl_fd
      setdomainname sethostname setns syslog umount umount2 unshare`),
  },
  { capability: 'CAP_SYS_BOOT', syscalls: words('reboot') },
  { capability: 'CAP_SYS_CHROOT', syscalls: words('chroot') },
  { capability: 'CAP_SYS_MODULE', syscalls: words('delete_module init_module finit_module') },
  { capability: 'CAP_SYS_PACCT', syscalls: words('acct') },
  { capability: 'CAP_SYS_PTRACE', syscalls: words('kcmp pidfd_getfd process_madvise process_vm_readv process_vm_writev ptrace') },
  { capability: 'CAP_SYS_RAWIO', syscalls: words('iopl ioperm') },
  { capability: 'CAP_SYS_TIME', syscalls: words('settimeofday stime clock_settime clock_settime64') },
  { capability: 'CAP_SYS_TTY_CONFIG', syscalls: words('vhangup') },
  { capability: 'CAP_SYSLOG', syscalls: words('syslog') },
  { capability: 'CAP_BPF', syscalls: words('bpf') },
  { capability: 'CAP_PERFMON', syscalls: words('perf_event_open') },
];

/**
 * The RuntimeDefault profile for a container whose bounding set is `capabilities`: an allowlist
 * that fails everything else with EPERM. Capability-gated calls are allowed only with the
 * capability (the kernel would refuse them anyway; the filter also closes their attack surface).
 * Without CAP_SYS_ADMIN, clone may not create namespaces and clone3 (whose flags live in memory
 * a filter cannot inspect) fails with ENOSYS so libc falls back to clone.
 */
export function defaultSeccompProfile(capabilities: readonly string[], arch: string = process.arch): LinuxSeccomp {
  const caps = new Set(capabilities);
  const syscalls: LinuxSyscall[] = [{ names: [...BASE_SYSCALLS], action: 'SCMP_ACT_ALLOW' }];
  for (const value of ALLOWED_PERSONALITIES) {
    syscalls.push({ names: ['personality'], action: 'SCMP_ACT_ALLOW', args: [{ index: 0, value, op: 'SCMP_CMP_EQ' }] });
  }
  const archCalls = ARCH_SYSCALLS[arch];
  if (archCalls) syscalls.push({ names: [...archCalls], action: 'SCMP_ACT_ALLOW' });
  for (const group of CAPABILITY_SYSCALLS) {
    if (caps.has(group.capability)) syscalls.push({ names: [...group.syscalls], action: 'SCMP_ACT_ALLOW' });
  }
  if (!caps.has('CAP_SYS_ADMIN')) {
    // On s390 the flags are clone's second argument.
    const index = arch === 's390x' ? 1 : 0;
    syscalls.push({ names: ['clone'], action: 'SCMP_ACT_ALLOW', args: [{ index, value: CLONE_NAMESPACE_FLAGS, valueTwo: 0, op: 'SCMP_CMP_MASKED_EQ' }] });
    syscalls.push({ names: ['clone3'], action: 'SCMP_ACT_ERRNO', errnoRet: ENOSYS });
  }
  return {
    defaultAction: 'SCMP_ACT_ERRNO',
    defaultErrnoRet: EPERM,
    architectures: [...(ARCHITECTURES[arch] ?? [])],
    syscalls,
  };
}

/**
 * What a profile does with one call, for diagnostics and tests: the first rule naming the call
 * whose argument conditions all hold decides, otherwise the default action.
 */
export function evaluateSeccomp(profile: LinuxSeccomp, syscall: string, args: readonly (number | bigint)[] = []): { action: SeccompAction; errno?: number } {
  for (const rule of profile.syscalls ?? []) {
    if (!rule.names.includes(syscall)) continue;
    const matches = (rule.args ?? []).every((cond) => {
      const arg = BigInt(args[cond.index] ?? 0);
      const value = BigInt(cond.value);
      switch (cond.op) {
        case 'SCMP_CMP_NE':
          return arg !== value;
        case 'SCMP_CMP_LT':
          return arg < value;
        case 'SCMP_CMP_LE':
          return arg <= value;
        case 'SCMP_CMP_EQ':
          return arg === value;
        case 'SCMP_CMP_GE':
          return arg >= value;
        case 'SCMP_CMP_GT':
          return arg > value;
        case 'SCMP_CMP_MASKED_EQ':
          return (arg & value) === BigInt(cond.valueTwo ?? 0);
      }
    });
    if (matches) return rule.action === 'SCMP_ACT_ERRNO' ? { action: rule.action, errno: rule.errnoRet ?? EPERM } : { action: rule.action };
  }
  return profile.defaultAction === 'SCMP_ACT_ERRNO' ? { action: profile.defaultAction, errno: profile.defaultErrnoRet ?? EPERM } : { action: profile.defaultAction };
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function checkAction(value: unknown, where: string): SeccompAction {
  if (typeof value !== 'string' || !ACTIONS.has(value)) throw new Error(`${where}: unsupported action ${JSON.stringify(value)}`);
  return value as SeccompAction;
}

function checkUint(value: unknown, where: string): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0) throw new Error(`${where}: expected a non-negative integer, got ${JSON.stringify(value)}`);
  return value;
}

function checkStrings(value: unknown, where: string): string[] {
  if (!Array.isArray(value) || value.some((v) => typeof v !== 'string')) throw new Error(`${where}: expected a list of strings`);
  return value as string[];
}

/**
 * Validates a profile in the OCI LinuxSeccomp JSON shape. Docker-format profiles (archMap,
 * per-rule "name") are accepted too; their includes/excludes conditions are ignored, as
 * containerd ignores them.
 */
export function parseSeccompProfile(json: unknown): LinuxSeccomp {
  if (!isRecord(json)) throw new Error('profile is not a JSON object');
  const profile: LinuxSeccomp = { defaultAction: checkAction(json.defaultAction, 'defaultAction') };
  if (json.defaultErrnoRet !== undefined) profile.defaultErrnoRet = checkUint(json.defaultErrnoRet, 'defaultErrnoRet');

  let architectures: string[] = json.architectures === undefined || json.architectures === null ? [] : checkStrings(json.architectures, 'architectures');
  if (architectures.length === 0 && Array.isArray(json.archMap)) {
    for (const entry of json.archMap) {
      if (!isRecord(entry)) throw new Error('archMap: expected objects');
      if (typeof entry.architecture === 'string') architectures.push(entry.architecture);
      if (entry.subArchitectures) architectures.push(...checkStrings(entry.subArchitectures, 'archMap.subArchitectures'));
    }
  }
  architectures = [...new Set(architectures)];
  if (architectures.length > 0) profile.architectures = architectures;
  if (json.flags !== undefined && json.flags !== null) profile.flags = checkStrings(json.flags, 'flags');
  if (json.listenerPath) throw new Error('seccomp notification listeners (listenerPath) are not supported');

  const rules = json.syscalls ?? [];
  if (!Array.isArray(rules)) throw new Error('syscalls: expected a list');
  profile.syscalls = rules.map((raw, i): LinuxSyscall => {
    const where = `syscalls[${i}]`;
    if (!isRecord(raw)) throw new Error(`${where}: expected an object`);
    let names: string[] = [];
    if (raw.names !== undefined && raw.names !== null) names = checkStrings(raw.names, `${where}.names`);
    if (typeof raw.name === 'string') names = [...names, raw.name];
    if (names.length === 0) throw new Error(`${where}: no syscall names`);
    const rule: LinuxSyscall = { names, action: checkAction(raw.action, `${where}.action`) };
    if (raw.errnoRet !== undefined && raw.errnoRet !== null) rule.errnoRet = checkUint(raw.errnoRet, `${where}.errnoRet`);
    if (raw.args !== undefined && raw.args !== null) {
      if (!Array.isArray(raw.args)) throw new Error(`${where}.args: expected a list`);
      rule.args = raw.args.map((a, j): LinuxSeccompArg => {
        const at = `${where}.args[${j}]`;
        if (!isRecord(a)) throw new Error(`${at}: expected an object`);
        const index = checkUint(a.index, `${at}.index`);
        if (index > 5) throw new Error(`${at}.index: system calls have at most 6 arguments`);
        if (typeof a.op !== 'string' || !OPERATORS.has(a.op)) throw new Error(`${at}.op: unsupported operator ${JSON.stringify(a.op)}`);
        const arg: LinuxSeccompArg = { index, value: checkUint(a.value ?? 0, `${at}.value`), op: a.op as SeccompOperator };
        if (a.valueTwo !== undefined && a.valueTwo !== null) arg.valueTwo = checkUint(a.valueTwo, `${at}.valueTwo`);
        return arg;
      });
    }
    return rule;
  });
  return profile;
}

/** Loads a Localhost profile; any failure is the client's (wrong path or bad file): InvalidArgument. */
export async function loadSeccompProfile(file: string, readFile: (p: string) => Promise<Buffer> = fsp.readFile): Promise<LinuxSeccomp> {
  let text: string;
  try {
    text = (await readFile(file)).toString('utf8');
  } catch (err) {
    throw invalidArgument(`cannot load seccomp profile "${file}": ${errorMessage(err)}`);
  }
  try {
    return parseSeccompProfile(JSON.parse(text));
  } catch (err) {
    throw invalidArgument(`invalid seccomp profile "${file}": ${errorMessage(err)}`);
  }
}

export const DEFAULT_SECCOMP_PROFILE_ROOT = '/var/lib/kubelet/seccomp';

export type SeccompChoice = { kind: 'unconfined' } | { kind: 'runtime-default' } | { kind: 'localhost'; path: string };

/**
 * Which seccomp profile the request asks for: the `seccomp` field, else the deprecated
 * `seccomp_profile_path` ("runtime/default", "docker/default", "unconfined", "localhost/<path>"),
 * else unconfined (kubelet always sends the field; it sends Unconfined unless the pod or the
 * SeccompDefault kubelet setting asks for more).
 */
export function selectSeccompProfile(
  field: SecurityProfile | undefined,
  deprecatedPath: string,
  profileRoot: string = DEFAULT_SECCOMP_PROFILE_ROOT,
): SeccompChoice {
  const localhost = (ref: string): SeccompChoice => {
    const p = ref.startsWith('localhost/') ? ref.slice('localhost/'.length) : ref;
    if (!p) throw invalidArgument('seccomp profile type Localhost needs a localhost_ref');
    return { kind: 'localhost', path: path.isAbsolute(p) ? path.normalize(p) : path.join(profileRoot, p) };
  };
  if (field) {
    if (field.profileType !== SecurityProfile_ProfileType.Localhost && field.localhostRef) {
      throw invalidArgument('seccomp localhost_ref may only be set for profile type Localhost');
    }
    switch (field.profileType) {
      case SecurityProfile_ProfileType.RuntimeDefault:
        return { kind: 'runtime-default' };
      case SecurityProfile_ProfileType.Unconfined:
        return { kind: 'unconfined' };
      case SecurityProfile_ProfileType.Localhost:
        return localhost(field.localhostRef);
      default:
        throw invalidArgument(`unknown seccomp profile type ${field.profileType}`);
    }
  }
  switch (deprecatedPath) {
    case '':
    case 'unconfined':
      return { kind: 'unconfined' };
    case 'runtime/default':
    case 'docker/default':
      return { kind: 'runtime-default' };
    default:
      if (deprecatedPath.startsWith('localhost/')) return localhost(deprecatedPath);
      throw invalidArgument(`unsupported seccomp profile "${deprecatedPath}"`);
  }
}
