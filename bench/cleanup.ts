/**
 * Everything the benchmark sets up registers how to undo it here; the steps run in reverse order
 * on normal exit, on failure, and on SIGINT/SIGTERM (then the process exits 130/143).
 */
export class CleanupStack {
  private readonly steps: { what: string; undo: () => Promise<void> | void }[] = [];
  private running?: Promise<void>;

  constructor(private readonly log: (message: string) => void) {}

  push(what: string, undo: () => Promise<void> | void): void {
    this.steps.push({ what, undo });
  }

  /** Runs every step once, newest first; a failing step is reported and the rest still run. */
  run(): Promise<void> {
    this.running ??= (async () => {
      while (this.steps.length > 0) {
        const step = this.steps.pop()!;
        try {
          await step.undo();
        } catch (err) {
          this.log(`cleanup: ${step.what} failed: ${err instanceof Error ? err.message : String(err)}`);
        }
      }
    })();
    return this.running;
  }

  /** Cleans up and exits on SIGINT/SIGTERM; a repeated signal while cleaning up is ignored. */
  installSignalHandlers(): void {
    for (const [signal, code] of [
      ['SIGINT', 130],
      ['SIGTERM', 143],
    ] as const) {
      process.on(signal, () => {
        if (this.running) {
          this.log(`${signal}: still cleaning up, please wait`);
          return;
        }
        this.log(`${signal}: removing everything the benchmark created`);
        void this.run().finally(() => process.exit(code));
      });
    }
  }
}
