import type { RemoveImageRequest, RemoveImageResponse } from '../generated/runtime/v1/api';
import { invalidArgument } from '../util/errors';
import type { CallContext } from './instrument';
import type { CriService } from './service';

/** Removes the image with all its tags. Removing an image that is not there succeeds. */
export async function removeImage(svc: CriService, req: RemoveImageRequest, ctx: CallContext): Promise<RemoveImageResponse> {
  const name = req.image?.image ?? '';
  if (!name) throw invalidArgument('image is empty');
  const removed = await svc.images.remove(name);
  if (removed) ctx.log.info({ image: name }, 'image removed');
  return {};
}
