/**
 * Translates a CRI CreateContainer request into the OCI runtime spec (config.json) the launcher
 * runs, with the semantics kubelet expects from containerd's CRI plugin.
 */
import { spawn } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  MountPropagation,
  NamespaceMode,
  SecurityProfile_ProfileType,
  type ContainerConfig,
  type LinuxContainerResources,
  type Mount,
  type PodSandboxConfig,
  type SecurityProfile,
  type SELinuxOption,
} from '../generated/runtime/v1/api';
import type { ImageConfig } from '../image/image_manager';
import type { IdMapping, PodUserns, SandboxNamespaces } from '../sandbox/sandbox_spec';
import { errorMessage, failedPrecondition, internal, invalidArgument } from '../util/errors';
import { DEFAULT_APPARMOR_PROFILE, defaultAppArmorProfile } from './apparmor_profile';
import { CDI_HOOK_KINDS, type CdiEdits } from './cdi';
import { capabilitiesUpTo, KNOWN_CAPABILITIES, resolveCapabilities } from './capabilities';
import { resolveProcessArgs } from './command';
import { resolveUserWithHome } from './image_user';
import { resolveProcPaths } from './masked_paths';
import { defaultSeccompProfile, loadSeccompProfile, selectSeccompProfile, type LinuxSeccomp } from './seccomp_profile';
import {
  applyOpts,
  OCI_VERSION,
  withAnnotations,
  withCapabilities,
  withCwd,
  withDevices,
  withEnv,
  withMaskedPaths,
  withNamespace,
  withNoNewPrivileges,
  withProcessArgs,
  withReadonlyPaths,
  withRlimit,
  withRootfsPropagation,
  withRootReadonly,
  withSeccomp,
  withTerminal,
  withUser,
  withWritableMountType,
  type OciDevice,
  type OciDeviceCgroup,
  type OciMount,
  type OciResources,
  type OciSpec,
} from './spec_opts';

export type { OciSpec } from './spec_opts';

export const DEFAULT_PATH_ENV = 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/** containerd's default, high enough for servers; the launcher clamps it to what the host allows. */
export const DEFAULT_NOFILE_LIMIT = 1_048_576;

export const ANNOTATION_CONTAINER_TYPE = 'io.kubernetes.cri.container-type';
export const ANNOTATION_SANDBOX_ID = 'io.kubernetes.cri.sandbox-id';
export const ANNOTATION_SANDBOX_NAME = 'io.kubernetes.cri.sandbox-name';
export const ANNOTATION_SANDBOX_NAMESPACE = 'io.kubernetes.cri.sandbox-namespace';
export const ANNOTATION_SANDBOX_UID = 'io.kubernetes.cri.sandbox-uid';
export const ANNOTATION_CONTAINER_NAME = 'io.kubernetes.cri.container-name';
export const ANNOTATION_IMAGE_NAME = 'io.kubernetes.cri.image-name';

/** A device node on the host: an OCI device without its path in the container. */
export type HostDevice = Omit<OciDevice, 'path'>;

export type HostMountPropagation = 'shared' | 'slave' | 'private';

/** Everything the builder asks of the host, injectable so the builder is testable without root. */
export interface SpecHost {
  /** Resolves symlinks of an existing path. */
  realpath(p: string): Promise<string>;
  exists(p: string): Promise<boolean>;
  mkdirAll(p: string): Promise<void>;
  /** The device node at `p` (symlinks not followed), or undefined if `p` is not a device. */
  statDevice(p: string): Promise<HostDevice | undefined>;
  isDirectory(p: string): Promise<boolean>;
  readDir(p: string): Promise<string[]>;
  /** Propagation of the host mount `p` lives on. */
  mountPropagation(p: string): Promise<HostMountPropagation>;
  apparmorEnabled(): Promise<boolean>;
  apparmorProfileLoaded(name: string): Promise<boolean>;
  /** Loads (or replaces) a profile into the kernel with apparmor_parser. */
  loadAppArmorProfile(text: string): Promise<void>;
  /** SELinux is enabled (selinuxfs mounted). */
  selinuxEnabled(): Promise<boolean>;
  hostname(): string;
  /** /proc/sys/kernel/cap_last_cap. */
  capLastCap(): Promise<number>;
  swapControllerAvailable(cgroupVersion: 1 | 2): Promise<boolean>;
  readFile(p: string): Promise<Buffer>;
}

export interface SandboxInfo {
  id: string;
  /** `<state>/sandboxes/<id>`: holds hostname, resolv.conf, hosts and shm/. */
  dir: string;
  namespaces: SandboxNamespaces;
  nsPaths: { net?: string; ipc?: string; uts?: string; pid?: string; user?: string };
}

