import type { ContainerFilter, ListContainersRequest, ListContainersResponse, StreamContainersRequest, StreamContainersResponse } from '../generated/runtime/v1/api';
import type { CallContext } from './instrument';
import { toCriContainer } from './container_status';
import { matchesLabels } from './sandbox_list';
import type { CriService } from './service';

const STREAM_CHUNK = 500;

function filtered(svc: CriService, filter: ContainerFilter | undefined) {
  return svc.containers
    .list()
    .filter((c) => c.state !== 'creating')
    .map((c) => toCriContainer(svc, c))
    .filter((c) => !filter?.id || c.id.startsWith(filter.id))
    .filter((c) => !filter?.podSandboxId || c.podSandboxId.startsWith(filter.podSandboxId))
    .filter((c) => !filter?.state || c.state === filter.state.state)
    .filter((c) => !filter?.labelSelector || matchesLabels(c.labels, filter.labelSelector));
}

export async function listContainers(svc: CriService, req: ListContainersRequest, _ctx: CallContext): Promise<ListContainersResponse> {
  return { containers: filtered(svc, req.filter) };
}

export async function streamContainers(
  svc: CriService,
  req: StreamContainersRequest,
  _ctx: CallContext,
  send: (m: StreamContainersResponse) => Promise<void>,
): Promise<void> {
  const items = filtered(svc, req.filter);
  for (let i = 0; i < items.length; i += STREAM_CHUNK) await send({ containers: items.slice(i, i + STREAM_CHUNK) });
}
