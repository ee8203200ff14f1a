import { internal } from './errors';
import { writeJsonAtomic } from './fsutil';

/** The checkpoint each holder's next one waits for, so that changes apply one after another. */
const inFlight = new WeakMap<object, Promise<void>>();

/**
 * Applies `change` to a copy of `holder.record`, writes the copy to `file` atomically and durably,
 * and only then makes it current: a reader sees the old record or the persisted new one, never a
 * change that is then rolled back. If writing fails the record stays as it was and the call fails
 * Internal (naming `what`). Checkpoints of one holder run one at a time, each on the record the
 * previous one left, so none undoes another.
 */
export function checkpointRecord<R>(holder: { record: R }, file: string, what: string, change: (r: R) => void): Promise<void> {
  const previous = inFlight.get(holder);
  const run = async (): Promise<void> => {
    const next = structuredClone(holder.record);
    change(next);
    try {
      await writeJsonAtomic(file, next);
    } catch (err) {
      throw internal(`persisting ${what}: ${(err as Error).message}`, err);
    }
    holder.record = next;
  };
  const done = previous ? previous.then(run, run) : run();
  const settled = done.catch(() => undefined);
  inFlight.set(holder, settled);
  void settled.then(() => {
    if (inFlight.get(holder) === settled) inFlight.delete(holder);
  });
  return done;
}
