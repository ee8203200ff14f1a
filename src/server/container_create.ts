import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { ContainerConfig, ContainerEventType, type CreateContainerRequest, type CreateContainerResponse } from '../generated/runtime/v1/api';
import { requestedCdiDevices } from '../container/cdi';
import { buildSpec, imageSubPath, imageVolumeKey, type ImageVolumeSource } from '../container/spec_builder';
import { type Container, containerNameKey } from '../container/container_store';
import { cgroupResources } from '../sandbox/pod_runtime';
import { markCreated, msToNanos } from '../state/container_state';
import { type SandboxNamespaces, sandboxNamespaces } from '../sandbox/sandbox_spec';
import type { Sandbox } from '../sandbox/sandbox_store';
import { CleanupStack } from '../util/cleanup';
import { errorMessage, failedPrecondition, internal, invalidArgument, notFound } from '../util/errors';
import { writeJsonAtomic } from '../util/fsutil';
import type { CallContext } from './instrument';
import type { CriService } from './service';

/**
 * Creates a container in a ready pod: its writable layer, its cgroup, its OCI spec, and — through
 * the pod's monitor — a process that sets itself up to the point of exec and waits for
 * StartContainer.
 * A kubelet retry of an in-flight create joins it instead of failing with "name is reserved".
 */
export async function createContainer(svc: CriService, req: CreateContainerRequest, ctx: CallContext): Promise<CreateContainerResponse> {
  const config = req.config;
  if (!config) throw invalidArgument('container config is required');
  if (!config.metadata?.name) throw invalidArgument('container metadata.name is empty');
  if (!req.podSandboxId) throw invalidArgument('pod sandbox id is empty');
  const sandbox = svc.sandboxes.resolve(req.podSandboxId);
  if (sandbox.state !== 'ready' || !svc.pods.alive(sandbox)) {
    throw failedPrecondition(`pod sandbox ${sandbox.id} is not ready: containers can only be created in a running pod`);
  }
  const { id } = await svc.containers.createOnce(containerNameKey(sandbox.id, config), () => doCreate(svc, sandbox, config, ctx));
  return { containerId: id };
}

async function doCreate(svc: CriService, sandbox: Sandbox, config: ContainerConfig, ctx: CallContext): Promise<string> {
  const imageName = config.image?.image ?? '';
  if (!imageName) throw invalidArgument('container image is empty');
  const image = svc.images.find(imageName);
  if (!image) throw notFound(`image "${imageName}" not found: pull it first`);
  const imageConfig = await svc.images.readConfig(image.id);
  const volumes = await resolveImageVolumes(svc, config);
  const cdiDevices = requestedCdiDevices(config);
  const cdi = cdiDevices.length > 0 ? await svc.cdi.resolve(cdiDevices) : undefined;
  const id = crypto.randomBytes(32).toString('hex');
  const log = ctx.log.child({ container: id.slice(0, 12) });
  const logPath = config.logPath && sandbox.logDirectory ? path.join(sandbox.logDirectory, config.logPath) : '';
  const cleanup = new CleanupStack();
  // The container's cgroup lives next to the sandbox's, under kubelet's pod cgroup.
  const cgroupParent = svc.pods.cgroupParentOf(sandbox);
  const layout = svc.pods.cgroupLayout(cgroupParent, id);
  const namespaces = sandboxNamespaces(sandbox.config);

  const container: Container = await svc.containers.create({
    version: 1,
    id,
    sandboxId: sandbox.id,
    config: ContainerConfig.toJSON(config),
    state: 'creating',
    createdAt: msToNanos(Date.now()),
    startedAt: '0',
    finishedAt: '0',
    image: imageName,
    imageId: image.id,
    chainIds: image.chainIds,
    imageVolumeChainIds: volumes.chainIds,
    logPath,
    // Recorded before it exists: undoing removes it if it does.
    cgroupPath: layout.path,
    pid: 0,
    exitCode: 0,
    reason: '',
    message: '',
    stage: 'creating cgroup',
  });
  cleanup.push('container record', () => svc.containers.delete(container));
  try {
    cleanup.push('cgroup', () => svc.pods.removeCgroup(container.record.cgroupPath));
    const lowerDirs = svc.images.layerDirs(image);
    // The cgroup, the spec and the directories are independent: all three at once, and all
    // settle before anything is undone.
    const [cgroup, built, dirs] = await Promise.allSettled([
      svc.pods.createCgroup(cgroupParent, id, cgroupResources(config.linux?.resources)).then((created) => {
        // The process is moved into it at the end of this call; the lock wait that move may
        // need overlaps with what comes before it.
        svc.pods.primeCgroupMigration();
        return created;
      }),
      buildSpec({
        containerId: id,
        config,
        sandboxConfig: sandbox.config,
        sandbox: {
          id: sandbox.id,
          dir: sandbox.dir,
          namespaces,
          nsPaths: svc.pods.namespacePaths(sandbox),
        },
        image: { config: imageConfig, lowerDirs },
        rootfs: { upperDir: container.upperDir, workDir: container.workDir },
        cgroup: { version: layout.version, paths: layout.paths },
        readFileInImage: (p) => svc.imageFiles.get(lowerDirs, p),
        imageVolumes: volumes.sources,
        cdi,
        emptyLowerDir: svc.emptyLowerDir,
      }),
      (async () => {
        // Local mkdirs take microseconds; a trip to the threadpool each would cost more.
        fs.mkdirSync(container.upperDir, { mode: 0o755 });
        // In a pod user namespace the writable layer's root belongs to the container's root.
        const root = podRootOnNode(sandbox, namespaces);
        if (root) fs.chownSync(container.upperDir, root.uid, root.gid);
        fs.mkdirSync(container.workDir, { mode: 0o700 });
        fs.mkdirSync(path.join(container.bundleDir, 'rootfs'), { mode: 0o755 });
        // kubelet's log directory, usually there already.
        if (logPath) await fsp.mkdir(path.dirname(logPath), { recursive: true, mode: 0o755 });
      })(),
    ]);
    if (cgroup.status === 'rejected') throw cgroup.reason;
    if (built.status === 'rejected') throw built.reason;
    if (dirs.status === 'rejected') throw dirs.reason;
    const spec = built.value;
    // Not fsynced: a crash before the container is created makes recovery undo it anyway.
    await writeJsonAtomic(path.join(container.bundleDir, 'config.json'), spec, 0o600, { durable: false });

    const user = spec.process?.user;
    const runtime = await svc.pods.runtimeOf(sandbox);
    cleanup.push('container process', () => svc.pods.killContainer(sandbox, id));
    const created = await runtime.create({
      containerId: id,
      bundleDir: container.bundleDir,
      // Without a log path from kubelet the output still has to be drained somewhere.
      logPath: logPath || '/dev/null',
      tty: config.tty,
      stdin: config.stdin,
      stdinOnce: config.stdinOnce,
      // The monitor answers once the process is forked; its set-up (mounts, devices, pivot)
      // overlaps with this reply and the StartContainer that follows, which gets any set-up
      // failure, as it would from a runc-based runtime.
      earlyReply: true,
    });
    await svc.containers.update(container, (r) => {
      markCreated(r, created.pid);
      if (user) r.user = { uid: user.uid, gid: user.gid, additionalGids: user.additionalGids ?? [] };
    });
    cleanup.release();
    svc.events.publishContainer(id, sandbox, ContainerEventType.CONTAINER_CREATED_EVENT);
    log.info({ name: config.metadata!.name, pod: sandbox.id.slice(0, 12), image: imageName }, 'container created');
    return id;
  } catch (err) {
    log.warn({ err: errorMessage(err), stage: container.record.stage }, 'container creation failed; undoing');
    await cleanup.unwind(log);
    throw err;
  }
}

