/**
 * Translates a CRI CreateContainer request into the OCI runtime spec (config.json) the launcher
 * runs, with the semantics kubelet expects from containerd's CRI plugin. The spec is a base
 * document edited by a list of options, in order, as containerd's `oci.SpecOpts`; each option is
 * one decision and lives with its kind (process, namespaces, mounts, devices, security,
 * resources).
 */
import { NamespaceMode } from '../generated/runtime/v1/api';
import { invalidArgument } from '../util/errors';
import { type ContainerSpecOpt, type SpecContext, type SpecHost, type SpecInput } from './spec_context';
import { cdiDeviceEdits, containerDevices, DEFAULT_DEVICE_RULES } from './spec_devices';
import { nodeSpecHost } from './spec_host';
import { containerMounts, privilegedWritableMounts } from './spec_mounts';
import { podHostname, podNamespaces } from './spec_namespaces';
import { OCI_VERSION, type OciSpec } from './spec_opts';
import { oomScoreAdjFromResources, processFromConfig, userFromImage } from './spec_process';
import { criAnnotations, resourcesFromConfig } from './spec_resources';
import {
  apparmorFromSecurityContext,
  capabilitiesFromSecurityContext,
  procPathMasks,
  seccompFromSecurityContext,
  selinuxFromSecurityContext,
} from './spec_security';

export type { HostDevice, ImageVolumeSource, SandboxInfo, SpecHost, SpecInput } from './spec_context';
export type { OciSpec } from './spec_opts';
export { imageSubPath, imageVolumeKey } from './spec_mounts';

/**
 * The options every container spec is built with, in the order they apply. Order matters where
 * one reads what another wrote: HOME after the environment, the default seccomp profile after the
 * capabilities, CDI edits after the container's own devices and user.
 */
export const CONTAINER_SPEC_OPTS: readonly ContainerSpecOpt[] = [
  processFromConfig,
  oomScoreAdjFromResources,
  userFromImage,
  podNamespaces,
  podHostname,
  containerMounts,
  privilegedWritableMounts,
  containerDevices,
  cdiDeviceEdits,
  capabilitiesFromSecurityContext,
  procPathMasks,
  seccompFromSecurityContext,
  apparmorFromSecurityContext,
  selinuxFromSecurityContext,
  resourcesFromConfig,
  criAnnotations,
];

export async function buildSpec(input: SpecInput): Promise<OciSpec> {
  const ctx = specContext(input);
  const spec = baseSpec(input);
  for (const opt of CONTAINER_SPEC_OPTS) await opt(spec, ctx);
  return spec;
}

/** Checks what no option can fix and derives the facts options share. */
function specContext(input: SpecInput): SpecContext {
  const host: SpecHost = { ...nodeSpecHost, ...input.host };
  const { config, sandboxConfig } = input;
  const security = config.linux?.securityContext;
  const privileged = security?.privileged ?? false;

  if (!config.metadata?.name) throw invalidArgument('container config metadata.name is empty');
  if (privileged && !sandboxConfig.linux?.securityContext?.privileged) {
    throw invalidArgument('no privileged container allowed in a sandbox that is not privileged');
  }
  const wantsUserns = security?.namespaceOptions?.usernsOptions?.mode === NamespaceMode.POD;
  if (wantsUserns !== Boolean(input.sandbox.namespaces.userns)) {
    throw invalidArgument(wantsUserns ? 'the container asks for the pod user namespace, but the pod has none' : 'a container of a pod with a user namespace must use it');
  }
  return {
    input,
    host,
    config,
    sandboxConfig,
    security,
    imageConfig: input.image.config.config ?? {},
    privileged,
    hostname: sandboxConfig.hostname || host.hostname(),
  };
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
