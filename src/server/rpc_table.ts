import { imageFsInfo } from './image_fs_info';
import { listImages, streamImages } from './image_list';
import { pullImage } from './image_pull';
import { removeImage } from './image_remove';
import { imageStatus } from './image_status';
import type { CallContext, RpcTable } from './instrument';
import { listPodSandbox, streamPodSandboxes } from './sandbox_list';
import { removePodSandbox } from './sandbox_remove';
import { runPodSandbox } from './sandbox_run';
import { podSandboxStatus } from './sandbox_status';
import { stopPodSandbox } from './sandbox_stop';
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
    <Req, Res, Msg>(fn: (svc: CriService, req: Req, ctx: CallContext, send: (m: Msg) => Promise<void>) => Promise<Res>) =>
    (req: Req, ctx: CallContext, send: (m: unknown) => Promise<void>) =>
      fn(svc, req, ctx, send);
  return {
    Version: bind(version),
    Status: bind(status),
    RuntimeConfig: bind(runtimeConfig),
    UpdateRuntimeConfig: bind(updateRuntimeConfig),
    RunPodSandbox: bind(runPodSandbox),
    StopPodSandbox: bind(stopPodSandbox),
    RemovePodSandbox: bind(removePodSandbox),
    PodSandboxStatus: bind(podSandboxStatus),
    ListPodSandbox: bind(listPodSandbox),
    StreamPodSandboxes: bind(streamPodSandboxes),
    PullImage: bind(pullImage),
    ListImages: bind(listImages),
    StreamImages: bind(streamImages),
    ImageStatus: bind(imageStatus),
    RemoveImage: bind(removeImage),
    ImageFsInfo: bind(imageFsInfo),
  };
}
