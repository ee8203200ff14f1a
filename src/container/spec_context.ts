/**
 * What every container spec option sees: the request and the pod (`SpecInput`), the host
 * (`SpecHost`, injectable so spec building is testable without root), and the facts derived from
 * them once (`SpecContext`). An option is `(spec, ctx) => void` and edits the spec in place; the
 * ones that need the host reach it only through `ctx.host`.
 */
import * as path from 'node:path';
import type { ContainerConfig, LinuxContainerSecurityContext, PodSandboxConfig } from '../generated/runtime/v1/api';
import type { ImageConfig } from '../image/image_manager';
import type { SandboxNamespaces } from '../sandbox/sandbox_spec';
import type { CdiEdits } from './cdi';
import type { OciDevice, OciSpec } from './spec_opts';

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

export interface SpecContext {
  input: SpecInput;
  host: SpecHost;
  config: ContainerConfig;
  sandboxConfig: PodSandboxConfig;
  security: LinuxContainerSecurityContext | undefined;
  /** The image's runtime config (`config` of the image config document); empty when it has none. */
  imageConfig: NonNullable<ImageConfig['config']>;
  privileged: boolean;
  /** The pod's hostname: the one it asks for, else the node's. */
  hostname: string;
}

/** One decision about the container's spec; `buildSpec` runs a list of them in order. */
export type ContainerSpecOpt = (spec: OciSpec, ctx: SpecContext) => void | Promise<void>;

/** A normalized path without a trailing slash. */
export const cleanPath = (p: string): string => {
  const n = path.posix.normalize(p);
  return n.length > 1 && n.endsWith('/') ? n.slice(0, -1) : n;
};
