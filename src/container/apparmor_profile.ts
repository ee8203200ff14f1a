/**
 * crisp's runtime-default AppArmor profile: what a container gets for RuntimeDefault (or no
 * request at all) on a host that enforces AppArmor. It follows what the default profiles of
 * Docker and containerd deny: mounting, writing kernel-wide /proc and /sys files, reading
 * /proc/kcore, /sys/firmware and the security filesystem. Everything else (files, networking,
 * capabilities the container holds) is left to the other layers.
 */

/** Name of the profile the daemon loads and containers exec into. */
export const DEFAULT_APPARMOR_PROFILE = 'crisp-default';

export interface AppArmorProfileOptions {
  /** Include the distribution's tunables and base abstraction (present where AppArmor's policy package is). */
  withAbstractions: boolean;
}

export function defaultAppArmorProfile(options: AppArmorProfileOptions, name = DEFAULT_APPARMOR_PROFILE): string {
  const lines: string[] = [];
  if (options.withAbstractions) lines.push('#include <tunables/global>', '');
  // attach_disconnected: paths of files opened before pivot_root (or on detached mounts) still
  // resolve; mediate_deleted: unlinked files are mediated like the others.
  lines.push(`profile ${name} flags=(attach_disconnected,mediate_deleted) {`);
  if (options.withAbstractions) lines.push('  #include <abstractions/base>', '');
  lines.push(
    '  # What the other layers (capabilities, seccomp, namespaces) already bound.',
    '  network,',
    '  capability,',
    '  file,',
    '  umount,',
    '',
    '  # Signals and tracing within the profile; the node (unconfined) may signal the container.',
    `  signal (receive) peer=unconfined,`,
    `  signal (send,receive) peer=${name},`,
    `  ptrace (trace,read,tracedby,readby) peer=${name},`,
    '',
    '  # No mounting: a container rearranging its filesystems could uncover what is masked.',
    '  deny mount,',
    '',
    '  # /proc: the processes\' own directories (/proc/<pid>/...) stay writable, and of /proc/sys',
    '  # only the IPC settings of the container\'s own namespace (kernel/shm*); every other',
    '  # kernel-wide file is read-only. The memory image and SysRq are out of reach.',
    '  deny /proc/* w,',
    '  deny /proc/{[^1-9],[^1-9][^0-9],[^1-9s][^0-9y][^0-9s],[^1-9][^0-9][^0-9][^0-9/]*}/** w,',
    '  deny /proc/sys/[^k]** w,',
    '  deny /proc/sys/kernel/{?,??,[^s][^h][^m]**} w,',
    '  deny /proc/sysrq-trigger rwklx,',
    '  deny /proc/kcore rwklx,',
    '',
    '  # /sys: read-only except the container\'s cgroup; firmware tables and LSM policy unreadable.',
    '  deny /sys/[^f]*/** wklx,',
    '  deny /sys/f[^s]*/** wklx,',
    '  deny /sys/fs/[^c]*/** wklx,',
    '  deny /sys/fs/c[^g]*/** wklx,',
    '  deny /sys/fs/cg[^r]*/** wklx,',
    '  deny /sys/firmware/** rwklx,',
    '  deny /sys/kernel/security/** rwklx,',
    '}',
    '',
  );
  return lines.join('\n');
}
