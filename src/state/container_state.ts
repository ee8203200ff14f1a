import { ContainerState as CriContainerState } from '../generated/runtime/v1/api';
import type { ContainerExitRecord } from '../runtime/exit_record';
import { internal } from '../util/errors';

/**
 * Container lifecycle:
 *
 *   CreateContainer ─► creating ─(runtime set the process up)─► created ─StartContainer─► running ─(exit)─► exited
 *                          │                                       │                                         ▲
 *                          ├─(failure / crash: undone)─► gone      └─(start failed, killed before start)─────┤
 *                          └─(set-up failed before create returned)──────────────────────────────────────────┘
 *
 *   RemoveContainer: any state ─► gone (a container not yet exited is killed first).
 *
 * `creating` is persisted before the first side effect so recovery can undo an interrupted create.
 * The exit itself is recorded by the pod's runtime (`<bundle>/exit.json`), so exits that happen
 * while the daemon is down are found at start-up. Every change of state goes through the
 * functions below, which refuse the transitions the diagram does not have.
 */
export type ContainerState = 'creating' | 'created' | 'running' | 'exited';

const NEXT: Record<ContainerState, readonly ContainerState[]> = {
  creating: ['created', 'exited'],
  created: ['running', 'exited'],
  running: ['exited'],
  exited: [],
};

/** Whether the diagram has an edge from `from` to `to`. */
export function canTransition(from: ContainerState, to: ContainerState): boolean {
  return NEXT[from].includes(to);
}

/** The fields of a container record the state machine owns. */
export interface ContainerLifecycle {
  id: string;
  state: ContainerState;
  /** Nanoseconds since the epoch as decimal strings (0 = not yet). */
  startedAt: string;
  finishedAt: string;
  pid: number;
  exitCode: number;
  reason: string;
  message: string;
  stage: string;
}

function move(r: ContainerLifecycle, to: ContainerState): void {
  if (!canTransition(r.state, to)) throw internal(`container ${r.id} cannot go from ${r.state} to ${to}`);
  r.state = to;
}

/** Milliseconds since the epoch as the records' nanosecond strings. */
export function msToNanos(ms: number): string {
  return (BigInt(ms) * 1_000_000n).toString();
}

/**
 * The runtime has set the process up. A container whose set-up failure was recorded before
 * CreateContainer got here stays exited: StartContainer reports that failure.
 */
export function markCreated(r: ContainerLifecycle, pid: number): void {
  r.stage = 'created';
  if (r.state === 'exited') return;
  move(r, 'created');
  r.pid = pid;
}

/** The program has been exec'd. */
export function markRunning(r: ContainerLifecycle, pid: number, startedAtMs: number): void {
  move(r, 'running');
  r.pid = pid;
  r.startedAt = msToNanos(startedAtMs);
}

/** How a container ended: what ContainerStatus shows of its exit. */
export interface ContainerExit {
  exitCode: number;
  reason: string;
  message: string;
  finishedAtMs: number;
  /** When the program started, if the record does not know yet (an exit found on disk). */
  startedAtMs?: number | null;
}

/** The one way a container becomes exited. */
export function markExited(r: ContainerLifecycle, exit: ContainerExit): void {
  move(r, 'exited');
  r.pid = 0;
  r.exitCode = exit.exitCode;
  r.reason = exit.reason;
  r.message = exit.message;
  r.finishedAt = msToNanos(exit.finishedAtMs);
  if (r.startedAt === '0' && exit.startedAtMs) r.startedAt = msToNanos(exit.startedAtMs);
}

/** CRI reason for a recorded exit: StartError, OOMKilled, Completed (code 0) or Error, as kubelet shows them. */
export function exitReason(exit: ContainerExitRecord): string {
  if (exit.startError) return 'StartError';
  if (exit.oomKilled) return 'OOMKilled';
  return exit.exitCode === 0 ? 'Completed' : 'Error';
}

/** The exit the runtime recorded in the container's bundle. */
export function recordedExit(exit: ContainerExitRecord): ContainerExit {
  return {
    exitCode: exit.exitCode,
    reason: exitReason(exit),
    message: exit.startError ? exit.startError : exit.oomKilled ? 'the container exceeded its memory limit' : '',
    finishedAtMs: exit.finishedAtMs,
    startedAtMs: exit.startedAtMs,
  };
}

/** StartContainer failed: the process is gone, with the reason the runtime gave. */
export function startFailedExit(message: string, nowMs = Date.now()): ContainerExit {
  return { exitCode: 128, reason: 'StartError', message, finishedAtMs: nowMs };
}

/** The pod's runtime went away while the daemon was down: the container went with it. */
export function lostExit(nowMs = Date.now()): ContainerExit {
  return { exitCode: 255, reason: 'Error', message: 'the pod monitor is gone; the container was lost', finishedAtMs: nowMs };
}

/** Stopped while its pod's runtime is gone: nothing can still run; killed, unless the record says otherwise. */
export function goneWithoutRuntimeExit(r: ContainerLifecycle, nowMs = Date.now()): ContainerExit {
  return { exitCode: r.exitCode || 137, reason: r.reason || 'Error', message: r.message, finishedAtMs: nowMs };
}

/** The CRI state kubelet sees: a container still being created shows as created. */
export function criContainerState(state: ContainerState): CriContainerState {
  switch (state) {
    case 'creating':
    case 'created':
      return CriContainerState.CONTAINER_CREATED;
    case 'running':
      return CriContainerState.CONTAINER_RUNNING;
    case 'exited':
      return CriContainerState.CONTAINER_EXITED;
  }
}
