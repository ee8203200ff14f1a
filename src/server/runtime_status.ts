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
    info.config = JSON.stringify(svc.config);
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