export interface SpecInput {
  containerId: string;
  config: ContainerConfig;
  sandboxConfig: PodSandboxConfig;
  sandbox: SandboxInfo;
  image: { config: ImageConfig; lowerDirs: string[] };
  rootfs: { upperDir: string; workDir: string };
  cgroup: { version: 1 | 2; paths: Record<string, string> };
  /** Reads /etc/passwd and /etc/group through the image layers. */
  readFileInImage: (absPath: string) => Promise<Buffer | undefined>;
  /** Root for relative localhost/ seccomp profiles (kubelet sends absolute paths). */
  seccompProfileRoot?: string;
  /** PID namespace of the target container, for NamespaceMode.TARGET (ephemeral debug containers). */
  targetPidNamespace?: string;
  /** Host access; defaults to the real host. */
  host?: Partial<SpecHost>;
  /**
   * What each image volume mount (a CRI mount with `image` set) shows, keyed by
   * `imageVolumeKey`: the caller resolves the images and paths before the spec is built.
   */
  imageVolumes?: ReadonlyMap<string, ImageVolumeSource>;
  /** An empty directory that completes a one-layer read-only overlay (overlayfs needs two). */
  emptyLowerDir?: string;
  /** Edits of the CDI devices the container asked for, resolved from the host's spec files. */
  cdi?: CdiEdits;
}

/** An image volume's content: a directory stacked from layer directories, or a single file. */
export type ImageVolumeSource = { kind: 'dir'; layers: string[] } | { kind: 'file'; path: string };

/** Identifies an image volume mount by its image and sub path. */
export function imageVolumeKey(m: Pick<Mount, 'image' | 'imageSubPath'>): string {
  return `${m.image?.image ?? ''}\n${m.imageSubPath}`;
}

/**
 * The sub path of an image volume as an absolute path inside the image ("/" for the whole image);
 * kubelet validates it, but a path that climbs out of the image is refused here too.
 */
export function imageSubPath(m: Pick<Mount, 'imageSubPath' | 'containerPath'>): string {
  const sub = m.imageSubPath;
  if (sub.startsWith('/') || sub.split('/').includes('..')) {
    throw invalidArgument(`image_sub_path "${sub}" of the mount at "${m.containerPath}" must be a relative path inside the image`);
  }
  return cleanPath(path.posix.join('/', sub));
}

/** Longest overlay option string the kernel takes (one page, with room for the rest). */
const MAX_OVERLAY_OPTIONS = 4000;

export async function buildSpec(input: SpecInput): Promise<OciSpec> {
  const host: SpecHost = { ...nodeSpecHost, ...input.host };
  const { config, sandboxConfig } = input;
  const security = config.linux?.securityContext;
  const imageConfig = input.image.config.config ?? {};
  const privileged = security?.privileged ?? false;

  if (!config.metadata?.name) throw invalidArgument('container config metadata.name is empty');
  if (privileged && !sandboxConfig.linux?.securityContext?.privileged) {
    throw invalidArgument('no privileged container allowed in a sandbox that is not privileged');
  }
  const wantsUserns = security?.namespaceOptions?.usernsOptions?.mode === NamespaceMode.POD;
  if (wantsUserns !== Boolean(input.sandbox.namespaces.userns)) {
    throw invalidArgument(wantsUserns ? 'the container asks for the pod user namespace, but the pod has none' : 'a container of a pod with a user namespace must use it');
  }

  const spec = baseSpec(input);

  // Process.
  const hostname = sandboxConfig.hostname || host.hostname();
  const imageEnv = imageConfig.Env ?? [];
  const configEnv = config.envs.map((kv) => `${kv.key}=${kv.value}`);
  applyOpts(
    spec,
    withProcessArgs(resolveProcessArgs(config, imageConfig)),
    withEnv([DEFAULT_PATH_ENV]),
    withEnv([`HOSTNAME=${hostname}`]),
    // Image first so the container config overrides it.
    withEnv([...imageEnv, ...configEnv]),
    withCwd(resolveWorkingDir(config.workingDir, imageConfig.WorkingDir)),
    withTerminal(config.tty),
    withNoNewPrivileges(security?.noNewPrivs ?? false),
    withRootReadonly(security?.readonlyRootfs ?? false),
    withRlimit('RLIMIT_NOFILE', DEFAULT_NOFILE_LIMIT, DEFAULT_NOFILE_LIMIT),
  );
  const resources = config.linux?.resources;
  if (resources) spec.process.oomScoreAdj = Number(resources.oomScoreAdj);

  const resolved = await resolveUserWithHome(
    {
      runAsUser: security?.runAsUser?.value,
      runAsUsername: security?.runAsUsername,
      runAsGroup: security?.runAsGroup?.value,
      imageUser: imageConfig.User,
      supplementalGroups: security?.supplementalGroups ?? [],
      supplementalGroupsPolicy: security?.supplementalGroupsPolicy ?? 0,
    },
    input.readFileInImage,
  );
  spec.process.user = resolved.user;
  applyOpts(spec, withUser(spec.process.user));
  if (!spec.process.env.some((e) => e.startsWith('HOME='))) spec.process.env.push(`HOME=${resolved.home}`);

  // Namespaces.
  applyNamespaces(spec, input, privileged);
  if (input.sandbox.namespaces.uts === 'pod') spec.hostname = hostname;

  // Mounts.
  await applyMounts(spec, input, host);
  if (privileged) applyOpts(spec, withWritableMountType('sysfs'), withWritableMountType('cgroup'));

  // Devices.
  await applyDevices(spec, config, privileged, host);
  if (input.cdi) await applyCdiEdits(spec, input.cdi, privileged, host);

  // Capabilities, /proc masking, seccomp, AppArmor and SELinux.
  const allCaps = capabilitiesUpTo(await host.capLastCap());
  applyOpts(spec, withCapabilities(resolveCapabilities({ capabilities: security?.capabilities, privileged, allCapabilities: allCaps })));
  const procPaths = resolveProcPaths(security, privileged);
  applyOpts(spec, withMaskedPaths(procPaths.maskedPaths), withReadonlyPaths(procPaths.readonlyPaths));
  applyOpts(spec, withSeccomp(await resolveSeccomp(spec, input, privileged, host)));
  await applyAppArmor(spec, security?.apparmor, security?.apparmorProfile ?? '', privileged, host);
  await applySelinux(spec, security?.selinuxOptions, sandboxConfig.linux?.securityContext?.selinuxOptions, privileged, host);

  // Resources (the daemon creates the cgroup from these; they are recorded for inspection).
  if (resources) await applyResources(spec.linux.resources, resources, input.cgroup.version, host);

  applyOpts(
    spec,
    withAnnotations({ ...config.annotations }),
    withAnnotations({
      [ANNOTATION_CONTAINER_TYPE]: 'container',
      [ANNOTATION_SANDBOX_ID]: input.sandbox.id,
      [ANNOTATION_SANDBOX_NAME]: sandboxConfig.metadata?.name ?? '',
      [ANNOTATION_SANDBOX_NAMESPACE]: sandboxConfig.metadata?.namespace ?? '',
      [ANNOTATION_SANDBOX_UID]: sandboxConfig.metadata?.uid ?? '',
      [ANNOTATION_CONTAINER_NAME]: config.metadata.name,
      [ANNOTATION_IMAGE_NAME]: config.image?.userSpecifiedImage || config.image?.image || '',
    }),
  );
  return spec;
}

