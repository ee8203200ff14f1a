import { type ContainerEventResponse, ContainerEventType, type ContainerStatus, type PodSandboxStatus } from '../generated/runtime/v1/api';
import type { Logger } from '../log';
import type { Sandbox } from '../sandbox/sandbox_store';
import { errorMessage } from '../util/errors';
import { DEFAULT_SUBSCRIBER_CAPACITY, EventBus, type Subscription } from './event_bus';

/** The pod state an event carries: kubelet's evented PLEG updates its pod cache from it. */
export interface PodSnapshot {
  podSandboxStatus?: PodSandboxStatus;
  containersStatuses: ContainerStatus[];
}

export interface ContainerEventsOptions {
  /** Reads the pod's current status; called when the event is published. */
  snapshot: (sandbox: Sandbox) => Promise<PodSnapshot>;
  log: Logger;
  /** Undelivered events a subscriber may accumulate before it is dropped. */
  subscriberCapacity?: number;
  /** Wall clock in nanoseconds since the epoch. */
  nowNs?: () => bigint;
}

/**
 * CRI container events (GetContainerEvents). Each event carries the pod status taken when it was
 * published, so a DELETED event still describes the pod that is going away; delivery keeps
 * publication order even though status reads are asynchronous.
 */
export class ContainerEvents {
  private readonly bus = new EventBus<ContainerEventResponse>();
  private tail: Promise<void> = Promise.resolve();
  private readonly nowNs: () => bigint;

  constructor(private readonly options: ContainerEventsOptions) {
    this.nowNs = options.nowNs ?? (() => BigInt(Date.now()) * 1_000_000n);
  }

  /** A pod sandbox event: kubelet expects the sandbox id as the container id. */
  publishSandbox(sandbox: Sandbox, type: ContainerEventType): void {
    this.publish(sandbox.id, sandbox, type);
  }

  /** A container event, with the status of the pod the container belongs to. */
  publishContainer(containerId: string, sandbox: Sandbox, type: ContainerEventType): void {
    this.publish(containerId, sandbox, type);
  }

  private publish(containerId: string, sandbox: Sandbox, type: ContainerEventType): void {
    // Nobody to tell (kubelet subscribes only with evented PLEG, off by default): an event is for
    // the subscribers present when it happens, so reading the pod's status would be wasted.
    if (this.bus.subscriberCount === 0) return;
    const createdAt = this.nowNs();
    // Started now so the status is read in the state the caller is in, delivered in order below.
    const snapshot = this.options.snapshot(sandbox).catch((err: unknown): PodSnapshot => {
      this.options.log.warn({ sandbox: sandbox.id, err: errorMessage(err) }, 'reading pod status for a container event failed; sending it without');
      return { containersStatuses: [] };
    });
    this.tail = this.tail.then(async () => {
      const { podSandboxStatus, containersStatuses } = await snapshot;
      this.bus.publish({ containerId, containerEventType: type, createdAt, podSandboxStatus, containersStatuses });
      this.options.log.debug({ container: containerId.slice(0, 12), type: ContainerEventType[type], subscribers: this.bus.subscriberCount }, 'container event');
    });
  }

  subscribe(): Subscription<ContainerEventResponse> {
    return this.bus.subscribe(this.options.subscriberCapacity ?? DEFAULT_SUBSCRIBER_CAPACITY);
  }

  get subscriberCount(): number {
    return this.bus.subscriberCount;
  }

  /** Resolves once every event published so far has been handed to the subscribers. */
  flush(): Promise<void> {
    return this.tail;
  }

  /** Ends every stream normally, so shutdown does not wait on long-lived subscribers. */
  close(): void {
    this.bus.close();
  }
}