/**
 * What each image volume (a mount with `image` set, KEP-4639) shows: the image must have been
 * pulled (kubelet pulls it first); its sub path must exist in the image as a directory or file.
 * Also the snapshots these volumes use, which image garbage collection must keep.
 */
async function resolveImageVolumes(svc: CriService, config: ContainerConfig): Promise<{ sources: Map<string, ImageVolumeSource>; chainIds: string[] }> {
  const sources = new Map<string, ImageVolumeSource>();
  const chainIds = new Set<string>();
  for (const m of config.mounts) {
    const ref = m.image?.image;
    if (!ref || sources.has(imageVolumeKey(m))) continue;
    const subPath = imageSubPath(m);
    const image = svc.images.find(ref);
    if (!image) throw notFound(`image "${ref}" of the volume at "${m.containerPath}" not found: pull it first`);
    const lowerDirs = svc.images.layerDirs(image);
    const entry = await svc.native.imageEntry(lowerDirs, subPath);
    if (entry.kind === 'dir') sources.set(imageVolumeKey(m), { kind: 'dir', layers: entry.layers });
    else if (entry.kind === 'file') sources.set(imageVolumeKey(m), { kind: 'file', path: entry.path });
    else {
      const what = entry.kind === 'missing' ? 'does not exist' : 'is neither a directory nor a regular file';
      throw invalidArgument(`image_sub_path "${m.imageSubPath}" of the volume at "${m.containerPath}" ${what} in image "${ref}"`);
    }
    for (const c of image.chainIds) chainIds.add(c);
  }
  return { sources, chainIds: [...chainIds] };
}

/** The node ids of a pod user namespace's root (uid and gid 0 inside); undefined without one. */
function podRootOnNode(sandbox: Sandbox, namespaces: SandboxNamespaces): { uid: number; gid: number } | undefined {
  const userns = namespaces.userns;
  if (!userns) return undefined;
  const toNode = (list: { containerId: number; hostId: number; size: number }[]) => {
    const m = list.find((x) => x.containerId === 0);
    // RunPodSandbox refused pods whose mappings leave id 0 out.
    if (!m) throw internal(`pod ${sandbox.id}: its user namespace does not map id 0`);
    return m.hostId;
  };
  return { uid: toNode(userns.uidMappings), gid: toNode(userns.gidMappings) };
}
