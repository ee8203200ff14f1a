/**
 * Starting CNI plugin processes. The daemon starts them with posix_spawn through the native core:
 * node's child_process forks the whole daemon (page tables of a 100+ MB process) for each of the
 * plugins a pod start and stop run, which costs about a millisecond each here. Tools and tests
 * without the addon use child_process.
 */
import { spawn } from 'node:child_process';
import * as net from 'node:net';
import * as os from 'node:os';
import type { Readable, Writable } from 'node:stream';

export interface PluginExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** A started plugin: its standard streams, and how it ended once it has. */
export interface PluginProcess {
  pid: number | undefined;
  stdin: Writable;
  stdout: Readable;
  stderr: Readable;
  /**
   * Resolves once the process exited and both output streams closed; rejects when it could not
   * be started (an errno-coded error such as ENOENT or EACCES).
   */
  done: Promise<PluginExit>;
}

/** Starts `binary` with exactly `env`, leader of its own process group (kill `-pid` stops it all). */
export type PluginLauncher = (binary: string, env: Record<string, string>) => PluginProcess;

export const childProcessLauncher: PluginLauncher = (binary, env) => {
  const child = spawn(binary, [], { env, stdio: ['pipe', 'pipe', 'pipe'], detached: true });
  const done = new Promise<PluginExit>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code, signal) => resolve({ code, signal }));
  });
  return { pid: child.pid, stdin: child.stdin, stdout: child.stdout, stderr: child.stderr, done };
};

export interface PipedSpawner {
  spawnPiped(program: string, args: readonly string[], env: readonly string[]): { pid: number; stdin: number; stdout: number; stderr: number };
  waitChild(pid: number): { code: number } | { signal: number } | undefined;
}

const SIGNAL_NAMES = new Map<number, NodeJS.Signals>(
  Object.entries(os.constants.signals).map(([name, number]) => [number, name as NodeJS.Signals]),
);

/** The longest pause between checks for the exit of a plugin whose output is already closed. */
const MAX_WAIT_POLL_MS = 20;

export function nativeLauncher(spawner: PipedSpawner): PluginLauncher {
  return (binary, env) => {
    let started: ReturnType<PipedSpawner['spawnPiped']>;
    try {
      started = spawner.spawnPiped(binary, [], Object.entries(env).map(([k, v]) => `${k}=${v}`));
    } catch (err) {
      const never = new net.Socket();
      never.destroy();
      return { pid: undefined, stdin: never, stdout: never, stderr: never, done: Promise.reject(err) };
    }
    const { pid } = started;
    const stdin = new net.Socket({ fd: started.stdin, readable: false, writable: true });
    const stdout = new net.Socket({ fd: started.stdout, readable: true, writable: false });
    const stderr = new net.Socket({ fd: started.stderr, readable: true, writable: false });
    const closed = (s: net.Socket): Promise<void> => new Promise((resolve) => s.once('close', () => resolve()));
    const done = (async (): Promise<PluginExit> => {
      await Promise.all([closed(stdout), closed(stderr)]);
      // A plugin closes its output when it exits; the exit itself follows within moments.
      for (let delayMs = 0; ; delayMs = Math.min(Math.max(1, delayMs * 2), MAX_WAIT_POLL_MS)) {
        const status = spawner.waitChild(pid);
        if (status) return 'code' in status ? { code: status.code, signal: null } : { code: null, signal: SIGNAL_NAMES.get(status.signal) ?? null };
        await new Promise((resolve) => setTimeout(resolve, delayMs));
      }
    })();
    return { pid, stdin, stdout, stderr, done };
  };
}
