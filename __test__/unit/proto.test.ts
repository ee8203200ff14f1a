import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import test from 'ava';
import * as grpc from '@grpc/grpc-js';
import { BinaryWriter } from '@bufbuild/protobuf/wire';

import * as cri from '../../src/generated/runtime/v1/api';

// ---------------------------------------------------------------------------
// Service definitions

interface Codec<T> {
  create(): T;
}

interface ExpectedRpc {
  method: string;
  request: Codec<unknown>;
  response: Codec<unknown>;
  serverStreaming: boolean;
}

function rpc<Req, Res>(
  method: string,
  request: Codec<Req>,
  response: Codec<Res>,
  serverStreaming = false,
): ExpectedRpc {
  return { method, request, response, serverStreaming };
}

const expectedRuntimeRpcs: ExpectedRpc[] = [
  rpc('Version', cri.VersionRequest, cri.VersionResponse),
  rpc('RunPodSandbox', cri.RunPodSandboxRequest, cri.RunPodSandboxResponse),
  rpc('StopPodSandbox', cri.StopPodSandboxRequest, cri.StopPodSandboxResponse),
  rpc('RemovePodSandbox', cri.RemovePodSandboxRequest, cri.RemovePodSandboxResponse),
  rpc('PodSandboxStatus', cri.PodSandboxStatusRequest, cri.PodSandboxStatusResponse),
  rpc('ListPodSandbox', cri.ListPodSandboxRequest, cri.ListPodSandboxResponse),
  rpc('StreamPodSandboxes', cri.StreamPodSandboxesRequest, cri.StreamPodSandboxesResponse, true),
  rpc('CreateContainer', cri.CreateContainerRequest, cri.CreateContainerResponse),
  rpc('StartContainer', cri.StartContainerRequest, cri.StartContainerResponse),
  rpc('StopContainer', cri.StopContainerRequest, cri.StopContainerResponse),
  rpc('RemoveContainer', cri.RemoveContainerRequest, cri.RemoveContainerResponse),
  rpc('ListContainers', cri.ListContainersRequest, cri.ListContainersResponse),
  rpc('StreamContainers', cri.StreamContainersRequest, cri.StreamContainersResponse, true),
  rpc('ContainerStatus', cri.ContainerStatusRequest, cri.ContainerStatusResponse),
  rpc('UpdateContainerResources', cri.UpdateContainerResourcesRequest, cri.UpdateContainerResourcesResponse),
  rpc('ReopenContainerLog', cri.ReopenContainerLogRequest, cri.ReopenContainerLogResponse),
  rpc('ExecSync', cri.ExecSyncRequest, cri.ExecSyncResponse),
  rpc('Exec', cri.ExecRequest, cri.ExecResponse),
  rpc('Attach', cri.AttachRequest, cri.AttachResponse),
  rpc('PortForward', cri.PortForwardRequest, cri.PortForwardResponse),
  rpc('ContainerStats', cri.ContainerStatsRequest, cri.ContainerStatsResponse),
  rpc('ListContainerStats', cri.ListContainerStatsRequest, cri.ListContainerStatsResponse),
  rpc('StreamContainerStats', cri.StreamContainerStatsRequest, cri.StreamContainerStatsResponse, true),
  rpc('PodSandboxStats', cri.PodSandboxStatsRequest, cri.PodSandboxStatsResponse),
  rpc('ListPodSandboxStats', cri.ListPodSandboxStatsRequest, cri.ListPodSandboxStatsResponse),
  rpc('StreamPodSandboxStats', cri.StreamPodSandboxStatsRequest, cri.StreamPodSandboxStatsResponse, true),
  rpc('UpdateRuntimeConfig', cri.UpdateRuntimeConfigRequest, cri.UpdateRuntimeConfigResponse),
  rpc('Status', cri.StatusRequest, cri.StatusResponse),
  rpc('CheckpointContainer', cri.CheckpointContainerRequest, cri.CheckpointContainerResponse),
  rpc('GetContainerEvents', cri.GetEventsRequest, cri.ContainerEventResponse, true),
  rpc('ListMetricDescriptors', cri.ListMetricDescriptorsRequest, cri.ListMetricDescriptorsResponse),
  rpc('ListPodSandboxMetrics', cri.ListPodSandboxMetricsRequest, cri.ListPodSandboxMetricsResponse),
  rpc('StreamPodSandboxMetrics', cri.StreamPodSandboxMetricsRequest, cri.StreamPodSandboxMetricsResponse, true),
  rpc('RuntimeConfig', cri.RuntimeConfigRequest, cri.RuntimeConfigResponse),
  rpc('UpdatePodSandboxResources', cri.UpdatePodSandboxResourcesRequest, cri.UpdatePodSandboxResourcesResponse),
];

