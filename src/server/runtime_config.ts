import { CgroupDriver, type RuntimeConfigRequest, type RuntimeConfigResponse, type UpdateRuntimeConfigRequest, type UpdateRuntimeConfigResponse } from '../generated/runtime/v1/api';
import type { CallContext } from './instrument';
import type { CriService } from './service';

export async function runtimeConfig(svc: CriService, _req: RuntimeConfigRequest, _ctx: CallContext): Promise<RuntimeConfigResponse> {
  return {
    linux: { cgroupDriver: svc.config.cgroup.driver === 'systemd' ? CgroupDriver.SYSTEMD : CgroupDriver.CGROUPFS },
  };
}

export async function updateRuntimeConfig(
  svc: CriService,
  req: UpdateRuntimeConfigRequest,
  ctx: CallContext,
): Promise<UpdateRuntimeConfigResponse> {
  const cidr = req.runtimeConfig?.networkConfig?.podCidr ?? '';
  if (cidr !== svc.podCidr) {
    ctx.log.info({ podCidr: cidr }, 'pod CIDR updated');
    svc.podCidr = cidr;
  }
  return {};
}
