import type { CheckpointContainerRequest, CheckpointContainerResponse } from '../generated/runtime/v1/api';
import { unimplemented } from '../util/errors';
import type { CallContext } from './instrument';
import type { CriService } from './service';

/**
 * Container checkpointing (kubelet's ContainerCheckpoint feature) needs CRIU to dump the process
 * tree and an archive format restore understands; crisp does not integrate CRIU, so it says so
 * plainly instead of answering with a generic UNIMPLEMENTED.
 */
export async function checkpointContainer(_svc: CriService, req: CheckpointContainerRequest, _ctx: CallContext): Promise<CheckpointContainerResponse> {
  throw unimplemented(
    `CheckpointContainer (container "${req.containerId}"): checkpointing needs CRIU integration, which crisp does not have`,
  );
}
