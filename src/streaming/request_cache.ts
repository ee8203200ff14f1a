import { randomBytes } from 'node:crypto';
import { CrispError } from '../util/errors';

/** How long a URL handed out by Get{Exec,Attach,PortForward}Url stays usable (kubelet's value). */
export const DEFAULT_TOKEN_TTL_MS = 60_000;
/** Outstanding URLs allowed at once. */
export const DEFAULT_MAX_IN_FLIGHT = 1000;
const TOKEN_BYTES = 8;

interface Entry<T> {
  value: T;
  expiresAt: number;
}

/**
 * Single-use tokens for pending streaming requests. A token is 8 random bytes in unpadded
 * base64url; it can be consumed once, and not after its TTL. Entries share one TTL, so the map's
 * insertion order is also expiry order and pruning only looks at the front.
 */
export class RequestCache<T> {
  private readonly entries = new Map<string, Entry<T>>();

  constructor(
    private readonly ttlMs = DEFAULT_TOKEN_TTL_MS,
    private readonly maxInFlight = DEFAULT_MAX_IN_FLIGHT,
    private readonly now: () => number = Date.now,
  ) {}

  get size(): number {
    return this.entries.size;
  }

  insert(value: T): string {
    this.pruneExpired();
    if (this.entries.size >= this.maxInFlight) {
      throw new CrispError('ResourceExhausted', `maximum number of in-flight streaming requests (${this.maxInFlight}) exceeded`);
    }
    let token: string;
    do {
      token = randomBytes(TOKEN_BYTES).toString('base64url');
    } while (this.entries.has(token));
    this.entries.set(token, { value, expiresAt: this.now() + this.ttlMs });
    return token;
  }

  /** Returns the request for `token` and forgets it; undefined if unknown, used or expired. */
  consume(token: string): T | undefined {
    const entry = this.entries.get(token);
    if (!entry) return undefined;
    this.entries.delete(token);
    return entry.expiresAt > this.now() ? entry.value : undefined;
  }

  private pruneExpired(): void {
    const now = this.now();
    for (const [token, entry] of this.entries) {
      if (entry.expiresAt > now) break;
      this.entries.delete(token);
    }
  }
}
