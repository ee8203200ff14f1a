/** Spec options for devices: the device cgroup defaults, the CRI devices, and CDI edits. */
import * as path from 'node:path';
import type { ContainerConfig } from '../generated/runtime/v1/api';
import { errorMessage, invalidArgument } from '../util/errors';
import { CDI_HOOK_KINDS, type CdiEdits } from './cdi';
import type { ContainerSpecOpt, HostDevice, SpecHost } from './spec_context';
import { applyOpts, withDevices, withEnv, type OciDevice, type OciDeviceCgroup, type OciSpec } from './spec_opts';

/** The devices of the request (every host device for a privileged container) and their cgroup rules. */
export const containerDevices: ContainerSpecOpt = (spec, { config, privileged, host }) => applyDevices(spec, config, privileged, host);

/** The edits of the CDI devices the container asked for, after its own settings. */
export const cdiDeviceEdits: ContainerSpecOpt = async (spec, { input, privileged, host }) => {
  if (input.cdi) await applyCdiEdits(spec, input.cdi, privileged, host);
};

export /**
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
