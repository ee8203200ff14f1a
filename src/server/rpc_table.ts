import type { RpcTable } from './instrument';
import { runtimeConfig, updateRuntimeConfig } from './runtime_config';
import { status } from './runtime_status';
import { version } from './runtime_version';
import type { CriService } from './service';

/**
 * Every implemented RPC by its CRI name. RPCs of both services share one table: the names do not
 * overlap. Anything absent answers UNIMPLEMENTED.
 */
export function buildRpcTable(svc: CriService): RpcTable {
  const bind =
    <Req, Res>(fn: (svc: CriService, req: Req, ctx: Parameters<NonNullable<RpcTable[string]>>[1]) => Promise<Res>) =>
    (req: Req, ctx: Parameters<NonNullable<RpcTable[string]>>[1]) =>
      fn(svc, req, ctx);
  return {
    Version: bind(version),
    Status: bind(status),
    RuntimeConfig: bind(runtimeConfig),
    UpdateRuntimeConfig: bind(updateRuntimeConfig),
  };
}
