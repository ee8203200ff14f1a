import { CrispError, failedPrecondition, notFound } from '../util/errors';

/**
 * The in-memory index of one kind of object (pod sandboxes, containers): by id, by the name
 * kubelet gives it, by a unique id prefix (crictl passes truncated ids), and the creates in
 * flight by name, so that a kubelet retry of a create that timed out joins it instead of failing
 * with "name is reserved".
 */
export class ObjectIndex<T extends { readonly id: string }> {
  private readonly byId = new Map<string, T>();
  private readonly byName = new Map<string, string>();
  private readonly creates = new Map<string, Promise<string>>();

  constructor(
    /** How errors name the kind: "pod sandbox", "container". */
    private readonly kind: string,
    private readonly nameOf: (item: T) => string,
  ) {}

  add(item: T): void {
    this.byId.set(item.id, item);
    this.byName.set(this.nameOf(item), item.id);
  }

  remove(item: T): void {
    this.byId.delete(item.id);
    const name = this.nameOf(item);
    if (this.byName.get(name) === item.id) this.byName.delete(name);
  }

  get(id: string): T | undefined {
    return this.byId.get(id);
  }

  has(id: string): boolean {
    return this.byId.has(id);
  }

  idByName(name: string): string | undefined {
    return this.byName.get(name);
  }

  list(): T[] {
    return [...this.byId.values()];
  }

  values(): IterableIterator<T> {
    return this.byId.values();
  }

  /** A full id or a unique prefix; NotFound for none, FailedPrecondition for an ambiguous prefix. */
  resolve(idOrPrefix: string): T {
    if (!idOrPrefix) throw notFound(`${this.kind} id is empty`);
    const exact = this.byId.get(idOrPrefix);
    if (exact) return exact;
    const matches = [...this.byId.keys()].filter((id) => id.startsWith(idOrPrefix));
    if (matches.length === 1) return this.byId.get(matches[0])!;
    if (matches.length > 1) throw failedPrecondition(`${this.kind} id prefix "${idOrPrefix}" is ambiguous`);
    throw notFound(`${this.kind} "${idOrPrefix}" not found`);
  }

  /** Like resolve(), but undefined for an unknown id: stops and removes of a gone object succeed. */
  find(idOrPrefix: string): T | undefined {
    try {
      return this.resolve(idOrPrefix);
    } catch (err) {
      if (err instanceof CrispError && err.code === 'NotFound') return undefined;
      throw err;
    }
  }

  /**
   * Runs `create` for `name` unless a create of that name is in flight (its id once done, `via`
   * "joined") or an object of that name exists (its id, `via` "existing").
   */
  async createOnce(name: string, create: () => Promise<string>): Promise<{ id: string; via: 'created' | 'joined' | 'existing' }> {
    const inflight = this.creates.get(name);
    if (inflight) return { id: await inflight, via: 'joined' };
    const existing = this.byName.get(name);
    if (existing) return { id: existing, via: 'existing' };
    const pending = create();
    this.creates.set(name, pending);
    try {
      return { id: await pending, via: 'created' };
    } finally {
      this.creates.delete(name);
    }
  }

  /** Whether a create of `name` is in flight. */
  creating(name: string): boolean {
    return this.creates.has(name);
  }
}
