/** Spec options for confinement: capabilities, /proc masking, seccomp, AppArmor and SELinux. */
import { SecurityProfile_ProfileType, type SecurityProfile, type SELinuxOption } from '../generated/runtime/v1/api';
import { errorMessage, failedPrecondition, invalidArgument } from '../util/errors';
import { DEFAULT_APPARMOR_PROFILE, defaultAppArmorProfile } from './apparmor_profile';
import { capabilitiesUpTo, resolveCapabilities } from './capabilities';
import { resolveProcPaths } from './masked_paths';
import { defaultSeccompProfile, loadSeccompProfile, selectSeccompProfile, type LinuxSeccomp } from './seccomp_profile';
import type { ContainerSpecOpt, SpecHost, SpecInput } from './spec_context';
import { applyOpts, withCapabilities, withMaskedPaths, withReadonlyPaths, withSeccomp, type OciSpec } from './spec_opts';

/** The capability sets the security context asks for, up to what this kernel knows. */
export const capabilitiesFromSecurityContext: ContainerSpecOpt = async (spec, { host, security, privileged }) => {
  const allCaps = capabilitiesUpTo(await host.capLastCap());
  applyOpts(spec, withCapabilities(resolveCapabilities({ capabilities: security?.capabilities, privileged, allCapabilities: allCaps })));
};

/** The masked and read-only /proc and /sys paths. */
export const procPathMasks: ContainerSpecOpt = (spec, { security, privileged }) => {
  const procPaths = resolveProcPaths(security, privileged);
  applyOpts(spec, withMaskedPaths(procPaths.maskedPaths), withReadonlyPaths(procPaths.readonlyPaths));
};

/** The seccomp filter; the default one depends on the bounding set, so this comes after the capabilities. */
export const seccompFromSecurityContext: ContainerSpecOpt = async (spec, { input, privileged, host }) => {
  applyOpts(spec, withSeccomp(await resolveSeccomp(spec, input, privileged, host)));
};

/** See {@link applyAppArmor}. */
export const apparmorFromSecurityContext: ContainerSpecOpt = (spec, { security, privileged, host }) =>
  applyAppArmor(spec, security?.apparmor, security?.apparmorProfile ?? '', privileged, host);

/** See {@link applySelinux}. */
export const selinuxFromSecurityContext: ContainerSpecOpt = (spec, { security, sandboxConfig, privileged, host }) =>
  applySelinux(spec, security?.selinuxOptions, sandboxConfig.linux?.securityContext?.selinuxOptions, privileged, host);

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
