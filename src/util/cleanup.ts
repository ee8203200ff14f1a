import type { Logger } from '../log';
import { errorMessage } from './errors';

interface Step {
  name: string;
  undo: () => Promise<void> | void;
}

/**
 * Undo actions registered as a multi-step operation makes progress. If the operation fails, `unwind`
 * runs them newest first, retrying each a few times, so a failure half-way leaves nothing behind.
 * On success the stack is simply dropped (`release`).
 */
export class CleanupStack {
  private steps: Step[] = [];

  push(name: string, undo: () => Promise<void> | void): void {
    this.steps.push({ name, undo });
  }

  release(): void {
    this.steps = [];
  }

  /** Runs every undo; returns the names of the steps that still failed after retries. */
  async unwind(log: Logger, attempts = 3): Promise<string[]> {
    const failed: string[] = [];
    const steps = this.steps.reverse();
    this.steps = [];
    for (const step of steps) {
      let lastError: unknown;
      for (let i = 0; i < attempts; i++) {
        try {
          await step.undo();
          lastError = undefined;
          break;
        } catch (err) {
          lastError = err;
          await new Promise((r) => setTimeout(r, 50 * (i + 1)));
        }
      }
      if (lastError !== undefined) {
        failed.push(step.name);
        log.error({ step: step.name, err: errorMessage(lastError) }, 'cleanup step failed');
      }
    }
    return failed;
  }
}