const expectedImageRpcs: ExpectedRpc[] = [
  rpc('ListImages', cri.ListImagesRequest, cri.ListImagesResponse),
  rpc('StreamImages', cri.StreamImagesRequest, cri.StreamImagesResponse, true),
  rpc('ImageStatus', cri.ImageStatusRequest, cri.ImageStatusResponse),
  rpc('PullImage', cri.PullImageRequest, cri.PullImageResponse),
  rpc('RemoveImage', cri.RemoveImageRequest, cri.RemoveImageResponse),
  rpc('ImageFsInfo', cri.ImageFsInfoRequest, cri.ImageFsInfoResponse),
];

const lowerFirst = (s: string): string => s.charAt(0).toLowerCase() + s.slice(1);

function assertServiceMatches(
  t: import('ava').ExecutionContext,
  serviceName: string,
  definition: grpc.ServiceDefinition,
  expected: ExpectedRpc[],
): void {
  t.deepEqual(
    Object.keys(definition).sort(),
    expected.map((e) => lowerFirst(e.method)).sort(),
    `${serviceName} exposes exactly the expected RPCs`,
  );
  for (const e of expected) {
    const def = definition[lowerFirst(e.method)];
    if (def === undefined) continue; // already reported by the key comparison
    t.is(def.path, `/runtime.v1.${serviceName}/${e.method}`);
    t.false(def.requestStream, `${e.method} takes a single request`);
    t.is(def.responseStream, e.serverStreaming, `${e.method} streaming flag`);
    // Decoding an empty payload yields the all-defaults message, whose shape
    // identifies the message type bound to the method.
    t.deepEqual(def.requestDeserialize(Buffer.alloc(0)), e.request.create(), `${e.method} request type`);
    t.deepEqual(def.responseDeserialize(Buffer.alloc(0)), e.response.create(), `${e.method} response type`);
  }
}

test('RuntimeService has the CRI v1 RPC set', (t) => {
  t.is(expectedRuntimeRpcs.length, 35);
  assertServiceMatches(t, 'RuntimeService', cri.RuntimeServiceService, expectedRuntimeRpcs);
  t.is(cri.RuntimeServiceClient.serviceName, 'runtime.v1.RuntimeService');
});

test('ImageService has the CRI v1 RPC set', (t) => {
  t.is(expectedImageRpcs.length, 6);
  assertServiceMatches(t, 'ImageService', cri.ImageServiceService, expectedImageRpcs);
  t.is(cri.ImageServiceClient.serviceName, 'runtime.v1.ImageService');
});

// ---------------------------------------------------------------------------
// Round trips

const nanosAbove2p53 = 1_767_225_600_123_456_789n; // 2026-01-01T00:00:00.123456789Z

test('PodSandboxStatusResponse round-trips int64 timestamps and maps', (t) => {
  const status = cri.PodSandboxStatusResponse.fromPartial({
    status: {
      id: 'a'.repeat(64),
      metadata: { name: 'web-0', uid: '3f2b6e1c-7d0a-4b8e-9f51-2c6d9e0a1b7f', namespace: 'default', attempt: 2 },
      state: cri.PodSandboxState.SANDBOX_NOTREADY,
      createdAt: nanosAbove2p53,
      network: { ip: '10.88.0.7', additionalIps: [{ ip: 'fd00::7' }] },
      labels: { app: 'web', 'io.kubernetes.pod.name': 'web-0', empty: '' },
      annotations: { 'kubernetes.io/config.seen': '2026-01-01T00:00:00Z', 'ünïcode/ключ': 'värde ✓' },
      runtimeHandler: 'runc',
    },
    info: { info: '{"pid":1234}' },
    timestamp: 2n ** 63n - 1n,
  });

  const bytes = cri.PodSandboxStatusResponse.encode(status).finish();
  const decoded = cri.PodSandboxStatusResponse.decode(bytes);

  t.deepEqual(decoded, status);
  t.is(typeof decoded.status?.createdAt, 'bigint');
  t.is(decoded.status?.createdAt, nanosAbove2p53);
  t.is(decoded.timestamp, 9_223_372_036_854_775_807n);
  t.deepEqual(decoded.status?.labels, { app: 'web', 'io.kubernetes.pod.name': 'web-0', empty: '' });
});

