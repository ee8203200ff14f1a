import { Signal, type StopContainerRequest, type StopContainerResponse } from '../generated/runtime/v1/api';
import type { Container } from '../container/container_store';
import { goneWithoutRuntimeExit, markExited } from '../state/container_state';
import { internal, invalidArgument, isCrispError } from '../util/errors';
import type { CallContext } from './instrument';
import type { CriService } from './service';

const SIGNALS: Record<string, number> = {
  SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGILL: 4, SIGTRAP: 5, SIGABRT: 6, SIGBUS: 7, SIGFPE: 8, SIGKILL: 9, SIGUSR1: 10,
  SIGSEGV: 11, SIGUSR2: 12, SIGPIPE: 13, SIGALRM: 14, SIGTERM: 15, SIGSTKFLT: 16, SIGCHLD: 17, SIGCONT: 18, SIGSTOP: 19,
  SIGTSTP: 20, SIGTTIN: 21, SIGTTOU: 22, SIGURG: 23, SIGXCPU: 24, SIGXFSZ: 25, SIGVTALRM: 26, SIGPROF: 27, SIGWINCH: 28,
  SIGIO: 29, SIGPWR: 30, SIGSYS: 31,
};

/** "SIGTERM", "TERM", "15" or "SIGRTMIN+3" to a number; undefined if not a signal. */
export function parseSignal(text: string): number | undefined {
  const t = text.trim().toUpperCase();
  if (/^\d+$/.test(t)) return Number(t) > 0 && Number(t) < 65 ? Number(t) : undefined;
  const name = t.startsWith('SIG') ? t : `SIG${t}`;
  const rt = /^SIGRTMIN(?:\+(\d+))?$/.exec(name);
  if (rt) return 34 + Number(rt[1] ?? 0);
  const rtmax = /^SIGRTMAX(?:-(\d+))?$/.exec(name);
  if (rtmax) return 64 - Number(rtmax[1] ?? 0);
  return SIGNALS[name];
}

/** The stop signal: the container config's (CRI 1.33), else the image's StopSignal, else SIGTERM. */
export async function stopSignalOf(svc: CriService, container: Container): Promise<number> {
  const configured = container.config.stopSignal;
  if (configured !== Signal.RUNTIME_DEFAULT && configured > 0) {
    const name = Signal[configured];
    const n = name ? parseSignal(name) : undefined;
    if (n) return n;
  }
  const imageSignal = (await svc.images.readConfig(container.record.imageId).catch(() => undefined))?.config?.StopSignal;
  return (imageSignal && parseSignal(imageSignal)) || 15;
}

/**
 * Stops a container: the stop signal, up to `timeout` seconds for it to exit, then SIGKILL.
 * Stopping a container that is not running succeeds (kubelet retries stops).
 */
export async function stopContainer(svc: CriService, req: StopContainerRequest, ctx: CallContext): Promise<StopContainerResponse> {
  if (!req.containerId) throw invalidArgument('container id is empty');
  const container = svc.containers.resolve(req.containerId);
  await stopContainerProcess(svc, container, Number(req.timeout), ctx);
  return {};
}

export async function stopContainerProcess(svc: CriService, container: Container, timeoutSeconds: number, ctx: CallContext): Promise<void> {
  if (await svc.exits.reconcile(container)) return;
  if (container.state !== 'running' && container.state !== 'created') return;
  const sandbox = svc.sandboxes.get(container.record.sandboxId);
  if (!sandbox || !svc.pods.alive(sandbox)) {
    // No monitor, no process: nothing can still run.
    await svc.containers.update(container, (r) => markExited(r, goneWithoutRuntimeExit(r)));
    return;
  }
  const signal = async (n: number): Promise<void> => {
    try {
      await svc.pods.signalContainer(sandbox, container.id, n);
    } catch (err) {
      if (!isCrispError(err, 'NotFound')) throw err;
    }
  };
  if (container.state === 'running' && timeoutSeconds > 0) {
    await signal(await stopSignalOf(svc, container));
    if (await svc.exits.waitForExit(container, timeoutSeconds * 1000)) return;
    ctx.log.info({ container: container.id.slice(0, 12), timeoutSeconds }, 'stop timeout passed; killing');
  }
  await signal(9);
  if (!(await svc.exits.waitForExit(container, 10_000))) throw internal(`container ${container.id} did not exit after SIGKILL`);
}