function baseSpec(input: SpecInput): OciSpec {
  if (input.image.lowerDirs.length === 0) throw invalidArgument('the image has no layers to use as the container rootfs');
  return {
    ociVersion: OCI_VERSION,
    process: {
      terminal: false,
      user: { uid: 0, gid: 0, additionalGids: [] },
      args: [],
      env: [],
      cwd: '/',
      capabilities: { bounding: [], effective: [], inheritable: [], permitted: [], ambient: [] },
      rlimits: [],
      noNewPrivileges: false,
    },
    root: { path: 'rootfs', readonly: false },
    mounts: [],
    linux: {
      namespaces: [],
      devices: [],
      // Deny every device; the ones every container may use, and those it gets, are allowed after
      // this rule. The monitor writes them to the container's cgroup before the process exists.
      resources: { devices: [{ allow: false, access: 'rwm' }, ...DEFAULT_DEVICE_RULES.map((r) => ({ ...r }))] },
      maskedPaths: [],
      readonlyPaths: [],
    },
    annotations: {},
    crispRootfs: { lowerDirs: [...input.image.lowerDirs], upperDir: input.rootfs.upperDir, workDir: input.rootfs.workDir },
    crispCgroup: { version: input.cgroup.version, paths: { ...input.cgroup.paths } },
  };
}

function resolveWorkingDir(configDir: string, imageDir: string | undefined): string {
  if (configDir) {
    if (!path.posix.isAbsolute(configDir)) throw invalidArgument(`working_dir "${configDir}" is not an absolute path`);
    return cleanPath(configDir);
  }
  // Image builders store WORKDIR resolved; a relative one is taken relative to /.
  if (imageDir) return cleanPath(path.posix.join('/', imageDir));
  return '/';
}

function applyNamespaces(spec: OciSpec, input: SpecInput, privileged: boolean): void {
  const { namespaces, nsPaths } = input.sandbox;
  // Entries with a path join the pod's namespace; types left out are inherited from the pod's
  // monitor, which is the pod's namespace (or the host's, for node mode).
  applyOpts(spec, withNamespace({ type: 'mount' }));
  if (namespaces.network === 'pod' && nsPaths.net) applyOpts(spec, withNamespace({ type: 'network', path: nsPaths.net }));
  if (namespaces.ipc === 'pod' && nsPaths.ipc) applyOpts(spec, withNamespace({ type: 'ipc', path: nsPaths.ipc }));
  if (namespaces.uts === 'pod' && nsPaths.uts) applyOpts(spec, withNamespace({ type: 'uts', path: nsPaths.uts }));
  if (namespaces.userns) {
    if (!nsPaths.user) throw invalidArgument(`pod ${input.sandbox.id} has no pinned user namespace`);
    applyOpts(spec, withNamespace({ type: 'user', path: nsPaths.user }));
    const oci = (list: IdMapping[]) => list.map((m) => ({ containerID: m.containerId, hostID: m.hostId, size: m.size }));
    spec.linux.uidMappings = oci(namespaces.userns.uidMappings);
    spec.linux.gidMappings = oci(namespaces.userns.gidMappings);
  }

  const containerPidMode = input.config.linux?.securityContext?.namespaceOptions?.pid;
  if (containerPidMode === NamespaceMode.TARGET) {
    if (!input.targetPidNamespace) throw invalidArgument('PID namespace mode TARGET needs the target container to be running');
    applyOpts(spec, withNamespace({ type: 'pid', path: input.targetPidNamespace }));
  } else if (namespaces.pid === 'container') {
    applyOpts(spec, withNamespace({ type: 'pid' }));
  } else if (namespaces.pid === 'pod' && nsPaths.pid) {
    applyOpts(spec, withNamespace({ type: 'pid', path: nsPaths.pid }));
  }
  // A private cgroup namespace hides the host hierarchy; like containerd, only on cgroup v2
  // (v1 tools expect the host layout) and not for privileged containers (which manage cgroups).
  if (input.cgroup.version === 2 && !privileged) applyOpts(spec, withNamespace({ type: 'cgroup' }));
}

