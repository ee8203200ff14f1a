import * as path from 'node:path';
import type { FilesystemUsage, ImageFsInfoRequest, ImageFsInfoResponse } from '../generated/runtime/v1/api';
import type { CallContext } from './instrument';
import type { CriService } from './service';

function usage(mountpoint: string, bytes: number | bigint, inodes: number | bigint, timestamp: bigint): FilesystemUsage {
  return { timestamp, fsId: { mountpoint }, usedBytes: { value: BigInt(bytes) }, inodesUsed: { value: BigInt(inodes) } };
}

/**
 * The image filesystem (unpacked layers, measured when unpacked) and the container filesystem
 * (the containers' writable layers, measured in the background by the stats collector). Both live
 * under the root directory, on one device, so kubelet does not treat them as split filesystems.
 */
export async function imageFsInfo(svc: CriService, _req: ImageFsInfoRequest, _ctx: CallContext): Promise<ImageFsInfoResponse> {
  const now = BigInt(Date.now()) * 1_000_000n;
  const images = svc.images.usage();
  const containers = svc.containers.list();
  const layers = await svc.stats.layers.get(containers.map((c) => ({ id: c.id, dir: c.layerDir })));
  let bytes = 0n;
  let inodes = 0n;
  for (const sample of layers.values()) {
    bytes += BigInt(sample.usage.bytes);
    inodes += BigInt(sample.usage.inodes);
  }
  return {
    imageFilesystems: [usage(images.mountpoint, images.bytes, images.inodes, now)],
    containerFilesystems: [usage(path.join(svc.config.root, 'containers'), bytes, inodes, now)],
  };
}
