import { spawn } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import type { Logger } from '../log';
import { CrispError, deadlineExceeded, errorMessage, failedPrecondition, internal, invalidArgument, unimplemented } from '../util/errors';
import { loadNative } from '../native';
import { syncDir } from '../util/fsutil';

/**
 * Checkpoint archives in the layout CRI-O and containerd write and checkpointctl reads: CRIU's
 * images under `checkpoint/`, the container's metadata and OCI spec as JSON, its writable layer as
 * a tar plus the list of image files it deleted, and CRIU's log.
 */
export const CHECKPOINT_DIRECTORY = 'checkpoint';
export const CONFIG_DUMP_FILE = 'config.dump';
export const SPEC_DUMP_FILE = 'spec.dump';
export const ROOTFS_DIFF_TAR = 'rootfs-diff.tar';
export const DELETED_FILES_FILE = 'deleted.files';
export const DUMP_LOG_FILE = 'dump.log';
/** runc's record of the paths behind fds 0-2, which a restore hands back with --inherit-fd. */
export const DESCRIPTORS_FILE = 'descriptors.json';

/** The parts of the container's OCI spec (`<bundle>/config.json`) a checkpoint needs. */
export interface CheckpointSpec {
  mounts?: { destination: string; type?: string; source?: string; options?: string[] }[];
  linux?: { namespaces?: { type: string; path?: string }[] };
  crispRootfs?: { lowerDirs?: string[]; upperDir?: string };
}

/** checkpointctl's ContainerConfig: what `checkpointctl show` and restores read from config.dump. */
export interface CheckpointMetadata {
  id: string;
  name: string;
  rootfsImage: string;
  rootfsImageRef: string;
  rootfsImageName: string;
  runtime: string;
  createdTime: string;
  checkpointedTime: string;
}

export interface CheckpointRequest {
  /** Host pid of the container's main process; the tree below it is dumped. */
  pid: number;
  /** `<bundle>/config.json` as written at create time. */
  specFile: string;
  /** The container's overlay upper directory. */
  upperDir: string;
  metadata: Omit<CheckpointMetadata, 'checkpointedTime'>;
  /** Absolute path of the archive to write. */
  location: string;
  /** Absolute time (Date.now() scale) by which everything must be done. */
  deadline: number;
  /** The CRIU binary, looked up in PATH unless absolute. */
  criu?: string;
  /** Cancels the checkpoint (the caller went away): CRIU and tar are killed. */
  signal?: AbortSignal;
  log: Logger;
}

/** Validates kubelet's archive location: absolute, not a directory, in an existing directory. */
export async function checkLocation(location: string): Promise<void> {
  if (!location) throw invalidArgument('checkpoint location is empty');
  if (!path.isAbsolute(location)) throw invalidArgument(`checkpoint location "${location}" is not an absolute path`);
  if (location.endsWith('/')) throw invalidArgument(`checkpoint location "${location}" names a directory, not an archive file`);
  const parent = path.dirname(location);
  const dir = await fsp.stat(parent).catch(() => undefined);
  if (!dir?.isDirectory()) throw invalidArgument(`checkpoint location "${location}": directory "${parent}" does not exist`);
  const existing = await fsp.stat(location).catch(() => undefined);
  if (existing?.isDirectory()) throw invalidArgument(`checkpoint location "${location}" is a directory`);
}

// ---------------------------------------------------------------------------------------------
// Running helpers

interface Finished {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs a helper to completion without blocking the event loop. Past the deadline it is killed
 * (SIGKILL: CRIU has no graceful stop, and a ptrace-seized tree is released when its tracer dies).
 */
function run(file: string, args: string[], deadline: number, what: string, input?: string, signal?: AbortSignal): Promise<Finished> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    const cancel = (): void => {
      child.kill('SIGKILL');
    };
    if (signal?.aborted) cancel();
    else signal?.addEventListener('abort', cancel, { once: true });
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout = (stdout + d).slice(-65536)));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr = (stderr + d).slice(-65536)));
    const timer = setTimeout(
      () => {
        timedOut = true;
        child.kill('SIGKILL');
      },
      Math.max(0, deadline - Date.now()),
    );
    child.once('error', (err) => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', cancel);
      reject(err);
    });
    child.once('close', (code, killedBy) => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', cancel);
      if (timedOut) reject(deadlineExceeded(`${what} did not finish before the checkpoint timeout`));
      else if (signal?.aborted) reject(signal.reason instanceof Error ? signal.reason : new CrispError('Canceled', `${what} was cancelled`));
      else resolve({ code, signal: killedBy, stdout, stderr });
    });
    if (input !== undefined) {
      // A helper that exits early closes its stdin; the exit status tells what went wrong.
      child.stdin!.on('error', () => {});
      child.stdin!.end(input);
    }
  });
}

