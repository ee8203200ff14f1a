import type { ImageFsInfoRequest, ImageFsInfoResponse } from '../generated/runtime/v1/api';
import type { CallContext } from './instrument';
import type { CriService } from './service';

export async function imageFsInfo(svc: CriService, _req: ImageFsInfoRequest, _ctx: CallContext): Promise<ImageFsInfoResponse> {
  const usage = svc.images.usage();
  return {
    imageFilesystems: [
      {
        timestamp: BigInt(Date.now()) * 1_000_000n,
        fsId: { mountpoint: usage.mountpoint },
        usedBytes: { value: BigInt(usage.bytes) },
        inodesUsed: { value: BigInt(usage.inodes) },
      },
    ],
    containerFilesystems: [],
  };
}
