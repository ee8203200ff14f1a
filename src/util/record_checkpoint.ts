import { internal } from './errors';
import { writeJsonAtomic } from './fsutil';

/**
 * Applies `change` to a copy of `holder.record`, makes the copy current and persists it to `file`
 * atomically; if persisting fails the previous record is put back and the call fails Internal
 * (naming `what`). Readers never see a half-applied change.
 */
export async function checkpointRecord<R>(holder: { record: R }, file: string, what: string, change: (r: R) => void): Promise<void> {
  const next = structuredClone(holder.record);
  change(next);
  const prev = holder.record;
  holder.record = next;
  try {
    await writeJsonAtomic(file, next);
  } catch (err) {
    holder.record = prev;
    throw internal(`persisting ${what}: ${(err as Error).message}`, err);
  }
}
