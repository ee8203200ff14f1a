import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  type Container as CriContainer,
  type ContainerStatus,
  type ContainerStatusRequest,
  type ContainerStatusResponse,
} from '../generated/runtime/v1/api';
import type { Container } from '../container/container_store';
import { criContainerState } from '../state/container_state';
import { invalidArgument } from '../util/errors';
import type { CallContext } from './instrument';
import type { CriService } from './service';

/** What kubelet shows as the pod's imageID: the repo digest when known, else the image id. */
function imageRefOf(svc: CriService, c: Container): string {
  return svc.images.images.get(c.record.imageId)?.repoDigests[0] ?? c.record.imageId;
}

export function toCriContainer(svc: CriService, c: Container): CriContainer {
  return {
    id: c.id,
    podSandboxId: c.record.sandboxId,
    metadata: c.config.metadata,
    image: { image: c.record.image, annotations: {}, userSpecifiedImage: c.record.image, runtimeHandler: '', imageRef: '' },
    imageRef: imageRefOf(svc, c),
    state: criContainerState(c.state),
    createdAt: BigInt(c.record.createdAt),
    labels: c.config.labels,
    annotations: c.config.annotations,
    imageId: c.record.imageId,
  };
}

export function toCriContainerStatus(svc: CriService, c: Container): ContainerStatus {
  const r = c.record;
  return {
    ...toCriContainer(svc, c),
    startedAt: BigInt(r.startedAt),
    finishedAt: BigInt(r.finishedAt),
    exitCode: r.exitCode,
    reason: r.reason,
    message: r.message,
    mounts: c.config.mounts,
    logPath: r.logPath,
    resources: c.config.linux?.resources ? { linux: c.config.linux.resources, windows: undefined } : undefined,
    user: r.user
      ? { linux: { uid: BigInt(r.user.uid), gid: BigInt(r.user.gid), supplementalGroups: r.user.additionalGids.map(BigInt) } }
      : undefined,
    stopSignal: c.config.stopSignal,
  };
}

export async function containerStatus(svc: CriService, req: ContainerStatusRequest, _ctx: CallContext): Promise<ContainerStatusResponse> {
  if (!req.containerId) throw invalidArgument('container id is empty');
  const c = svc.containers.resolve(req.containerId);
  await svc.exits.reconcile(c);
  const r = c.record;
  const status = toCriContainerStatus(svc, c);
  const info: Record<string, string> = {};
  if (req.verbose) {
    let runtimeSpec: unknown;
    try {
      runtimeSpec = JSON.parse(fs.readFileSync(path.join(c.bundleDir, 'config.json'), 'utf8'));
    } catch {
      runtimeSpec = undefined;
    }
    // crictl inspect reads these keys, as containerd fills them.
    info.info = JSON.stringify({ sandboxID: r.sandboxId, pid: r.pid, runtimeSpec, stage: r.stage, cgroupPath: r.cgroupPath });
  }
  return { status, info };
}
