import type {
  AttachRequest,
  AttachResponse,
  ExecRequest,
  ExecResponse,
  PortForwardRequest,
  PortForwardResponse,
} from '../generated/runtime/v1/api';
import { failedPrecondition, invalidArgument } from '../util/errors';
import type { CallContext } from './instrument';
import type { CriService } from './service';

/** Exec: a single-use URL on the streaming server; the session itself runs when kubelet connects. */
export async function exec(svc: CriService, req: ExecRequest, _ctx: CallContext): Promise<ExecResponse> {
  if (!req.containerId) throw invalidArgument('container id is empty');
  const c = svc.containers.resolve(req.containerId);
  await svc.exits.reconcile(c);
  if (c.state !== 'running') throw failedPrecondition(`container ${c.id} is not running`);
  return { url: svc.streaming.getExecUrl({ containerId: c.id, cmd: req.cmd, tty: req.tty, stdin: req.stdin, stdout: req.stdout, stderr: req.stderr }) };
}

export async function attach(svc: CriService, req: AttachRequest, _ctx: CallContext): Promise<AttachResponse> {
  if (!req.containerId) throw invalidArgument('container id is empty');
  const c = svc.containers.resolve(req.containerId);
  await svc.exits.reconcile(c);
  if (c.state !== 'running') throw failedPrecondition(`container ${c.id} is not running`);
  return { url: svc.streaming.getAttachUrl({ containerId: c.id, tty: req.tty, stdin: req.stdin, stdout: req.stdout, stderr: req.stderr }) };
}

export async function portForward(svc: CriService, req: PortForwardRequest, _ctx: CallContext): Promise<PortForwardResponse> {
  if (!req.podSandboxId) throw invalidArgument('pod sandbox id is empty');
  const sandbox = svc.sandboxes.resolve(req.podSandboxId);
  if (sandbox.state !== 'ready' || !svc.pods.alive(sandbox)) throw failedPrecondition(`pod sandbox ${sandbox.id} is not ready`);
  return { url: svc.streaming.getPortForwardUrl({ podSandboxId: sandbox.id, ports: req.port }) };
}