/** CRIU's own diagnosis: the "Error" lines of its log, else its last lines. */
function criuErrors(text: string, max = 6): string {
  const lines = text.split('\n').map((l) => l.trim()).filter(Boolean);
  const errors = lines.filter((l) => /\bError\b/.test(l) && !l.includes('RLIMIT_NOFILE'));
  return (errors.length > 0 ? errors : lines).slice(-max).join('; ');
}

// ---------------------------------------------------------------------------------------------
// CRIU availability

export interface CriuStatus {
  usable: boolean;
  /** Why not, in CRIU's words; or its version. */
  detail: string;
}

const FAILED_PROBE_TTL_MS = 30_000;
const probes = new Map<string, { at: number; status: Promise<CriuStatus> }>();

/**
 * Whether CRIU is installed and works on this kernel (`criu check`). A working CRIU is remembered;
 * a failure only briefly, so installing a fixed CRIU needs no daemon restart.
 */
export function criuStatus(binary = 'criu'): Promise<CriuStatus> {
  const cached = probes.get(binary);
  if (cached && Date.now() - cached.at < FAILED_PROBE_TTL_MS) return cached.status;
  const status = probeCriu(binary);
  probes.set(binary, { at: Date.now(), status });
  void status.then((s) => {
    if (s.usable) probes.set(binary, { at: Number.POSITIVE_INFINITY, status });
  });
  return status;
}

async function probeCriu(binary: string): Promise<CriuStatus> {
  const deadline = Date.now() + 30_000;
  try {
    const check = await run(binary, ['check'], deadline, 'criu check');
    if (check.code !== 0) return { usable: false, detail: `criu check failed: ${criuErrors(check.stderr + check.stdout)}` };
    const version = await run(binary, ['--version'], deadline, 'criu --version');
    return { usable: true, detail: /Version:\s*(\S+)/.exec(version.stdout)?.[1] ?? 'unknown version' };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { usable: false, detail: `"${binary}" was not found in PATH` };
    return { usable: false, detail: `running ${binary}: ${errorMessage(err)}` };
  }
}

// ---------------------------------------------------------------------------------------------
// What CRIU must be told about the container

/** The container's main process and all its descendants, parents first. */
async function processTree(root: number): Promise<number[]> {
  const out: number[] = [];
  const queue = [root];
  while (queue.length > 0) {
    const pid = queue.shift()!;
    out.push(pid);
    const tasks = await fsp.readdir(`/proc/${pid}/task`).catch(() => [] as string[]);
    for (const tid of tasks) {
      const children = await fsp.readFile(`/proc/${pid}/task/${tid}/children`, 'utf8').catch(() => '');
      for (const child of children.split(' ')) if (child.trim()) queue.push(Number(child));
    }
  }
  return out;
}

async function mountIds(pid: number): Promise<Set<number>> {
  const text = await fsp.readFile(`/proc/${pid}/mountinfo`, 'utf8');
  return new Set(text.split('\n').filter(Boolean).map((l) => Number(l.split(' ', 1)[0])));
}

const PTY_SLAVE_MAJORS = new Set([136, 137, 138, 139, 140, 141, 142, 143]);
const TTYAUX_MAJOR = 5;

/** Linux's new_encode_dev split: major is bits 8-19, minor bits 0-7 and 20-31. */
function major(dev: bigint): number {
  return Number((dev >> 8n) & 0xfffn);
}

/**
 * Descriptors that point at files outside the container's mount namespace: the monitor opens the
 * container's /dev/null and its pty before pivot_root, on the host's mounts. CRIU cannot resolve
 * those paths in the container, so they are declared external (a restore passes them back in).
 */
