/** The real host behind {@link SpecHost}: files, device nodes, mount propagation, AppArmor, SELinux, cgroups. */
import { spawn } from 'node:child_process';
import type * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { KNOWN_CAPABILITIES } from './capabilities';
import type { HostDevice, HostMountPropagation, SpecHost } from './spec_context';

/** Propagation of the mount that `p` lives on, from /proc/self/mountinfo. */
async function hostMountPropagation(p: string): Promise<HostMountPropagation> {
  const text = await fsp.readFile('/proc/self/mountinfo', 'utf8');
  const unescape = (s: string): string => s.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)));
  let best: { mountPoint: string; optional: string[] } | undefined;
  for (const line of text.split('\n')) {
    const fields = line.split(' ');
    if (fields.length < 7) continue;
    const mountPoint = unescape(fields[4]!);
    const within = mountPoint === '/' || p === mountPoint || p.startsWith(`${mountPoint}/`);
    if (!within) continue;
    const sep = fields.indexOf('-', 6);
    const optional = fields.slice(6, sep < 0 ? undefined : sep);
    // Later lines are mounted on top of earlier ones at the same point.
    if (!best || mountPoint.length >= best.mountPoint.length) best = { mountPoint, optional };
  }
  if (!best) return 'private';
  if (best.optional.some((o) => o.startsWith('shared:'))) return 'shared';
  if (best.optional.some((o) => o.startsWith('master:'))) return 'slave';
  return 'private';
}

function decodeDevice(st: fs.BigIntStats): HostDevice | undefined {
  let type: HostDevice['type'];
  if (st.isCharacterDevice()) type = 'c';
  else if (st.isBlockDevice()) type = 'b';
  else if (st.isFIFO()) type = 'p';
  else return undefined;
  // glibc's gnu_dev_major/gnu_dev_minor encoding of dev_t.
  const rdev = st.rdev;
  const major = Number(((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn));
  const minor = Number((rdev & 0xffn) | ((rdev >> 12n) & ~0xffn));
  return { type, major, minor, fileMode: Number(st.mode & 0o7777n), uid: Number(st.uid), gid: Number(st.gid) };
}

async function exists(p: string): Promise<boolean> {
  try {
    await fsp.access(p);
    return true;
  } catch {
    return false;
  }
}

/** `apparmor_parser -Kr` with the profile on stdin: replaces a loaded one, bypasses the cache. */
function loadAppArmorProfile(text: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('apparmor_parser', ['-Kr'], { stdio: ['pipe', 'ignore', 'pipe'] });
    const stderr: Buffer[] = [];
    child.stderr.on('data', (c: Buffer) => stderr.push(c));
    child.on('error', (err) => reject(new Error(`apparmor_parser: ${err.message}`)));
    child.on('close', (code) => {
      if (code === 0) resolve();
      else reject(new Error(`apparmor_parser exited with ${code}: ${Buffer.concat(stderr).toString().trim()}`));
    });
    child.stdin.on('error', () => {});
    child.stdin.end(text);
  });
}

/**
 * Facts about the kernel and its modules do not change while the daemon runs; each container
 * create would otherwise re-read them. A failed lookup is not remembered.
 */
function once<T>(read: () => Promise<T>): () => Promise<T> {
  let value: Promise<T> | undefined;
  return () => {
    value ??= read().catch((err: unknown) => {
      value = undefined;
      throw err;
    });
    return value;
  };
}

function oncePerKey<K, T>(read: (key: K) => Promise<T>): (key: K) => Promise<T> {
  const values = new Map<K, () => Promise<T>>();
  return (key) => {
    let get = values.get(key);
    if (!get) {
      get = once(() => read(key));
      values.set(key, get);
    }
    return get();
  };
}

export const nodeSpecHost: SpecHost = {
  realpath: (p) => fsp.realpath(p),
  exists,
  mkdirAll: async (p) => {
    await fsp.mkdir(p, { recursive: true, mode: 0o755 });
  },
  statDevice: async (p) => decodeDevice(await fsp.lstat(p, { bigint: true })),
  isDirectory: async (p) => {
    try {
      return (await fsp.lstat(p)).isDirectory();
    } catch {
      return false;
    }
  },
  readDir: (p) => fsp.readdir(p),
  mountPropagation: hostMountPropagation,
  apparmorEnabled: once(async () => {
    try {
      return (await fsp.readFile('/sys/module/apparmor/parameters/enabled', 'utf8')).trim().startsWith('Y');
    } catch {
      return false;
    }
  }),
  apparmorProfileLoaded: async (name) => {
    try {
      const profiles = await fsp.readFile('/sys/kernel/security/apparmor/profiles', 'utf8');
      return profiles.split('\n').some((line) => line.startsWith(`${name} (`));
    } catch {
      return false;
    }
  },
  loadAppArmorProfile: oncePerKey(loadAppArmorProfile),
  selinuxEnabled: once(async () => exists('/sys/fs/selinux/enforce')),
  hostname: () => os.hostname(),
  capLastCap: once(async () => {
    try {
      const n = parseInt(await fsp.readFile('/proc/sys/kernel/cap_last_cap', 'utf8'), 10);
      return Number.isFinite(n) ? n : KNOWN_CAPABILITIES.length - 1;
    } catch {
      return KNOWN_CAPABILITIES.length - 1;
    }
  }),
  swapControllerAvailable: oncePerKey(async (version: 1 | 2) => {
    if (version === 1) return exists('/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes');
    // memory.swap.max does not exist in the root cgroup; look in our own.
    try {
      const self = await fsp.readFile('/proc/self/cgroup', 'utf8');
      const line = self.split('\n').find((l) => l.startsWith('0::'));
      if (!line) return false;
      return exists(path.join('/sys/fs/cgroup', line.slice(3), 'memory.swap.max'));
    } catch {
      return false;
    }
  }),
  readFile: (p) => fsp.readFile(p),
};
