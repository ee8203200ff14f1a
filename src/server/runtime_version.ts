import type { VersionRequest, VersionResponse } from '../generated/runtime/v1/api';
import type { CallContext } from './instrument';
import type { CriService } from './service';

/** The kubelet API version this runtime speaks; kubelet checks it against its own. */
const KUBE_API_VERSION = '0.1.0';

export async function version(svc: CriService, _req: VersionRequest, ctx: CallContext): Promise<VersionResponse> {
  return {
    version: KUBE_API_VERSION,
    runtimeName: 'crisp',
    runtimeVersion: svc.version,
    runtimeApiVersion: ctx.apiVersion,
  };
}