/** Mounts every container gets, in mount order; CRI mounts for the same destination replace them. */
function defaultMounts(): OciMount[] {
  return [
    { destination: '/proc', type: 'proc', source: 'proc', options: ['nosuid', 'noexec', 'nodev'] },
    { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
    { destination: '/dev/pts', type: 'devpts', source: 'devpts', options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620', 'gid=5'] },
    { destination: '/dev/shm', type: 'tmpfs', source: 'shm', options: ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=65536k'] },
    { destination: '/dev/mqueue', type: 'mqueue', source: 'mqueue', options: ['nosuid', 'noexec', 'nodev'] },
    { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] },
    { destination: '/sys/fs/cgroup', type: 'cgroup', source: 'cgroup', options: ['nosuid', 'noexec', 'nodev', 'relatime', 'ro'] },
  ];
}

const cleanPath = (p: string): string => {
  const n = path.posix.normalize(p);
  return n.length > 1 && n.endsWith('/') ? n.slice(0, -1) : n;
};

const depth = (p: string): number => (cleanPath(p).match(/\//g) ?? []).length;

/** A bind mount request: a CRI mount, or one the runtime adds (pod files, /dev/shm, image volumes). */
interface BindRequest {
  containerPath: string;
  hostPath: string;
  readonly: boolean;
  propagation: MountPropagation;
  /**
   * A file or directory the runtime made itself for a ready pod (its hostname, hosts, resolv.conf
   * and /dev/shm): used as it is, without the existence check and symlink resolution a kubelet
   * host path needs.
   */
  runtimeOwned?: boolean;
  /** An image volume: mounted read-only from the image's layers instead of a host path. */
  image?: ImageVolumeSource;
  /** Every mount under the source read-only too (OCI `rro`), not only the bind mount itself. */
  recursiveReadOnly?: boolean;
  /** Mapped through the pod's user namespace (OCI `idmap`). */
  idmap?: boolean;
}

function validateCriMount(m: Mount, userns: PodUserns | undefined): void {
  if (!m.containerPath || !path.posix.isAbsolute(m.containerPath)) throw invalidArgument(`mount container_path "${m.containerPath}" is not an absolute path`);
  if (m.image?.image) {
    if (m.hostPath) throw invalidArgument(`mount for "${m.containerPath}" sets both host_path and image`);
    if (m.propagation === MountPropagation.PROPAGATION_BIDIRECTIONAL) throw invalidArgument(`image volume at "${m.containerPath}" cannot have bidirectional propagation`);
  } else if (!m.hostPath) {
    throw invalidArgument(`mount for "${m.containerPath}" has an empty host_path`);
  }
  if (m.uidMappings.length > 0 || m.gidMappings.length > 0) {
    // Mapped through the pod's user namespace: only its own mappings can be honoured.
    const same = (a: { hostId: number; containerId: number; length: number }[], b: IdMapping[] | undefined) =>
      b !== undefined && a.length === b.length && a.every((x, i) => x.hostId === b[i]!.hostId && x.containerId === b[i]!.containerId && x.length === b[i]!.size);
    if (!userns || !same(m.uidMappings, userns.uidMappings) || !same(m.gidMappings, userns.gidMappings)) {
      throw invalidArgument(`mount for "${m.containerPath}" has ID mappings other than the pod user namespace's`);
    }
  }
  if (m.recursiveReadOnly) {
    // kubelet sends it only with readonly and private propagation; anything else is contradictory.
    if (!m.readonly) throw invalidArgument(`recursive read-only mount conflicts with a read-write mount (host_path "${m.hostPath}")`);
    if (m.propagation !== MountPropagation.PROPAGATION_PRIVATE) {
      throw invalidArgument(`recursive read-only mount of "${m.hostPath}" needs private propagation`);
    }
  }
}

/**
 * Mounts the runtime adds unless a CRI mount already provides the destination. The pod's files
 * exist once the pod is ready (RunPodSandbox writes them, and mounts the pod's /dev/shm, before it
 * answers).
 */
function runtimeMounts(input: SpecInput): BindRequest[] {
  const readonlyRootfs = input.config.linux?.securityContext?.readonlyRootfs ?? false;
  const dir = input.sandbox.dir;
  const out: BindRequest[] = [];
  const podFiles: [string, string][] = [
    ['/etc/hostname', path.join(dir, 'hostname')],
    ['/etc/hosts', path.join(dir, 'hosts')],
    ['/etc/resolv.conf', path.join(dir, 'resolv.conf')],
  ];
  for (const [containerPath, hostPath] of podFiles) {
    out.push({ containerPath, hostPath, readonly: readonlyRootfs, propagation: MountPropagation.PROPAGATION_PRIVATE, runtimeOwned: true });
  }
  const shm = input.sandbox.namespaces.ipc === 'node' ? '/dev/shm' : path.join(dir, 'shm');
  out.push({ containerPath: '/dev/shm', hostPath: shm, readonly: false, propagation: MountPropagation.PROPAGATION_PRIVATE, runtimeOwned: true });

  // Image VOLUMEs become empty directories next to the container's writable layer.
  const volumesDir = path.join(path.dirname(input.rootfs.upperDir), 'volumes');
  for (const dst of Object.keys(input.image.config.config?.Volumes ?? {}).sort()) {
    const containerPath = cleanPath(path.posix.join('/', dst));
    // The runtime's /dev, /proc and /sys are not the image's to replace: a volume there would
    // remove the /dev tmpfs with its device nodes, or cover kernel files.
    if (isUnderKernelFilesystem(containerPath)) continue;
    const id = crypto.createHash('sha256').update(containerPath).digest('hex').slice(0, 32);
    out.push({ containerPath, hostPath: path.join(volumesDir, id), readonly: false, propagation: MountPropagation.PROPAGATION_PRIVATE });
  }
  return out;
}

const KERNEL_FILESYSTEMS = ['/dev', '/proc', '/sys'];

function isUnderKernelFilesystem(p: string): boolean {
  return KERNEL_FILESYSTEMS.some((dir) => p === dir || p.startsWith(`${dir}/`));
}

async function applyMounts(spec: OciSpec, input: SpecInput, host: SpecHost): Promise<void> {
  const criMounts = input.config.mounts;
  for (const m of criMounts) validateCriMount(m, input.sandbox.namespaces.userns);
  const requests: BindRequest[] = criMounts.map((m) => {
    if (!m.image?.image) {
      const idmap = m.uidMappings.length > 0 || m.gidMappings.length > 0;
      return { containerPath: m.containerPath, hostPath: m.hostPath, readonly: m.readonly, propagation: m.propagation, recursiveReadOnly: m.recursiveReadOnly, idmap };
    }
    const image = input.imageVolumes?.get(imageVolumeKey(m));
    if (!image) throw internal(`image volume "${m.image.image}" at "${m.containerPath}" was not resolved`);
    // Image volumes are read-only whatever the request says (kubelet always asks for that).
    const idmap = Boolean(input.sandbox.namespaces.userns);
    return { containerPath: m.containerPath, hostPath: '', readonly: true, propagation: MountPropagation.PROPAGATION_PRIVATE, image, idmap };
  });
  const criDestinations = new Set(requests.map((r) => cleanPath(r.containerPath)));
  for (const extra of runtimeMounts(input)) {
    if (!criDestinations.has(cleanPath(extra.containerPath))) requests.push(extra);
  }
  // Shallow destinations first so a deeper mount is not hidden by one mounted over its parent.
  const ordered = requests.map((r, i) => ({ r, i })).sort((a, b) => depth(a.r.containerPath) - depth(b.r.containerPath) || a.i - b.i).map((x) => x.r);

  const supplied = new Set(ordered.map((r) => cleanPath(r.containerPath)));
  const suppliesDev = supplied.has('/dev');
  spec.mounts = defaultMounts().filter((m) => !supplied.has(m.destination) && !(suppliesDev && m.destination.startsWith('/dev/')));

  // Each source is checked, created if missing, and resolved on its own; all of them at once,
  // since every step is a trip to the threadpool. Errors are reported in mount order.
  const sources = await Promise.allSettled(ordered.map((r) => resolveMountSource(r, host)));
  for (const [i, r] of ordered.entries()) {
    const resolved = sources[i]!;
    if (resolved.status === 'rejected') throw resolved.reason;
    const source = resolved.value;
    if (r.image?.kind === 'dir') {
      const mount = imageVolumeMount(r.containerPath, r.image.layers, input.emptyLowerDir);
      // In a pod user namespace its layers are mapped like the root filesystem's.
      if (input.sandbox.namespaces.userns) mount.options.push('idmap');
      spec.mounts.push(mount);
      continue;
    }
    const options = ['rbind'];
    switch (r.propagation) {
      case MountPropagation.PROPAGATION_BIDIRECTIONAL:
        if ((await host.mountPropagation(source)) !== 'shared') {
          throw invalidArgument(`path "${source}" is mounted with bidirectional propagation but its host mount is not shared`);
        }
        options.push('rshared');
        applyOpts(spec, withRootfsPropagation('rshared'));
        break;
      case MountPropagation.PROPAGATION_HOST_TO_CONTAINER:
        if ((await host.mountPropagation(source)) === 'private') {
          throw invalidArgument(`path "${source}" is mounted with host-to-container propagation but its host mount is neither shared nor slave`);
        }
        options.push('rslave');
        applyOpts(spec, withRootfsPropagation('rslave'));
        break;
      default:
        options.push('rprivate');
    }
    options.push(r.readonly ? 'ro' : 'rw');
    if (r.recursiveReadOnly) options.push('rro');
    if (r.idmap) options.push('idmap');
    if (r.image) options.push('nosuid', 'nodev');
    spec.mounts.push({ destination: r.containerPath, type: 'bind', source, options });
  }
}

/**
 * A read-only overlay of the layer directories that make up an image volume's directory. With a
 * single layer the empty directory is stacked under it: overlayfs needs two lower layers without
 * an upper one, and a bind mount would show the layer's whiteout devices.
 */
function imageVolumeMount(destination: string, layers: string[], emptyLowerDir: string | undefined): OciMount {
  const lower = layers.length > 1 ? layers : [...layers, emptyLowerDir ?? ''];
  for (const dir of lower) {
    if (!dir || dir.includes(':') || dir.includes(',')) throw internal(`image volume at "${destination}": layer directory "${dir}" cannot be named in overlay options`);
  }
  const options = ['ro', 'nodev', 'nosuid', `lowerdir=${lower.join(':')}`];
  if (options.join(',').length > MAX_OVERLAY_OPTIONS) {
    throw invalidArgument(`image volume at "${destination}" stacks ${layers.length} layers: too many for one overlay mount`);
  }
  return { destination, type: 'overlay', source: 'overlay', options };
}

/**
 * Like containerd: a missing host path is created as a directory (kubelet relies on this for
 * some volume types), and symlinks are resolved so the mount targets the real path.
 */
async function resolveMountSource(r: BindRequest, host: SpecHost): Promise<string> {
  if (r.runtimeOwned) return r.hostPath;
  // A file of an image volume: located in its layer by the native lookup, links excluded.
  if (r.image) return r.image.kind === 'file' ? r.image.path : '';
  if (!(await host.exists(r.hostPath))) {
    try {
      await host.mkdirAll(r.hostPath);
    } catch (err) {
      throw invalidArgument(`failed to create host path "${r.hostPath}" for mount "${r.containerPath}": ${errorMessage(err)}`);
    }
  }
  try {
    return await host.realpath(r.hostPath);
  } catch (err) {
    throw invalidArgument(`failed to resolve host path "${r.hostPath}": ${errorMessage(err)}`);
  }
}

/** Devices directories that hold no device nodes a container should get. */
const SKIPPED_DEVICE_DIRS = new Set(['pts', 'shm', 'fd', 'mqueue', '.lxc', '.lxd-mounts', '.udev']);

/** Every device node under `hostDir`, mapped to the same relative path under `containerDir`. */
async function devicesUnder(hostDir: string, containerDir: string, host: SpecHost): Promise<{ containerPath: string; device: HostDevice }[]> {
  const out: { containerPath: string; device: HostDevice }[] = [];
  let entries: string[];
  try {
    entries = await host.readDir(hostDir);
  } catch {
    return out;
  }
  for (const name of entries.sort()) {
    const hostPath = path.join(hostDir, name);
    const containerPath = path.posix.join(containerDir, name);
    if (await host.isDirectory(hostPath)) {
      if (!SKIPPED_DEVICE_DIRS.has(name)) out.push(...(await devicesUnder(hostPath, containerPath, host)));
      continue;
    }
    // The console belongs to the runtime, which sets it up for tty containers.
    if (name === 'console') continue;
    const device = await host.statDevice(hostPath);
    if (device) out.push({ containerPath, device });
  }
  return out;
}

function ociDevice(containerPath: string, d: HostDevice): OciDevice {
  return { path: containerPath, type: d.type, major: d.major, minor: d.minor, fileMode: d.fileMode, uid: d.uid, gid: d.gid };
}

function deviceRule(d: HostDevice, access: string): OciDeviceCgroup {
  return { allow: true, type: d.type === 'b' ? 'b' : 'c', major: d.major, minor: d.minor, access };
}

/**
 * CDI edits, after the container's own settings: environment (replacing same-named variables),
 * device nodes (type and numbers from the host node when the spec leaves them out) with their
 * cgroup rules, mounts, and supplementary groups.
 */
async function applyCdiEdits(spec: OciSpec, edits: CdiEdits, privileged: boolean, host: SpecHost): Promise<void> {
  applyOpts(spec, withEnv(edits.env));
  for (const node of edits.deviceNodes) {
    const hostPath = node.hostPath || node.path;
    let device: HostDevice | undefined;
    if (node.type === undefined || node.major === undefined || (node.minor === undefined && node.type !== 'p')) {
      let resolved: string;
      try {
        resolved = await host.realpath(hostPath);
      } catch (err) {
        throw invalidArgument(`CDI device node "${hostPath}" not found: ${errorMessage(err)}`);
      }
      device = await host.statDevice(resolved);
      if (!device) throw invalidArgument(`CDI device node "${hostPath}" is not a device`);
    }
    const type = node.type === undefined ? device!.type : cdiDeviceType(node.type, node.path);
    const full: HostDevice = {
      type,
      major: node.major ?? device!.major,
      minor: node.minor ?? device?.minor ?? 0,
      fileMode: node.fileMode ?? device?.fileMode ?? 0o666,
      uid: node.uid ?? 0,
      gid: node.gid ?? 0,
    };
    applyOpts(spec, withDevices([ociDevice(node.path, full)], privileged || type === 'p' ? [] : [deviceRule(full, node.permissions || 'rwm')]));
  }
  for (const m of edits.mounts) {
    const type = m.type || 'bind';
    const options = m.options ?? [];
    const bind = type === 'bind' || options.includes('bind') || options.includes('rbind');
    spec.mounts.push({ destination: m.containerPath, type, source: m.hostPath, options: bind && !options.includes('bind') && !options.includes('rbind') ? ['rbind', ...options] : options });
  }
  for (const kind of CDI_HOOK_KINDS) {
    const hooks = edits.hooks[kind];
    if (hooks?.length) (spec.hooks ??= {})[kind] = [...(spec.hooks?.[kind] ?? []), ...hooks.map((h) => ({ ...h }))];
  }
  if (edits.additionalGids.length > 0) {
    const user = spec.process.user;
    user.additionalGids = [...new Set([...(user.additionalGids ?? []), ...edits.additionalGids])];
  }
}

/**
 * What every container may do with devices, as runc allows it: create any node (using one is a
 * separate right), and use the standard nodes, terminals included.
 */
const DEFAULT_DEVICE_RULES: readonly OciDeviceCgroup[] = [
  { allow: true, type: 'c', access: 'm' },
  { allow: true, type: 'b', access: 'm' },
  { allow: true, type: 'c', major: 1, minor: 3, access: 'rwm' }, // null
  { allow: true, type: 'c', major: 1, minor: 5, access: 'rwm' }, // zero
  { allow: true, type: 'c', major: 1, minor: 7, access: 'rwm' }, // full
  { allow: true, type: 'c', major: 1, minor: 8, access: 'rwm' }, // random
  { allow: true, type: 'c', major: 1, minor: 9, access: 'rwm' }, // urandom
  { allow: true, type: 'c', major: 5, minor: 0, access: 'rwm' }, // tty
  { allow: true, type: 'c', major: 5, minor: 1, access: 'rwm' }, // console
  { allow: true, type: 'c', major: 5, minor: 2, access: 'rwm' }, // ptmx
  { allow: true, type: 'c', major: 136, access: 'rwm' }, // pts/*
];

/** CDI device types as the OCI spec names them ("c", "b", "p"; "u" is a character device). */
function cdiDeviceType(type: string, containerPath: string): HostDevice['type'] {
  if (type === 'c' || type === 'u') return 'c';
  if (type === 'b' || type === 'p') return type;
  throw invalidArgument(`CDI device node "${containerPath}" has unknown type "${type}"`);
}

async function applyDevices(spec: OciSpec, config: ContainerConfig, privileged: boolean, host: SpecHost): Promise<void> {
  if (privileged) {
    // Privileged containers see every host device and may use any device.
    const all = await devicesUnder('/dev', '/dev', host);
    applyOpts(spec, withDevices(all.map((d) => ociDevice(d.containerPath, d.device)), []));
    spec.linux.resources.devices = [{ allow: true, access: 'rwm' }];
  }
  for (const dev of config.devices) {
    if (!dev.hostPath) throw invalidArgument(`device for "${dev.containerPath}" has an empty host_path`);
    const containerPath = dev.containerPath || dev.hostPath;
    if (!path.posix.isAbsolute(containerPath)) throw invalidArgument(`device container_path "${containerPath}" is not an absolute path`);
    const access = dev.permissions || 'rwm';
    if (!/^[rwm]{1,3}$/.test(access) || new Set(access).size !== access.length) {
      throw invalidArgument(`device "${dev.hostPath}" has invalid permissions "${dev.permissions}" (any of r, w, m)`);
    }
    let resolved: string;
    try {
      resolved = await host.realpath(dev.hostPath);
    } catch (err) {
      throw invalidArgument(`device "${dev.hostPath}" not found: ${errorMessage(err)}`);
    }
    let found: { containerPath: string; device: HostDevice }[];
    if (await host.isDirectory(resolved)) {
      found = await devicesUnder(resolved, containerPath, host);
    } else {
      const device = await host.statDevice(resolved);
      if (!device) throw invalidArgument(`"${dev.hostPath}" is not a device node`);
      found = [{ containerPath, device }];
    }
    applyOpts(
      spec,
      withDevices(
        found.map((d) => ociDevice(d.containerPath, d.device)),
        privileged ? [] : found.filter((d) => d.device.type !== 'p').map((d) => deviceRule(d.device, access)),
      ),
    );
  }
}

async function resolveSeccomp(spec: OciSpec, input: SpecInput, privileged: boolean, host: SpecHost): Promise<LinuxSeccomp | undefined> {
  const security = input.config.linux?.securityContext;
  const choice = selectSeccompProfile(security?.seccomp, security?.seccompProfilePath ?? '', input.seccompProfileRoot);
  // Privileged containers run unconfined whatever was asked.
  if (privileged) return undefined;
  switch (choice.kind) {
    case 'unconfined':
      return undefined;
    case 'runtime-default':
      return defaultSeccompProfile(spec.process.capabilities.bounding);
    case 'localhost':
      return loadSeccompProfile(choice.path, (p) => host.readFile(p));
  }
}

/**
 * The AppArmor profile, as containerd's CRI plugin chooses it. On a host that enforces AppArmor:
 * RuntimeDefault, or no request at all (kubernetes#51746), is crisp's default profile (loaded on
 * first use), except for privileged containers; Unconfined is none; a Localhost profile must be
 * loaded, and applies to privileged containers too. On a host without AppArmor there is nothing
 * to enforce a default or unconfined request with, and kubelet sends RuntimeDefault for ordinary
 * pods, so they run as they are; but an explicit Localhost profile is a policy the operator
 * expects enforced, and the container is refused rather than run without it.
 */
async function applyAppArmor(spec: OciSpec, field: SecurityProfile | undefined, deprecated: string, privileged: boolean, host: SpecHost): Promise<void> {
  let type: SecurityProfile_ProfileType | undefined;
  let name = '';
  if (field) {
    type = field.profileType;
    name = field.localhostRef;
  } else if (deprecated === 'runtime/default') {
    type = SecurityProfile_ProfileType.RuntimeDefault;
  } else if (deprecated === 'unconfined') {
    type = SecurityProfile_ProfileType.Unconfined;
  } else if (deprecated.startsWith('localhost/')) {
    type = SecurityProfile_ProfileType.Localhost;
    name = deprecated;
  } else if (deprecated) {
    throw invalidArgument(`unsupported AppArmor profile "${deprecated}"`);
  }
  if (type === SecurityProfile_ProfileType.Localhost) {
    name = name.startsWith('localhost/') ? name.slice('localhost/'.length) : name;
    if (!name) throw invalidArgument('AppArmor profile type Localhost needs a localhost_ref');
    if (!(await host.apparmorEnabled())) {
      throw failedPrecondition(`AppArmor profile "${name}" was requested, but this host does not enforce AppArmor; refusing to run the container unconfined`);
    }
    if (!(await host.apparmorProfileLoaded(name))) throw failedPrecondition(`AppArmor profile "${name}" is not loaded`);
    spec.process.apparmorProfile = name;
    return;
  }
  if (type === SecurityProfile_ProfileType.Unconfined || privileged || !(await host.apparmorEnabled())) return;
  const withAbstractions = (await host.exists('/etc/apparmor.d/tunables/global')) && (await host.exists('/etc/apparmor.d/abstractions/base'));
  try {
    await host.loadAppArmorProfile(defaultAppArmorProfile({ withAbstractions }));
  } catch (err) {
    throw failedPrecondition(`cannot load the default AppArmor profile "${DEFAULT_APPARMOR_PROFILE}": ${errorMessage(err)}`);
  }
  spec.process.apparmorProfile = DEFAULT_APPARMOR_PROFILE;
}

const SELINUX_NAME = /^[A-Za-z0-9_.]+$/;
const SELINUX_LEVEL = /^[A-Za-z0-9_.:,-]+$/;

/**
 * SELinux labels, on a host with SELinux enabled, from the container's selinux_options over the
 * pod's (each field the container leaves empty comes from the pod), completed with the usual
 * container type (container_t, files container_file_t) and level s0. Without options there is
 * no label: crisp allocates no per-pod MCS categories. On a host without SELinux the options
 * are ignored, as containerd and CRI-O do: pod specs carry them for the nodes that enforce them,
 * and there is no SELinux policy here that a label could be part of.
 */
async function applySelinux(spec: OciSpec, container: SELinuxOption | undefined, pod: SELinuxOption | undefined, privileged: boolean, host: SpecHost): Promise<void> {
  const pick = (k: keyof SELinuxOption): string => container?.[k] || pod?.[k] || '';
  const options = { user: pick('user'), role: pick('role'), type: pick('type'), level: pick('level') };
  if (!options.user && !options.role && !options.type && !options.level) return;
  // A privileged container keeps the runtime's label unless it names one itself.
  if (privileged && !container?.type && !container?.level) return;
  if (!(await host.selinuxEnabled())) return;
  for (const k of ['user', 'role', 'type'] as const) {
    if (options[k] && !SELINUX_NAME.test(options[k])) throw invalidArgument(`SELinux ${k} "${options[k]}" is not a valid SELinux name`);
  }
  if (options.level && !SELINUX_LEVEL.test(options.level)) throw invalidArgument(`SELinux level "${options.level}" is not a valid MLS/MCS level`);
  const user = options.user || 'system_u';
  const level = options.level || 's0';
  spec.process.selinuxLabel = `${user}:${options.role || 'system_r'}:${options.type || 'container_t'}:${level}`;
  spec.linux.mountLabel = `${user}:object_r:container_file_t:${level}`;
}

async function applyResources(out: OciResources, r: LinuxContainerResources, cgroupVersion: 1 | 2, host: SpecHost): Promise<void> {
  const cpu: NonNullable<OciResources['cpu']> = {};
  if (r.cpuShares !== 0n) cpu.shares = Number(r.cpuShares);
  if (r.cpuQuota !== 0n) cpu.quota = Number(r.cpuQuota);
  if (r.cpuPeriod !== 0n) cpu.period = Number(r.cpuPeriod);
  if (r.cpusetCpus) cpu.cpus = r.cpusetCpus;
  if (r.cpusetMems) cpu.mems = r.cpusetMems;
  if (Object.keys(cpu).length > 0) out.cpu = cpu;

  const memory: NonNullable<OciResources['memory']> = {};
  if (r.memoryLimitInBytes !== 0n) memory.limit = Number(r.memoryLimitInBytes);
  if (r.memoryLimitInBytes !== 0n || r.memorySwapLimitInBytes !== 0n) {
    // Without an explicit swap limit, swap is capped at the memory limit so the container
    // cannot use swap at all (memory+swap == memory on v1).
    if (await host.swapControllerAvailable(cgroupVersion)) {
      memory.swap = Number(r.memorySwapLimitInBytes !== 0n ? r.memorySwapLimitInBytes : r.memoryLimitInBytes);
    }
  }
  if (Object.keys(memory).length > 0) out.memory = memory;

  if (r.hugepageLimits.length > 0) out.hugepageLimits = r.hugepageLimits.map((h) => ({ pageSize: h.pageSize, limit: Number(h.limit) }));
  if (Object.keys(r.unified).length > 0) out.unified = { ...r.unified };
}

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
