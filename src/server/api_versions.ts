import type { CriApiVersion } from '../config/config';
import { CrispError } from '../util/errors';
import type { RpcTable } from './instrument';

/**
 * The table, answering only calls made through `versions` (`[grpc] api_versions`). A call through
 * another version fails with UNIMPLEMENTED, the code an unknown service answers: clients that try
 * runtime.v1 first and fall back on UNIMPLEMENTED (crictl 1.26, kubelet 1.23–1.25) then use
 * runtime.v1alpha2. Serving both returns the table itself, so the usual case costs nothing per call.
 */
export function servedApiVersions(table: RpcTable, versions: readonly CriApiVersion[]): RpcTable {
  if (versions.includes('v1') && versions.includes('v1alpha2')) return table;
  const served = versions.map((v) => `runtime.${v}`).join(', ');
  const out: RpcTable = {};
  for (const [name, run] of Object.entries(table)) {
    if (!run) continue;
    out[name] = (request, ctx, send) =>
      versions.includes(ctx.apiVersion)
        ? run(request, ctx, send)
        : Promise.reject(new CrispError('Unimplemented', `runtime.${ctx.apiVersion} is not served: crisp is configured to serve ${served} only ([grpc] api_versions)`));
  }
  return out;
}
