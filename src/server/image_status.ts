import type { Image, ImageStatusRequest, ImageStatusResponse } from '../generated/runtime/v1/api';
import type { ImageRecord } from '../image/image_store';
import { invalidArgument } from '../util/errors';
import type { CallContext } from './instrument';
import type { CriService } from './service';

/** "1000", "1000:1000" → uid; "app" or "app:staff" → username; "" → neither (containerd's rule). */
export function userOfImage(user: string): { uid?: bigint; username: string } {
  const name = user.split(':')[0];
  if (name === '') return { username: '' };
  if (/^\d+$/.test(name)) return { uid: BigInt(name), username: '' };
  return { username: name };
}

export function toCriImage(record: ImageRecord): Image {
  const user = userOfImage(record.user);
  return {
    id: record.id,
    repoTags: record.repoTags,
    repoDigests: record.repoDigests,
    size: BigInt(record.size),
    uid: user.uid === undefined ? undefined : { value: user.uid },
    username: user.username,
    spec: { image: record.id, annotations: {}, userSpecifiedImage: '', runtimeHandler: '', imageRef: '' },
    pinned: record.pinned,
  };
}

export async function imageStatus(svc: CriService, req: ImageStatusRequest, _ctx: CallContext): Promise<ImageStatusResponse> {
  const name = req.image?.image ?? '';
  if (!name) throw invalidArgument('image is empty');
  // A missing image is an empty response, not an error: kubelet checks presence this way.
  const record = svc.images.find(name);
  if (!record) return { image: undefined, info: {} };
  const info: Record<string, string> = {};
  if (req.verbose) {
    const config = await svc.images.readConfig(record.id);
    info.info = JSON.stringify({
      chainID: record.chainIds[record.chainIds.length - 1] ?? '',
      manifestDigest: record.manifestDigest,
      manifestMediaType: record.manifestMediaType,
      imageSpec: config,
    });
  }
  return { image: toCriImage(record), info };
}
