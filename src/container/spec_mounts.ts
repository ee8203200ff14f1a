/**
 * Spec options for mounts: the default kernel filesystems, the CRI mounts (host paths and image
 * volumes), and the files and directories the runtime provides (pod files, /dev/shm, image VOLUMEs).
 */
import * as crypto from 'node:crypto';
import * as path from 'node:path';
import { MountPropagation, type Mount } from '../generated/runtime/v1/api';
import type { IdMapping, PodUserns } from '../sandbox/sandbox_spec';
import { errorMessage, internal, invalidArgument } from '../util/errors';
import { cleanPath, type ContainerSpecOpt, type ImageVolumeSource, type SpecHost, type SpecInput } from './spec_context';
import { applyOpts, withRootfsPropagation, withWritableMountType, type OciMount } from './spec_opts';

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

/**
 * The mounts of the container, shallow destinations first: the defaults a CRI mount does not
 * replace, then every CRI and runtime mount with its source checked, created and resolved.
 */
export const containerMounts: ContainerSpecOpt = async (spec, { input, host }) => {
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
};

/** Privileged containers get writable sysfs and cgroupfs. */
export const privilegedWritableMounts: ContainerSpecOpt = (spec, { privileged }) => {
  if (privileged) applyOpts(spec, withWritableMountType('sysfs'), withWritableMountType('cgroup'));
};

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