test('negative int64 and full-range uint64 survive a round trip', (t) => {
  const resources = cri.LinuxContainerResources.fromPartial({
    cpuPeriod: 100_000n,
    cpuQuota: -1n,
    cpuShares: 2n,
    memoryLimitInBytes: 2n ** 62n,
    oomScoreAdj: -998n,
    memorySwapLimitInBytes: -(2n ** 63n),
    hugepageLimits: [{ pageSize: '1GB', limit: 2n ** 64n - 1n }],
    unified: { 'memory.high': 'max', 'io.weight': 'default 100' },
  });
  const decoded = cri.LinuxContainerResources.decode(cri.LinuxContainerResources.encode(resources).finish());
  t.deepEqual(decoded, resources);
  t.is(decoded.hugepageLimits[0]?.limit, 18_446_744_073_709_551_615n);
  t.is(decoded.memorySwapLimitInBytes, -9_223_372_036_854_775_808n);
});

test('ContainerStats round-trips nested optional wrappers and doubles', (t) => {
  const stats = cri.ContainerStats.fromPartial({
    attributes: { id: 'c1', metadata: { name: 'app', attempt: 0 }, labels: { a: 'b' }, annotations: {} },
    cpu: {
      timestamp: nanosAbove2p53,
      usageCoreNanoSeconds: { value: 2n ** 60n + 3n },
      psi: { Full: { Total: 12n, Avg10: 0.25, Avg60: 1.5, Avg300: 0 }, Some: undefined },
    },
    memory: { timestamp: nanosAbove2p53 + 1n, workingSetBytes: { value: 0n } },
  });
  const decoded = cri.ContainerStats.decode(cri.ContainerStats.encode(stats).finish());
  t.deepEqual(decoded, stats);
  // A set wrapper holding zero is distinct from an absent wrapper.
  t.deepEqual(decoded.memory?.workingSetBytes, { value: 0n });
  t.is(decoded.memory?.availableBytes, undefined);
});

test('empty messages encode to zero bytes and decode to plain objects', (t) => {
  t.is(cri.StopPodSandboxResponse.encode(cri.StopPodSandboxResponse.create()).finish().length, 0);
  t.deepEqual(cri.GetEventsRequest.decode(new Uint8Array()), {});
  // Defaults are not written on the wire in proto3.
  t.is(cri.VersionRequest.encode({ version: '' }).finish().length, 0);
});

// ---------------------------------------------------------------------------
// Wire layout (field numbers and wire types checked byte by byte)

const VARINT = 0;
const FIXED64 = 1;
const LEN = 2;

function varint(value: bigint): number[] {
  let v = BigInt.asUintN(64, value);
  const out: number[] = [];
  while (v >= 0x80n) {
    out.push(Number(v & 0x7fn) | 0x80);
    v >>= 7n;
  }
  out.push(Number(v));
  return out;
}

const tag = (field: number, wireType: number): number[] => varint(BigInt((field << 3) | wireType));

const bytesOf = (u8: Uint8Array): number[] => Array.from(u8);

test('PodSandboxMetadata.attempt is field 4 (varint)', (t) => {
  const bytes = cri.PodSandboxMetadata.encode(cri.PodSandboxMetadata.fromPartial({ attempt: 3 })).finish();
  t.deepEqual(bytesOf(bytes), [...tag(4, VARINT), 3]);
  t.deepEqual(tag(4, VARINT), [0x20]);
});

