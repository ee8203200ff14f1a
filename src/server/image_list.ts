import type { ImageFilter, ListImagesRequest, ListImagesResponse, StreamImagesRequest, StreamImagesResponse } from '../generated/runtime/v1/api';
import type { ImageRecord } from '../image/image_store';
import { toCriImage } from './image_status';
import type { CallContext } from './instrument';
import type { CriService } from './service';

/** Images per message of StreamImages: far below the 16 MiB limit even with many tags each. */
const STREAM_CHUNK = 200;

function filtered(svc: CriService, filter: ImageFilter | undefined): ImageRecord[] {
  const name = filter?.image?.image ?? '';
  if (!name) return svc.images.list();
  const match = svc.images.find(name);
  return match ? [match] : [];
}

export async function listImages(svc: CriService, req: ListImagesRequest, _ctx: CallContext): Promise<ListImagesResponse> {
  return { images: filtered(svc, req.filter).map(toCriImage) };
}

export async function streamImages(
  svc: CriService,
  req: StreamImagesRequest,
  _ctx: CallContext,
  send: (message: StreamImagesResponse) => Promise<void>,
): Promise<void> {
  const images = filtered(svc, req.filter);
  for (let i = 0; i < images.length; i += STREAM_CHUNK) {
    await send({ images: images.slice(i, i + STREAM_CHUNK).map(toCriImage) });
  }
}