async function externalFiles(pids: number[], visible: Set<number>): Promise<string[]> {
  const out = new Set<string>();
  for (const pid of pids) {
    const fds = await fsp.readdir(`/proc/${pid}/fd`).catch(() => [] as string[]);
    for (const fd of fds) {
      const link = await fsp.readlink(`/proc/${pid}/fd/${fd}`).catch(() => '');
      // pipe:[…], socket:[…], anon_inode:… are dumped by type, not looked up by path.
      if (!link.startsWith('/')) continue;
      const info = await fsp.readFile(`/proc/${pid}/fdinfo/${fd}`, 'utf8').catch(() => '');
      const mntId = Number(/^mnt_id:\s*(\d+)/m.exec(info)?.[1] ?? NaN);
      if (!Number.isFinite(mntId) || visible.has(mntId)) continue;
      const st = await fsp.stat(`/proc/${pid}/fd/${fd}`, { bigint: true }).catch(() => undefined);
      if (!st) continue;
      const isTty = st.isCharacterDevice() && (PTY_SLAVE_MAJORS.has(major(st.rdev)) || major(st.rdev) === TTYAUX_MAJOR);
      out.add(isTty ? `tty[${st.rdev.toString(16)}:${st.dev.toString(16)}]` : `file[${mntId.toString(16)}:${st.ino.toString(16)}]`);
    }
  }
  return [...out];
}

async function namespaceInode(pid: number, type: string): Promise<string> {
  const link = await fsp.readlink(`/proc/${pid}/ns/${type}`);
  const inode = /\[(\d+)\]/.exec(link)?.[1];
  if (!inode) throw internal(`unexpected namespace link ${link}`);
  return inode;
}

function isBindMount(m: { type?: string; options?: string[] }): boolean {
  return m.type === 'bind' || (m.options ?? []).some((o) => o === 'bind' || o === 'rbind');
}

/**
 * Mounts whose content belongs to someone else (the pod's /etc/hosts, /dev/shm, volumes, the
 * host's cgroup directories): CRIU records them as external by their path in the container, as
 * runc does, instead of trying to dump them.
 */
async function externalMounts(pid: number, spec: CheckpointSpec): Promise<string[]> {
  const out = new Set<string>();
  for (const m of spec.mounts ?? []) if (isBindMount(m)) out.add(path.posix.normalize(m.destination));
  // Each cgroup (v1 controller or v2) directory the container sees is a bind of a host
  // sub-directory, whatever the spec said (a "cgroup" mount).
  const text = await fsp.readFile(`/proc/${pid}/mountinfo`, 'utf8');
  for (const line of text.split('\n')) {
    const [left, right] = line.split(' - ');
    if (!left || !right) continue;
    const fstype = right.split(' ')[0];
    const fields = left.split(' ');
    const mountPoint = unescapeMountinfo(fields[4] ?? '');
    if ((fstype === 'cgroup' || fstype === 'cgroup2') && fields[3] !== '/') out.add(mountPoint);
  }
  for (const dest of out) {
    // CRIU splits `key:value` at the first colon and options at commas.
    if (dest.includes(':') || dest.includes(',')) throw unimplemented(`checkpointing a container with a mount at "${dest}" is not supported (":" or "," in the path)`);
  }
  return [...out];
}

function unescapeMountinfo(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_m, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}

/** The `criu dump` command line for this container, leaving it running. */
export async function criuDumpArgs(pid: number, spec: CheckpointSpec, imagesDir: string, workDir: string): Promise<string[]> {
  const args = [
    'dump',
    '--tree', String(pid),
    '--images-dir', imagesDir,
    '--work-dir', workDir,
    '--log-file', DUMP_LOG_FILE,
    '-v4',
    '--leave-running',
    '--manage-cgroups',
    // What a forensic dump of an arbitrary container meets: locks, established connections,
    // unix sockets whose peer is outside (a logging daemon).
    '--file-locks',
    '--tcp-established',
    '--ext-unix-sk',
  ];
  // Namespaces that belong to the pod (joined by path) are not the container's to dump.
  for (const ns of spec.linux?.namespaces ?? []) {
    if (!ns.path) continue;
    if (ns.type === 'network') args.push('--external', `net[${await namespaceInode(pid, 'net')}]:extRootNetNS`);
    if (ns.type === 'pid') args.push('--external', `pid[${await namespaceInode(pid, 'pid')}]:extRootPidNS`);
  }
  for (const dest of await externalMounts(pid, spec)) args.push('--ext-mount-map', `${dest}:${dest}`);
  const pids = await processTree(pid);
  for (const ext of await externalFiles(pids, await mountIds(pid))) args.push('--external', ext);
  return args;
}

// ---------------------------------------------------------------------------------------------
// The writable layer

const WHITEOUT_DEV = 0n;

