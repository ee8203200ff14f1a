import { CrispError } from '../util/errors';

/** How many undelivered events a subscriber may have before it is dropped. */
export const DEFAULT_SUBSCRIBER_CAPACITY = 1000;

/**
 * One subscriber's view of a bus: a bounded queue read with `next()`. A subscriber that lets the
 * queue fill up is dropped: its pending and later reads reject with ResourceExhausted, so a
 * stalled client costs the daemon a bounded amount of memory and never blocks publishers.
 */
export class Subscription<T> {
  private queue: T[] = [];
  private head = 0;
  private waiter?: { resolve: (value: T | undefined) => void; reject: (err: Error) => void };
  private endedWith?: { error?: Error };
  private readonly endListeners: Array<(error?: Error) => void> = [];

  constructor(
    readonly capacity: number,
    private readonly detach: (sub: Subscription<T>) => void,
  ) {}

  /** Events queued and not yet read. */
  get pending(): number {
    return this.queue.length - this.head;
  }

  get ended(): boolean {
    return this.endedWith !== undefined;
  }

  /** Called by the bus. */
  deliver(event: T): void {
    if (this.endedWith) return;
    if (this.waiter) {
      const { resolve } = this.waiter;
      this.waiter = undefined;
      resolve(event);
      return;
    }
    if (this.pending >= this.capacity) {
      this.end(new CrispError('ResourceExhausted', `event subscriber fell more than ${this.capacity} events behind and was dropped`));
      return;
    }
    this.queue.push(event);
  }

  /** The next event; undefined once closed normally; rejects once dropped. */
  next(): Promise<T | undefined> {
    if (this.pending > 0) {
      const event = this.queue[this.head]!;
      this.head++;
      // Compact now and then instead of shifting on every read.
      if (this.head > 64 && this.head * 2 > this.queue.length) {
        this.queue = this.queue.slice(this.head);
        this.head = 0;
      }
      return Promise.resolve(event);
    }
    if (this.endedWith) return this.endedWith.error ? Promise.reject(this.endedWith.error) : Promise.resolve(undefined);
    if (this.waiter) return Promise.reject(new Error('Subscription.next() called while a read is pending'));
    return new Promise((resolve, reject) => (this.waiter = { resolve, reject }));
  }

  /** Runs `listener` once when the subscription ends, with the error if it was dropped. */
  onEnd(listener: (error?: Error) => void): void {
    if (this.endedWith) listener(this.endedWith.error);
    else this.endListeners.push(listener);
  }

  /** Unsubscribes; a pending read resolves undefined. Idempotent. */
  close(): void {
    this.end();
  }

  private end(error?: Error): void {
    if (this.endedWith) return;
    this.endedWith = { error };
    this.detach(this);
    if (error) {
      // Undelivered events are useless to a dropped subscriber; release them now.
      this.queue = [];
      this.head = 0;
    }
    const waiter = this.waiter;
    this.waiter = undefined;
    if (waiter) {
      if (error) waiter.reject(error);
      else waiter.resolve(undefined);
    }
    for (const listener of this.endListeners.splice(0)) listener(error);
  }
}

/** Fan-out of events to any number of subscribers, each with its own bounded queue. */
export class EventBus<T> {
  private readonly subscribers = new Set<Subscription<T>>();
  private closed = false;

  subscribe(capacity = DEFAULT_SUBSCRIBER_CAPACITY): Subscription<T> {
    const sub = new Subscription<T>(capacity, (s) => this.subscribers.delete(s));
    if (this.closed) sub.close();
    else this.subscribers.add(sub);
    return sub;
  }

  publish(event: T): void {
    // Copy: delivering may drop a subscriber, which removes it from the set.
    for (const sub of [...this.subscribers]) sub.deliver(event);
  }

  get subscriberCount(): number {
    return this.subscribers.size;
  }

  /** Ends every subscription normally (daemon shutdown); later subscriptions end at once. */
  close(): void {
    this.closed = true;
    for (const sub of [...this.subscribers]) sub.close();
  }
}
