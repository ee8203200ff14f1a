import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import test from 'ava';
import { CriClient } from '../../src/client/cri_client';
import { GrpcServer } from '../../src/server/grpc_server';
import type { RpcTable } from '../../src/server/instrument';
import { createLogger, silentLogger } from '../../src/log';
import { invalidArgument, notFound } from '../../src/util/errors';

async function serve(t: any, table: RpcTable, isReady: () => boolean = () => true, log = silentLogger()) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'crisp-test-'));
  const socket = path.join(dir, 'crisp.sock');
  const finished: [string, grpc.status][] = [];
  const server = new GrpcServer({ socket, table, log, isReady, onFinished: (m, code) => finished.push([m, code]) });
  await server.listen();
  const client = new CriClient(socket);
  t.teardown(async () => {
    client.close();
    await server.close(1000);
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { client, finished };
}

test('calls are refused with UNAVAILABLE until the daemon is ready', async (t) => {
  let ready = false;
  const { client } = await serve(t, { Version: async () => ({ runtimeName: 'x', version: '', runtimeVersion: '', runtimeApiVersion: 'v1' }) }, () => ready);
  const err = (await t.throwsAsync(client.call('version', {}))) as grpc.ServiceError;
  t.is(err.code, grpc.status.UNAVAILABLE);
  t.regex(err.details, /recovery has not finished/);
  ready = true;
  t.is((await client.call('version', {})).runtimeName, 'x');
});

test('errors map to gRPC codes; an unexpected exception is INTERNAL and does not kill the server', async (t) => {
  const { client, finished } = await serve(t, {
    PodSandboxStatus: async (req: { podSandboxId: string }) => {
      if (req.podSandboxId === '') throw invalidArgument('pod sandbox id is empty');
      throw notFound(`pod sandbox "${req.podSandboxId}" not found`);
    },
    ContainerStatus: async () => {
      throw new TypeError('boom');
    },
    Version: async () => ({ runtimeName: 'still-here', version: '', runtimeVersion: '', runtimeApiVersion: 'v1' }),
  });
  let err = (await t.throwsAsync(client.call('podSandboxStatus', { podSandboxId: '' }))) as grpc.ServiceError;
  t.is(err.code, grpc.status.INVALID_ARGUMENT);
  t.is(err.details, 'pod sandbox id is empty');
  err = (await t.throwsAsync(client.call('podSandboxStatus', { podSandboxId: 'abc' }))) as grpc.ServiceError;
  t.is(err.code, grpc.status.NOT_FOUND);
  t.is(err.details, 'pod sandbox "abc" not found');
  err = (await t.throwsAsync(client.call('containerStatus', { containerId: 'c' }))) as grpc.ServiceError;
  t.is(err.code, grpc.status.INTERNAL);
  t.is(err.details, 'boom');
  err = (await t.throwsAsync(client.call('removeImage', {}))) as grpc.ServiceError;
  t.is(err.code, grpc.status.UNIMPLEMENTED);
  t.is(err.details, 'RemoveImage is not implemented by crisp');
  t.is((await client.call('version', {})).runtimeName, 'still-here');
  t.deepEqual(
    finished.map(([m, c]) => `${m}:${grpc.status[c]}`),
    ['PodSandboxStatus:INVALID_ARGUMENT', 'PodSandboxStatus:NOT_FOUND', 'ContainerStatus:INTERNAL', 'RemoveImage:UNIMPLEMENTED', 'Version:OK'],
  );
});

test('server-streaming RPCs send every message and report errors as a status', async (t) => {
  const { client } = await serve(t, {
    StreamImages: async (req: { filter?: { image?: { image: string } } }, _ctx, send) => {
      if (req.filter?.image?.image === 'bad') throw invalidArgument('bad filter');
      for (let i = 0; i < 3; i++) await send({ images: [{ id: `sha256:${i}`, repoTags: [], repoDigests: [], size: 0n, username: '', pinned: false }] });
    },
  });
  const ids: string[] = [];
  for await (const chunk of client.stream('streamImages', {})) ids.push(...chunk.images.map((i: { id: string }) => i.id));
  t.deepEqual(ids, ['sha256:0', 'sha256:1', 'sha256:2']);
  const failing = client.stream('streamImages', { filter: { image: { image: 'bad' } } });
  const err = (await t.throwsAsync(async () => {
    for await (const _ of failing) {
      // drain
    }
  })) as grpc.ServiceError;
  t.is(err.code, grpc.status.INVALID_ARGUMENT);
  t.is(err.details, 'bad filter');
});

test('the same handlers serve runtime.v1alpha2 and tell the caller which API it used', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'crisp-test-'));
  const socket = path.join(dir, 'crisp.sock');
  const server = new GrpcServer({
    socket,
    table: { Version: async (_req, ctx) => ({ runtimeName: 'crisp', version: '0.1.0', runtimeVersion: '', runtimeApiVersion: ctx.apiVersion }) },
    log: silentLogger(),
    isReady: () => true,
  });
  await server.listen();
  const legacy = new CriClient(socket, 'v1alpha2');
  t.teardown(async () => {
    legacy.close();
    await server.close(1000);
    fs.rmSync(dir, { recursive: true, force: true });
  });
  t.is((await legacy.call('version', {})).runtimeApiVersion, 'v1alpha2');
});

test('trace logging of requests redacts registry credentials and environment values', async (t) => {
  const lines: string[] = [];
  const log = createLogger('trace', { write: (line: string) => lines.push(line) } as never);
  const { client } = await serve(
    t,
    {
      PullImage: async () => ({ imageRef: 'sha256:1' }),
      CreateContainer: async () => ({ containerId: 'c' }),
    },
    () => true,
    log,
  );
  await client.call('pullImage', {
    image: { image: 'registry.example/app:1' },
    auth: { username: 'robot', password: 'hunter2-password', auth: 'cm9ib3Q6aHVudGVyMg==', identityToken: 'id-token-secret', registryToken: 'reg-token-secret', serverAddress: 'registry.example' },
  });
  await client.call('createContainer', {
    podSandboxId: 'p',
    config: { metadata: { name: 'c', attempt: 0 }, image: { image: 'app' }, envs: [{ key: 'DB_PASSWORD', value: 'env-secret-value' }] },
  });
  await new Promise((r) => setTimeout(r, 50));
  const logged = lines.join('');
  t.regex(logged, /"msg":"request"/, 'requests are traced');
  for (const secret of ['hunter2-password', 'cm9ib3Q6aHVudGVyMg==', 'id-token-secret', 'reg-token-secret', 'env-secret-value']) {
    t.false(logged.includes(secret), `${secret} is not in the log`);
  }
  t.true(logged.includes('DB_PASSWORD'), 'the variable names stay, for debugging');
  t.true(logged.includes('registry.example/app:1'));
});
