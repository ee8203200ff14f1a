/**
 * Images both runtimes pull from the one local registry: the fixtures, and the sandbox ("pause")
 * image containerd needs for every pod, built here from bench/pause/pause.c since there is no
 * public registry to take it from.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { request } from 'node:http';
import * as path from 'node:path';
import { gzipSync } from 'node:zlib';
import { writeTar } from '../../__test__/fixtures/tar';
import type { RegistryHandle } from '../../__test__/fixtures/registry';
import { run } from './host';

const REPO_ROOT = path.resolve(__dirname, '..', '..', '..');
const PAUSE_SOURCE = path.join(REPO_ROOT, 'bench', 'pause', 'pause.c');
/** Fixed timestamps keep the image digest stable across runs. */
const EPOCH = 1704067200;
const CREATED = new Date(EPOCH * 1000).toISOString();

const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const OCI_CONFIG = 'application/vnd.oci.image.config.v1+json';
const OCI_LAYER_GZIP = 'application/vnd.oci.image.layer.v1.tar+gzip';

const digestOf = (data: Buffer): string => `sha256:${createHash('sha256').update(data).digest('hex')}`;

interface Response {
  status: number;
  location?: string;
  body: string;
}

function httpCall(method: string, url: string, body?: Buffer, contentType?: string): Promise<Response> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { 'content-length': String(body?.length ?? 0) };
    if (contentType) headers['content-type'] = contentType;
    const req = request(url, { method, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, location: res.headers.location, body: Buffer.concat(chunks).toString('utf8') }),
      );
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

async function pushBlob(registry: RegistryHandle, repository: string, blob: Buffer): Promise<{ digest: string; size: number }> {
  const digest = digestOf(blob);
  const start = await httpCall('POST', `${registry.url}/v2/${repository}/blobs/uploads/`);
  if (start.status !== 202 || !start.location) throw new Error(`start upload to ${repository}: HTTP ${start.status} ${start.body}`);
  const location = new URL(start.location, registry.url);
  location.searchParams.set('digest', digest);
  const put = await httpCall('PUT', location.toString(), blob, 'application/octet-stream');
  if (put.status !== 201) throw new Error(`upload ${digest} to ${repository}: HTTP ${put.status} ${put.body}`);
  return { digest, size: blob.length };
}

/**
 * Compiles the pause program statically, packs it as a one-layer OCI image and pushes it to
 * `registry` as `pause:bench`. Returns the image reference.
 */
export async function pushPauseImage(registry: RegistryHandle, workDir: string): Promise<string> {
  const binary = path.join(workDir, 'pause');
  await run('gcc', ['-Os', '-static', '-s', '-o', binary, PAUSE_SOURCE]);
  const tar = writeTar([{ path: 'pause', type: 'file', mode: 0o755, uid: 0, gid: 0, mtime: EPOCH, content: fs.readFileSync(binary) }]);
  const layer = gzipSync(tar, { level: 9 });
  const arch = process.arch === 'x64' ? 'amd64' : process.arch === 'arm64' ? 'arm64' : process.arch;
  const config = Buffer.from(
    JSON.stringify({
      created: CREATED,
      architecture: arch,
      os: 'linux',
      config: { Entrypoint: ['/pause'], User: '65535:65535' },
      rootfs: { type: 'layers', diff_ids: [digestOf(tar)] },
      history: [{ created: CREATED, created_by: 'bench/pause/pause.c' }],
    }),
  );
  const repository = 'pause';
  const layerDesc = await pushBlob(registry, repository, layer);
  const configDesc = await pushBlob(registry, repository, config);
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { mediaType: OCI_CONFIG, ...configDesc },
      layers: [{ mediaType: OCI_LAYER_GZIP, ...layerDesc }],
    }),
  );
  const put = await httpCall('PUT', `${registry.url}/v2/${repository}/manifests/bench`, manifest, OCI_MANIFEST);
  if (put.status !== 201) throw new Error(`put pause manifest: HTTP ${put.status} ${put.body}`);
  return `${registry.host}/${repository}:bench`;
}

/**
 * Writes `<configDir>/<host>/hosts.toml` (the containerd registry hosts format both runtimes
 * read) declaring the local registry as plain HTTP.
 */
export function writeRegistryHosts(configDir: string, registry: RegistryHandle): void {
  const dir = path.join(configDir, registry.host);
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(
    path.join(dir, 'hosts.toml'),
    [`server = "${registry.url}"`, '', `[host."${registry.url}"]`, `  capabilities = ["pull", "resolve"]`, ''].join('\n'),
  );
}