/** Whether `rel` exists under `root`; only "no such entry" means no (a vanished process is an error). */
async function present(root: string, rel: string): Promise<boolean> {
  try {
    await fsp.lstat(path.join(root, rel));
    return true;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return false;
    throw err;
  }
}

function under(p: string, dir: string): boolean {
  return p === dir || p.startsWith(dir === '/' ? '/' : `${dir}/`);
}

interface LayerDiff {
  /** Paths relative to the rootfs, parents before children, for the diff tar. */
  include: string[];
  /** Absolute paths in the container of image files the container removed. */
  deleted: string[];
}

/**
 * What the container changed in its root filesystem: the upper directory's files, less the
 * mountpoints the monitor created there and whatever is under mounts. Deletions (whiteouts and
 * opaque directories alike) are found by comparing each upper directory with the image's lower
 * directories through the container's merged view (`/proc/<pid>/root`), which needs no xattrs.
 */
export async function diffWritableLayer(upperDir: string, lowerDirs: string[], mergedRoot: string, mountDestinations: string[]): Promise<LayerDiff> {
  const covered = (p: string): boolean => mountDestinations.some((d) => under(p, d));
  const include: string[] = [];
  const deleted: string[] = [];
  const inLower = async (rel: string): Promise<boolean> => {
    for (const lower of lowerDirs) if (await present(lower, rel)) return true;
    return false;
  };

  // Returns whether anything below `rel` was included, so unchanged parents are left out.
  const walk = async (rel: string): Promise<boolean> => {
    const names = (await fsp.readdir(path.join(upperDir, rel))).sort();
    let any = false;
    for (const name of names) {
      const childRel = rel ? `${rel}/${name}` : name;
      const abs = `/${childRel}`;
      if (covered(abs)) continue;
      const st = await fsp.lstat(path.join(upperDir, childRel), { bigint: true });
      if (st.isCharacterDevice() && st.rdev === WHITEOUT_DEV) continue; // found below as a deletion
      if (st.isDirectory()) {
        const at = include.length;
        const below = await walk(childRel);
        if (below || !(await inLower(childRel))) {
          include.splice(at, 0, childRel);
          any = true;
        }
      } else {
        include.push(childRel);
        any = true;
      }
    }
    // Image entries of this directory the container no longer sees.
    const seen = new Set<string>();
    for (const lower of lowerDirs) {
      const lowerNames = await fsp.readdir(path.join(lower, rel)).catch(() => [] as string[]);
      for (const name of lowerNames) {
        if (seen.has(name)) continue;
        seen.add(name);
        const childRel = rel ? `${rel}/${name}` : name;
        if (covered(`/${childRel}`)) continue;
        if (!(await present(mergedRoot, childRel))) deleted.push(`/${childRel}`);
      }
    }
    return any;
  };
  // The merged view is the container's root: if the container went away, absences mean nothing.
  const stillThere = async (): Promise<void> => {
    await fsp.stat(mergedRoot).catch((err: unknown) => {
      throw failedPrecondition(`the container exited while its writable layer was being read: ${errorMessage(err)}`);
    });
  };
  await stillThere();
  await walk('');
  await stillThere();
  return { include, deleted: deleted.sort() };
}

// ---------------------------------------------------------------------------------------------
// The archive

