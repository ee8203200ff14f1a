import type { Config, RegistryAuth } from '../config/config';
import type { StatusRequest, StatusResponse } from '../generated/runtime/v1/api';
import type { CallContext } from './instrument';
import type { CriService } from './service';

export async function status(svc: CriService, req: StatusRequest, _ctx: CallContext): Promise<StatusResponse> {
  const conditions = [
    { type: 'RuntimeReady', status: true, reason: '', message: '' },
    ...(await svc.conditions()),
  ];
  const info: Record<string, string> = {};
  if (req.verbose) {
    // crictl info prints each value as JSON, as containerd and CRI-O fill this map.
    info.config = JSON.stringify(statusConfig(svc.config));
    info.runtime = JSON.stringify({
      name: 'crisp',
      version: svc.version,
      pid: process.pid,
      uptimeSeconds: Math.round((Date.now() - svc.startedAt) / 1000),
      podCidr: svc.podCidr,
    });
    for (const [key, value] of Object.entries(svc.statusInfo())) info[key] = JSON.stringify(value);
  }
  return {
    status: { conditions },
    info,
    // As containerd does, the default handler is listed under its name and under the empty name
    // kubelet uses for pods without a RuntimeClass.
    runtimeHandlers: ['', ...svc.runtimeHandlers()].map((name) => ({ name, features: svc.handlerFeatures() })),
    features: svc.runtimeFeatures(),
  };
}

/**
 * The configuration as verbose Status reports it: crisp's own keys, plus those tools read from
 * containerd's (`crictl info | jq .config…`, kubeadm's sandbox image check) under containerd's
 * names. crisp runs pods without a pause image, so `sandboxImage` is present and empty: it names
 * no image (kubeadm then has nothing to compare with the pause image it would use).
 */
export function statusConfig(config: Config): Record<string, unknown> {
  return {
    ...config,
    // `crictl info` output ends up in bug reports: which hosts have credentials, not what they are.
    registry: { ...config.registry, auths: Object.fromEntries(Object.entries(config.registry.auths).map(([host, auth]) => [host, redacted(auth)])) },
    sandboxImage: '',
    rootDir: config.root,
    stateDir: config.state,
    // containerd 1.x and 2.0 name one plugin directory `binDir`; 2.1 added the `binDirs` list.
    cni: { ...config.cni, binDir: config.cni.binDirs[0] ?? '', maxConfNum: 1 },
    enableCDI: true,
    cdiSpecDirs: config.cdi.specDirs,
  };
}

function redacted(auth: RegistryAuth): RegistryAuth {
  return Object.fromEntries(Object.entries(auth).map(([key, value]) => [key, key === 'username' ? value : '<redacted>']));
}
