import { internal } from '../util/errors';

/**
 * Sandbox lifecycle:
 *
 *   RunPodSandbox ──► creating ──(all steps done)──► ready ──StopPodSandbox──► stopped
 *                        │                             │                          │
 *                        └─(a step failed / crash)─► undone, record deleted      RemovePodSandbox ─► gone
 *
 * `creating` is persisted before the first side effect, so a daemon that dies half-way finds the
 * record at start-up and undoes what it lists in `resources` (see sandbox_recover.ts).
 * A ready sandbox whose monitor died is reported NOTREADY, as a dead pause container would be
 * (derived when asked, never stored). A stop of a sandbox still being created stops it.
 */
export type SandboxState = 'creating' | 'ready' | 'stopped';

const NEXT: Record<SandboxState, readonly SandboxState[]> = {
  creating: ['ready', 'stopped'],
  ready: ['stopped'],
  stopped: [],
};

/** Whether the diagram has an edge from `from` to `to`. */
export function canTransitionSandbox(from: SandboxState, to: SandboxState): boolean {
  return NEXT[from].includes(to);
}

/** The fields of a sandbox record the state machine owns. */
export interface SandboxLifecycle {
  id: string;
  state: SandboxState;
  stage: string;
}

function move(r: SandboxLifecycle, to: SandboxState): void {
  if (!canTransitionSandbox(r.state, to)) throw internal(`pod sandbox ${r.id} cannot go from ${r.state} to ${to}`);
  r.state = to;
  r.stage = to;
}

/** Every step of RunPodSandbox is done. */
export function markReady(r: SandboxLifecycle): void {
  move(r, 'ready');
}

/** Its processes are stopped and its network released. */
export function markStopped(r: SandboxLifecycle): void {
  move(r, 'stopped');
}