test('ContainerConfig.linux is field 15 and CDI_devices field 17', (t) => {
  const withLinux = cri.ContainerConfig.encode(cri.ContainerConfig.fromPartial({ linux: {} })).finish();
  t.deepEqual(bytesOf(withLinux), [...tag(15, LEN), 0]);

  const withCdi = cri.ContainerConfig.encode(
    cri.ContainerConfig.fromPartial({ CDIDevices: [{ name: 'v/c=d' }] }),
  ).finish();
  t.deepEqual(bytesOf(withCdi), [...tag(17, LEN), 7, ...tag(1, LEN), 5, ...Buffer.from('v/c=d')]);
  t.deepEqual(tag(17, LEN), [0x8a, 0x01]);
});

test('int64 timestamps are plain varints, negative values use ten bytes', (t) => {
  const sandbox = cri.PodSandbox.encode(cri.PodSandbox.fromPartial({ createdAt: nanosAbove2p53 })).finish();
  t.deepEqual(bytesOf(sandbox), [...tag(4, VARINT), ...varint(nanosAbove2p53)]);

  const adj = cri.LinuxContainerResources.encode(cri.LinuxContainerResources.fromPartial({ oomScoreAdj: -1n })).finish();
  t.deepEqual(bytesOf(adj), [...tag(5, VARINT), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
});

test('security context fields use the out-of-order upstream numbers', (t) => {
  const sandboxCtx = cri.LinuxSandboxSecurityContext.encode(
    cri.LinuxSandboxSecurityContext.fromPartial({
      runAsGroup: { value: 5n },
      supplementalGroupsPolicy: cri.SupplementalGroupsPolicy.Strict,
    }),
  ).finish();
  t.deepEqual(bytesOf(sandboxCtx), [...tag(8, LEN), 2, ...tag(1, VARINT), 5, ...tag(11, VARINT), 1]);

  const containerCtx = cri.LinuxContainerSecurityContext.encode(
    cri.LinuxContainerSecurityContext.fromPartial({
      supplementalGroups: [1000n, 2000n],
      runAsGroup: { value: 0n },
      supplementalGroupsPolicy: cri.SupplementalGroupsPolicy.Strict,
    }),
  ).finish();
  t.deepEqual(bytesOf(containerCtx), [
    // A wrapper holding zero is still present: an empty sub-message.
    ...tag(12, LEN), 0,
    // proto3 packs repeated scalars by default
    ...tag(8, LEN), 4, ...varint(1000n), ...varint(2000n),
    ...tag(17, VARINT), 1,
  ]);
});

test('newer fields sit at their upstream numbers', (t) => {
  const image = cri.ImageSpec.encode(cri.ImageSpec.fromPartial({ userSpecifiedImage: 'x', imageRef: 'y' })).finish();
  t.deepEqual(bytesOf(image), [...tag(18, LEN), 1, 0x78, ...tag(20, LEN), 1, 0x79]);

  const status = cri.ContainerStatus.encode(
    cri.ContainerStatus.fromPartial({ stopSignal: cri.Signal.SIGKILL }),
  ).finish();
  t.deepEqual(bytesOf(status), [...tag(19, VARINT), 13]);

  const exec = cri.ExecRequest.encode(cri.ExecRequest.fromPartial({ auditRequestId: 'r' })).finish();
  t.deepEqual(bytesOf(exec), [...tag(7, LEN), 1, 0x72]);
  const attach = cri.AttachRequest.encode(cri.AttachRequest.fromPartial({ auditRequestId: 'r' })).finish();
  t.deepEqual(bytesOf(attach), [...tag(6, LEN), 1, 0x72]);

  const mount = cri.Mount.encode(cri.Mount.fromPartial({ imageSubPath: 's', recursiveReadOnly: true })).finish();
  t.deepEqual(bytesOf(mount), [...tag(8, VARINT), 1, ...tag(10, LEN), 1, 0x73]);

  const psi = cri.PsiData.encode(cri.PsiData.fromPartial({ Avg10: 1 })).finish();
  const one = Buffer.alloc(8);
  one.writeDoubleLE(1);
  t.deepEqual(bytesOf(psi), [...tag(2, FIXED64), ...one]);

  const streamed = cri.StreamPodSandboxesResponse.encode(
    cri.StreamPodSandboxesResponse.fromPartial({ podSandboxes: [{ id: 'p' }] }),
  ).finish();
  t.deepEqual(bytesOf(streamed), [...tag(1, LEN), 3, ...tag(1, LEN), 1, 0x70]);
});

test('maps are encoded as repeated key/value entry messages', (t) => {
  const bytes = cri.PodSandboxConfig.encode(cri.PodSandboxConfig.fromPartial({ labels: { k: 'v' } })).finish();
  t.deepEqual(bytesOf(bytes), [...tag(6, LEN), 6, ...tag(1, LEN), 1, 0x6b, ...tag(2, LEN), 1, 0x76]);
});

test('decoder accepts unpacked repeated scalars and skips unknown fields', (t) => {
  const w = new BinaryWriter();
  w.uint32((8 << 3) | VARINT).int64(7n);
  w.uint32((8 << 3) | VARINT).int64(9n);
  w.uint32((999 << 3) | LEN).string('from a newer kubelet');
  w.uint32((7 << 3) | VARINT).bool(true);
  const decoded = cri.LinuxContainerSecurityContext.decode(w.finish());
  t.deepEqual(decoded.supplementalGroups, [7n, 9n]);
  t.true(decoded.readonlyRootfs);
});

test('enums are numeric and keep unknown values', (t) => {
  t.is(cri.ContainerState.CONTAINER_EXITED, 2);
  t.is(cri.SecurityProfile_ProfileType.Localhost, 2);
  t.is(cri.CgroupDriver.CGROUPFS, 1);
  const decoded = cri.ContainerStateValue.decode(Uint8Array.from([...tag(1, VARINT), 42]));
  t.is(decoded.state as number, 42);
});

// ---------------------------------------------------------------------------
// Generated server and client interoperate over a unix socket

test('generated client and server talk over a unix socket, including server streaming', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'crisp-proto-test-'));
  const address = `unix://${path.join(dir, 'cri.sock')}`;
  const server = new grpc.Server();
  t.teardown(() => {
    server.forceShutdown();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const sandboxes = [1, 2, 3].map((n) =>
    cri.PodSandbox.fromPartial({ id: `sb${n}`, createdAt: nanosAbove2p53 + BigInt(n), labels: { n: String(n) } }),
  );
  const impl: Pick<cri.RuntimeServiceServer, 'version' | 'streamPodSandboxes'> = {
    version: (call, callback) => {
      callback(null, { version: call.request.version, runtimeName: 'crisp', runtimeVersion: '0.1.0', runtimeApiVersion: 'v1' });
    },
    streamPodSandboxes: (call) => {
      const wanted = call.request.filter?.labelSelector ?? {};
      const matching = sandboxes.filter((s) => Object.entries(wanted).every(([k, v]) => s.labels[k] === v));
      // Two chunks to exercise multi-message streams.
      call.write({ podSandboxes: matching.slice(0, 1) });
      call.write({ podSandboxes: matching.slice(1) });
      call.end();
    },
  };
  server.addService(cri.RuntimeServiceService, impl);
  await new Promise<void>((resolve, reject) => {
    server.bindAsync(address, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve()));
  });

  const client = new cri.RuntimeServiceClient(address, grpc.credentials.createInsecure());
  t.teardown(() => client.close());

  const version = await new Promise<cri.VersionResponse>((resolve, reject) => {
    client.version({ version: 'v1' }, (err, res) => (err ? reject(err) : resolve(res)));
  });
  t.deepEqual(version, { version: 'v1', runtimeName: 'crisp', runtimeVersion: '0.1.0', runtimeApiVersion: 'v1' });

  const received: cri.PodSandbox[] = [];
  for await (const chunk of client.streamPodSandboxes({ filter: undefined }) as AsyncIterable<cri.StreamPodSandboxesResponse>) {
    received.push(...chunk.podSandboxes);
  }
  t.deepEqual(received, sandboxes);

  const unimplemented = await new Promise<grpc.ServiceError>((resolve, reject) => {
    client.status({ verbose: false }, (err) => (err ? resolve(err) : reject(new Error('expected an error'))));
  });
  t.is(unimplemented.code, grpc.status.UNIMPLEMENTED);
});