async function writeFileSynced(file: string, data: string): Promise<void> {
  const fh = await fsp.open(file, 'w', 0o600);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

async function fsyncFile(file: string): Promise<void> {
  const fh = await fsp.open(file, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

async function tar(args: string[], deadline: number, what: string, input?: string, signal?: AbortSignal): Promise<void> {
  let done: Finished;
  try {
    done = await run('tar', args, deadline, what, input, signal);
  } catch (err) {
    if (err instanceof CrispError) throw err;
    throw internal(`${what}: ${errorMessage(err)}`, err);
  }
  if (done.code !== 0) throw internal(`${what}: tar exited with ${done.code ?? done.signal}: ${done.stderr.trim().slice(-2000)}`);
}

/**
 * Writes `include` (paths relative to `upperDir`) of the running container's writable layer as
 * a tar at `dest`. The container can swap anything there meanwhile, so nothing is reopened by
 * path (as tar --files-from would, following a directory swapped for a symlink onto the host):
 * the native core resolves each entry beneath the layer without symlinks and reads it through
 * its own descriptor; entries that moved are left out.
 */
export async function writeRootfsDiff(upperDir: string, include: string[], dest: string, log?: Logger): Promise<void> {
  let written: { entries: number; skipped: number };
  try {
    written = await loadNative().writeRootfsDiff(upperDir, include, dest);
  } catch (err) {
    throw internal(`writing the rootfs diff: ${errorMessage(err)}`, err);
  }
  if (written.skipped > 0) log?.warn({ skipped: written.skipped, entries: written.entries }, 'rootfs diff: entries changed while they were read were left out');
}

/**
 * Dumps the running container with CRIU (it keeps running) and writes the archive at
 * `req.location` atomically: built in a scratch directory next to it, then renamed into place.
 */
export async function writeCheckpoint(req: CheckpointRequest): Promise<{ criuMs: number; bytes: number }> {
  const dir = path.dirname(req.location);
  const nonce = crypto.randomBytes(6).toString('hex');
  const work = path.join(dir, `.${path.basename(req.location)}.${nonce}.work`);
  const partial = path.join(dir, `.${path.basename(req.location)}.${nonce}.partial`);
  await fsp.mkdir(work, { mode: 0o700 });
  try {
    const spec = JSON.parse(await fsp.readFile(req.specFile, 'utf8')) as CheckpointSpec;
    const imagesDir = path.join(work, CHECKPOINT_DIRECTORY);
    await fsp.mkdir(imagesDir, { mode: 0o700 });

    // The descriptors as runc records them, before the dump (the process may close them later).
    const descriptors = await Promise.all([0, 1, 2].map((fd) => fsp.readlink(`/proc/${req.pid}/fd/${fd}`).catch(() => '')));
    await writeFileSynced(path.join(imagesDir, DESCRIPTORS_FILE), JSON.stringify(descriptors));

    const args = await criuDumpArgs(req.pid, spec, imagesDir, work);
    req.log.debug({ args }, 'running criu dump');
    const criuStarted = Date.now();
    const dump = await run(req.criu ?? 'criu', args, req.deadline, 'criu dump', undefined, req.signal).catch((err: unknown) => {
      if (err instanceof CrispError) throw err;
      throw internal(`running criu: ${errorMessage(err)}`, err);
    });
    const criuMs = Date.now() - criuStarted;
    const dumpLog = await fsp.readFile(path.join(work, DUMP_LOG_FILE), 'utf8').catch(() => '');
    if (dump.code !== 0) {
      throw internal(`criu dump of pid ${req.pid} failed (exit ${dump.code ?? dump.signal}): ${criuErrors(dumpLog || dump.stderr)}`);
    }

    await writeFileSynced(path.join(work, SPEC_DUMP_FILE), JSON.stringify(spec));
    const metadata: CheckpointMetadata = { ...req.metadata, checkpointedTime: new Date().toISOString() };
    await writeFileSynced(path.join(work, CONFIG_DUMP_FILE), JSON.stringify(metadata));

    const mountDestinations = (spec.mounts ?? []).map((m) => path.posix.normalize(m.destination));
    const diff = await diffWritableLayer(req.upperDir, spec.crispRootfs?.lowerDirs ?? [], `/proc/${req.pid}/root`, mountDestinations);
    await writeRootfsDiff(req.upperDir, diff.include, path.join(work, ROOTFS_DIFF_TAR), req.log);
    const members = [CHECKPOINT_DIRECTORY, CONFIG_DUMP_FILE, SPEC_DUMP_FILE, ROOTFS_DIFF_TAR, DUMP_LOG_FILE];
    if (diff.deleted.length > 0) {
      await writeFileSynced(path.join(work, DELETED_FILES_FILE), JSON.stringify(diff.deleted));
      members.push(DELETED_FILES_FILE);
    }

    // The archive holds the container's memory: readable by root only, like the images.
    await (await fsp.open(partial, 'wx', 0o600)).close();
    await tar(['--create', '--file', partial, '--directory', work, '--numeric-owner', '--sparse', ...members], req.deadline, 'writing the checkpoint archive', undefined, req.signal);
    await fsyncFile(partial);
    await fsp.rename(partial, req.location);
    await syncDir(dir);
    const { size } = await fsp.stat(req.location);
    return { criuMs, bytes: size };
  } finally {
    await fsp.rm(partial, { force: true }).catch(() => {});
    await fsp.rm(work, { recursive: true, force: true }).catch((err: unknown) => req.log.warn({ err: errorMessage(err), work }, 'removing checkpoint scratch directory'));
  }
}
