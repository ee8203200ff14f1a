import type { ContainerEventResponse, GetEventsRequest } from '../generated/runtime/v1/api';
import type { PodSnapshot } from '../events/container_events';
import type { Sandbox } from '../sandbox/sandbox_store';
import type { CallContext } from './instrument';
import { podSandboxStatus } from './sandbox_status';
import type { CriService } from './service';

/**
 * GetContainerEvents: streams every container and pod sandbox event until the client goes away.
 * A client that stops reading is dropped once its buffer is full: the stream ends with
 * RESOURCE_EXHAUSTED and kubelet's evented PLEG reconnects and relists.
 */
export async function getContainerEvents(
  svc: CriService,
  _req: GetEventsRequest,
  ctx: CallContext,
  send: (m: ContainerEventResponse) => Promise<void>,
): Promise<void> {
  const subscription = svc.events.subscribe();
  const dropped = new Promise<never>((_, reject) => subscription.onEnd((err) => err && reject(err)));
  dropped.catch(() => undefined);
  const onAbort = (): void => subscription.close();
  ctx.signal.addEventListener('abort', onAbort, { once: true });
  ctx.log.debug({ subscribers: svc.events.subscriberCount }, 'event subscriber connected');
  try {
    for (;;) {
      const event = await subscription.next();
      if (event === undefined) return;
      // A send blocked by flow control must not outlive the subscription being dropped.
      await Promise.race([send(event), dropped]);
    }
  } finally {
    ctx.signal.removeEventListener('abort', onAbort);
    subscription.close();
    ctx.log.debug({ subscribers: svc.events.subscriberCount }, 'event subscriber gone');
  }
}

/**
 * What an event carries about its pod: the same status and container statuses PodSandboxStatus
 * reports, read through it so both always agree.
 */
export function podEventSnapshot(svc: CriService): (sandbox: Sandbox) => Promise<PodSnapshot> {
  const ctx: CallContext = {
    id: 'events',
    method: 'GetContainerEvents',
    apiVersion: 'v1',
    log: svc.log.child({ subsystem: 'events' }),
    signal: new AbortController().signal,
  };
  return async (sandbox) => {
    const response = await podSandboxStatus(svc, { podSandboxId: sandbox.id, verbose: false }, ctx);
    return { podSandboxStatus: response.status, containersStatuses: response.containersStatuses };
  };
}
