import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import test from 'ava';
import { CriClient } from '../../src/client/cri_client';
import { silentLogger } from '../../src/log';
import { servedApiVersions } from '../../src/server/api_versions';
import { GrpcServer } from '../../src/server/grpc_server';
import type { RpcTable } from '../../src/server/instrument';

async function serve(t: any, table: RpcTable) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'crisp-test-'));
  const socket = path.join(dir, 'crisp.sock');
  const server = new GrpcServer({ socket, table, log: silentLogger(), isReady: () => true });
  await server.listen();
  const v1 = new CriClient(socket, 'v1');
  const v1alpha2 = new CriClient(socket, 'v1alpha2');
  t.teardown(async () => {
    v1.close();
    v1alpha2.close();
    await server.close(1000);
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { v1, v1alpha2 };
}

const versionTable: RpcTable = {
  Version: async (_req, c) => ({ version: '0.1.0', runtimeName: 'crisp', runtimeVersion: '', runtimeApiVersion: c.apiVersion }),
};

test('[grpc] api_versions = ["v1alpha2"]: runtime.v1 calls answer UNIMPLEMENTED (what makes clients fall back), v1alpha2 ones are served', async (t) => {
  const { v1, v1alpha2 } = await serve(t, servedApiVersions(versionTable, ['v1alpha2']));
  const err = (await t.throwsAsync(v1.call('version', {}))) as grpc.ServiceError;
  t.is(err.code, grpc.status.UNIMPLEMENTED);
  t.is(err.details, 'runtime.v1 is not served: crisp is configured to serve runtime.v1alpha2 only ([grpc] api_versions)');
  t.is((await v1alpha2.call('version', {})).runtimeApiVersion, 'v1alpha2');
});

test('[grpc] api_versions = ["v1"] refuses v1alpha2; both versions leave the table as it is', async (t) => {
  const { v1, v1alpha2 } = await serve(t, servedApiVersions(versionTable, ['v1']));
  t.is((await v1.call('version', {})).runtimeApiVersion, 'v1');
  t.is(((await t.throwsAsync(v1alpha2.call('version', {}))) as grpc.ServiceError).code, grpc.status.UNIMPLEMENTED);
  t.is(servedApiVersions(versionTable, ['v1alpha2', 'v1']), versionTable);
});
