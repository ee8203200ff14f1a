import * as path from 'node:path';
import { checkLocation, criuStatus, writeCheckpoint } from '../container/checkpoint';
import type { CheckpointContainerRequest, CheckpointContainerResponse } from '../generated/runtime/v1/api';
import { failedPrecondition, invalidArgument, unimplemented } from '../util/errors';
import type { CallContext } from './instrument';
import type { CriService } from './service';

/** When kubelet leaves the timeout to the runtime (0). */
const DEFAULT_TIMEOUT_SECONDS = 120;

/** Containers being checkpointed: two CRIU runs cannot seize the same process tree. */
const inProgress = new Set<string>();

function nanosToIso(nanos: string): string {
  return new Date(Number(BigInt(nanos || '0') / 1_000_000n)).toISOString();
}

/**
 * Forensic container checkpointing (KEP-2008): CRIU dumps the running container, which keeps
 * running, and the archive at `location` holds the images, the container's spec and metadata and
 * its writable layer, in the layout CRI-O and containerd use.
 */
export async function checkpointContainer(svc: CriService, req: CheckpointContainerRequest, ctx: CallContext): Promise<CheckpointContainerResponse> {
  if (!req.containerId) throw invalidArgument('container id is empty');
  if (req.timeout < 0n) throw invalidArgument(`checkpoint timeout ${req.timeout} is negative`);
  await checkLocation(req.location);
  const container = svc.containers.resolve(req.containerId);

  await svc.exits.reconcile(container, true);
  const sandbox = svc.sandboxes.get(container.record.sandboxId);
  if (container.state !== 'running' || container.record.pid <= 0 || !sandbox || !svc.pods.alive(sandbox)) {
    throw failedPrecondition(`container ${container.id} is ${container.state === 'running' ? 'not reachable' : container.state}; only running containers can be checkpointed`);
  }

  const criu = await criuStatus();
  if (!criu.usable) throw unimplemented(`CheckpointContainer needs a CRIU that works on this kernel: ${criu.detail}`);

  if (inProgress.has(container.id)) throw failedPrecondition(`container ${container.id} is already being checkpointed`);
  inProgress.add(container.id);
  try {
    const timeoutSeconds = req.timeout > 0n ? Number(req.timeout) : DEFAULT_TIMEOUT_SECONDS;
    const config = container.config;
    const started = Date.now();
    const result = await writeCheckpoint({
      pid: container.record.pid,
      specFile: path.join(container.bundleDir, 'config.json'),
      upperDir: container.upperDir,
      metadata: {
        id: container.id,
        name: config.metadata?.name ?? '',
        rootfsImage: config.image?.userSpecifiedImage || config.image?.image || container.record.image,
        rootfsImageRef: container.record.imageId,
        rootfsImageName: container.record.image,
        runtime: 'crisp',
        createdTime: nanosToIso(container.record.createdAt),
      },
      location: req.location,
      deadline: started + timeoutSeconds * 1000,
      signal: ctx.signal,
      log: ctx.log,
    });
    ctx.log.info(
      { container: container.id.slice(0, 12), location: req.location, bytes: result.bytes, criuMs: result.criuMs, totalMs: Date.now() - started, criu: criu.detail },
      'container checkpointed',
    );
    return {};
  } finally {
    inProgress.delete(container.id);
  }
}
