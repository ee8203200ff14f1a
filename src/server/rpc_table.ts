import { imageFsInfo } from './image_fs_info';
import { listImages, streamImages } from './image_list';
import { pullImage } from './image_pull';
import { removeImage } from './image_remove';
import { imageStatus } from './image_status';
import { createContainer } from './container_create';
import { execSync } from './container_exec_sync';
import { attach, exec, portForward } from './container_streaming';
import { listContainers, streamContainers } from './container_list';
import { removeContainer } from './container_remove';
import { reopenContainerLog } from './container_reopen_log';
import { startContainer } from './container_start';
import { containerStats, listContainerStats, streamContainerStats } from './container_stats';
import { containerStatus } from './container_status';
import { stopContainer } from './container_stop';
import { updateContainerResources } from './container_update_resources';
import { checkpointContainer } from './container_checkpoint';
import { getContainerEvents } from './container_events';
import type { CallContext, RpcTable } from './instrument';
import { listMetricDescriptors, listPodSandboxMetrics, streamPodSandboxMetrics } from './metric_descriptors';
import { listPodSandbox, streamPodSandboxes } from './sandbox_list';
import { removePodSandbox } from './sandbox_remove';
import { runPodSandbox } from './sandbox_run';
import { listPodSandboxStats, podSandboxStats, streamPodSandboxStats } from './sandbox_stats';
import { podSandboxStatus } from './sandbox_status';
import { stopPodSandbox } from './sandbox_stop';
import { updatePodSandboxResources } from './sandbox_update_resources';
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
    CreateContainer: bind(createContainer),
    StartContainer: bind(startContainer),
    StopContainer: bind(stopContainer),
    RemoveContainer: bind(removeContainer),
    ContainerStatus: bind(containerStatus),
    ListContainers: bind(listContainers),
    StreamContainers: bind(streamContainers),
    UpdateContainerResources: bind(updateContainerResources),
    ReopenContainerLog: bind(reopenContainerLog),
    ExecSync: bind(execSync),
    Exec: bind(exec),
    Attach: bind(attach),
    PortForward: bind(portForward),
    PullImage: bind(pullImage),
    ListImages: bind(listImages),
    StreamImages: bind(streamImages),
    ImageStatus: bind(imageStatus),
    RemoveImage: bind(removeImage),
    ImageFsInfo: bind(imageFsInfo),
    ContainerStats: bind(containerStats),
    ListContainerStats: bind(listContainerStats),
    StreamContainerStats: bind(streamContainerStats),
    PodSandboxStats: bind(podSandboxStats),
    ListPodSandboxStats: bind(listPodSandboxStats),
    StreamPodSandboxStats: bind(streamPodSandboxStats),
    UpdatePodSandboxResources: bind(updatePodSandboxResources),
    GetContainerEvents: bind(getContainerEvents),
    ListMetricDescriptors: bind(listMetricDescriptors),
    ListPodSandboxMetrics: bind(listPodSandboxMetrics),
    StreamPodSandboxMetrics: bind(streamPodSandboxMetrics),
    CheckpointContainer: bind(checkpointContainer),
  };
}
