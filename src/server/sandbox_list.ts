import type { ListPodSandboxRequest, ListPodSandboxResponse, PodSandboxFilter, StreamPodSandboxesRequest, StreamPodSandboxesResponse } from '../generated/runtime/v1/api';
import type { CallContext } from './instrument';
import { criSandboxState, toCriPodSandbox } from './sandbox_status';
import type { CriService } from './service';

const STREAM_CHUNK = 500;

export function matchesLabels(labels: Record<string, string>, selector: Record<string, string>): boolean {
  return Object.entries(selector).every(([k, v]) => labels[k] === v);
}

function filtered(svc: CriService, filter: PodSandboxFilter | undefined) {
  return svc.sandboxes
    .list()
    .filter((s) => s.state !== 'creating')
    .filter((s) => !filter?.id || s.id.startsWith(filter.id))
    .filter((s) => !filter?.state || criSandboxState(svc, s) === filter.state.state)
    .filter((s) => !filter?.labelSelector || matchesLabels(s.config.labels, filter.labelSelector))
    .map((s) => toCriPodSandbox(svc, s));
}

export async function listPodSandbox(svc: CriService, req: ListPodSandboxRequest, _ctx: CallContext): Promise<ListPodSandboxResponse> {
  return { items: filtered(svc, req.filter) };
}

export async function streamPodSandboxes(
  svc: CriService,
  req: StreamPodSandboxesRequest,
  _ctx: CallContext,
  send: (m: StreamPodSandboxesResponse) => Promise<void>,
): Promise<void> {
  const items = filtered(svc, req.filter);
  for (let i = 0; i < items.length; i += STREAM_CHUNK) await send({ podSandboxes: items.slice(i, i + STREAM_CHUNK) });
}
