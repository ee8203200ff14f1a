import type { PullImageRequest, PullImageResponse } from '../generated/runtime/v1/api';
import { invalidArgument } from '../util/errors';
import type { CallContext } from './instrument';
import type { CriService } from './service';

export async function pullImage(svc: CriService, req: PullImageRequest, ctx: CallContext): Promise<PullImageResponse> {
  const name = req.image?.image ?? '';
  if (!name) throw invalidArgument('image reference is empty');
  const sandbox = req.sandboxConfig?.metadata;
  ctx.log.info({ image: name, pod: sandbox ? `${sandbox.namespace}/${sandbox.name}` : undefined }, 'pulling image');
  const record = await svc.images.pull(name, req.auth, ctx.signal);
  return { imageRef: record.id };
}
