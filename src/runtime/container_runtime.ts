/**
 * What the RPC handlers ask of the runtime that runs a pod's containers: create a container from
 * its bundle, start it, signal it, run processes in it, attach to it, reopen its log, and stop
 * everything at the end of the pod. crisp's per-pod monitor implements it (`MonitorClient`, one
 * control connection per pod); the in-memory `FakeContainerRuntime` of the unit tests does too.
 * Handlers see nothing of the transport below it.
 *
 * Resource updates and stats are not here: they are cgroup writes and reads the daemon does
 * itself, whichever runtime runs the processes.
 */
import type { Readable, Writable } from 'node:stream';

export interface CreateContainerParams {
  containerId: string;
  /** Holds config.json (OCI runtime spec with crispRootfs/crispCgroup) and the empty rootfs/. */
  bundleDir: string;
  /** CRI-format log file; created 0640 if missing. */
  logPath: string;
  tty?: boolean;
  stdin?: boolean;
  stdinOnce?: boolean;
  /**
   * Answer once the process is forked rather than once it is set up; a set-up failure is then
   * the answer to `start`.
   */
  earlyReply?: boolean;
}

export interface ExecProcess {
  args: string[];
  /** Defaults to the container's environment. */
  env?: string[];
  /** Defaults to the container's working directory. */
  cwd?: string;
  /** Default to the container's user. */
  uid?: number;
  gid?: number;
  additionalGids?: number[];
}

export interface ExecParams {
  containerId: string;
  execId: string;
  process: ExecProcess;
  tty?: boolean;
  stdin?: boolean;
  /** Kill the process (and its process group) after this long; 0 or absent waits indefinitely. */
  timeoutMs?: number;
}

export interface ExecResult {
  /** The exit status, or 128 + signal number. */
  exitCode: number;
  stdout: Buffer;
  stderr: Buffer;
  timedOut: boolean;
  /** Output beyond 16 MiB per stream was dropped. */
  truncated: boolean;
}

export interface ExecStreamParams {
  containerId: string;
  /** Names the exec for `signal` with an execId. */
  execId: string;
  process: ExecProcess;
  /** A terminal for stdin, stdout and stderr; its output is all stdout. */
  tty: boolean;
  stdin: boolean;
  stdout: boolean;
  stderr: boolean;
}

export interface AttachStreamParams {
  containerId: string;
  /** Refused (FailedPrecondition) unless the container was created with stdin. */
  stdin: boolean;
  stdout: boolean;
  stderr: boolean;
}

/** An interactive exec or an attach: the process's stdio until it exits or `close()` ends it. */
export interface ProcessStream {
  readonly stdin: Writable;
  readonly stdout: Readable;
  readonly stderr: Readable;
  /** The exit code once reported; undefined if the stream ended without one. */
  readonly exit: Promise<number | undefined>;
  resize(width: number, height: number): void;
  /** Ends the session: an exec'd process is killed, an attach detaches. */
  close(): void;
}

export type RuntimeEvent =
  | {
      event: 'container_exit';
      containerId: string;
      execId?: string;
      pid: number;
      exitCode: number;
      signal?: number;
      exitedAtMs: number;
      oomKilled?: boolean;
    }
  | { event: 'oom'; containerId: string }
  | { event: 'shutdown' };

/**
 * The containers of one pod. Errors are CrispErrors keeping the runtime's code (NotFound for an
 * unknown container, InvalidArgument for a spec at fault); a runtime that is gone fails every
 * call with Unavailable.
 */
export interface ContainerRuntime {
  /**
   * Sets the container's process up from its bundle, to the point of exec. With `earlyReply`
   * it resolves once the process is forked and a set-up failure is the answer to `start`.
   */
  create(params: CreateContainerParams, timeoutMs?: number): Promise<{ pid: number }>;
  /**
   * Lets the created container exec its program. Rejects with the reason if it could not, in
   * which case the runtime records the container as exited with code 128.
   */
  start(containerId: string, timeoutMs?: number): Promise<{ pid: number; startedAtMs: number }>;
  /** Signals the container's main process, or an exec's process group; a process already gone is not an error. */
  signal(containerId: string, signal: number | NodeJS.Signals, execId?: string): Promise<void>;
  /** Runs a process in the running container and collects its output (ExecSync). */
  execSync(params: ExecParams, timeoutMs?: number): Promise<ExecResult>;
  /** An interactive process in the running container; resolves once it has exec'd its program. */
  exec(params: ExecStreamParams): Promise<ProcessStream>;
  /** The stdio of the container's main process. */
  attach(params: AttachStreamParams): Promise<ProcessStream>;
  /** Starts a new log file at the container's log path (after kubelet rotated the old one away). */
  reopenLog(containerId: string, timeoutMs?: number): Promise<void>;
  /** Stops every process (SIGTERM, SIGKILL after `graceMs`) and ends the pod's runtime. */
  shutdown(graceMs: number, timeoutMs?: number): Promise<void>;
  /** Calls `listener` for every event (container exits); returns a function that removes it. */
  onEvent(listener: (event: RuntimeEvent) => void): Promise<() => void>;
  /** Called once when the runtime goes away, with the reason unless `close()` ended it. */
  onClose(listener: (err?: Error) => void): void;
  /** Whether the runtime is gone; every call then fails with Unavailable. */
  readonly closed: boolean;
  /** Lets go of the runtime; the containers keep running. */
  close(): void;
}
