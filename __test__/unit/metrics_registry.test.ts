import * as http from 'node:http';
import * as grpc from '@grpc/grpc-js';
import test from 'ava';
import { CriMetrics } from '../../src/metrics/cri_metrics';
import { MetricsServer, parseListenAddress } from '../../src/metrics/metrics_server';
import { silentLogger } from '../../src/log';

function get(port: number, path: string, method = 'GET'): Promise<{ status: number; type: string; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path, method }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode!, type: String(res.headers['content-type']), body }));
    });
    req.on('error', reject);
    req.end();
  });
}

/** The value of one sample line, e.g. `name{a="b"} 3`. */
function sampleValue(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

test('RPC outcomes feed counters, error codes and latency histograms', async (t) => {
  const m = new CriMetrics();
  m.observeRpc('RunPodSandbox', grpc.status.OK, 0.2);
  m.observeRpc('RunPodSandbox', grpc.status.OK, 3);
  m.observeRpc('RunPodSandbox', grpc.status.NOT_FOUND, 0.001);
  m.observeRpc('PullImage', grpc.status.OK, 42);
  const text = await m.render();
  t.is(sampleValue(text, 'container_runtime_crisp_operations_total{operation_type="RunPodSandbox"}'), 3);
  t.is(sampleValue(text, 'container_runtime_crisp_operations_errors_total{operation_type="RunPodSandbox",code="NOT_FOUND"}'), 1);
  t.is(sampleValue(text, 'container_runtime_crisp_operations_latency_seconds_count{operation_type="RunPodSandbox"}'), 3);
  t.is(sampleValue(text, 'container_runtime_crisp_operations_latency_seconds_bucket{le="0.25",operation_type="RunPodSandbox"}'), 2);
  t.is(sampleValue(text, 'container_runtime_crisp_operations_latency_seconds_sum{operation_type="RunPodSandbox"}'), 3.201);
  t.is(sampleValue(text, 'container_runtime_crisp_image_pull_duration_seconds_count'), 1);
  t.is(sampleValue(text, 'container_runtime_crisp_image_pull_duration_seconds_bucket{le="60"}'), 1);
  t.is(sampleValue(text, 'container_runtime_crisp_image_pull_duration_seconds_bucket{le="30"}'), 0);
});

test('pull bytes by host and kind; running gauges read their source at scrape time', async (t) => {
  const m = new CriMetrics();
  m.observePullBytes(1000, { host: 'registry.example:5000', kind: 'blob' });
  m.observePullBytes(24, { host: 'registry.example:5000', kind: 'blob' });
  m.observePullBytes(7, { host: 'registry.example:5000', kind: 'manifest' });
  let pods = 2;
  m.countRunning('pods', () => pods);
  let text = await m.render();
  t.is(sampleValue(text, 'container_runtime_crisp_image_pull_bytes_total{host="registry.example:5000",kind="blob"}'), 1024);
  t.is(sampleValue(text, 'container_runtime_crisp_image_pull_bytes_total{host="registry.example:5000",kind="manifest"}'), 7);
  t.is(sampleValue(text, 'container_runtime_crisp_running_pods'), 2);
  pods = 5;
  text = await m.render();
  t.is(sampleValue(text, 'container_runtime_crisp_running_pods'), 5);
});

test('registries are per instance; process metrics only when asked for', async (t) => {
  const a = new CriMetrics({ processMetrics: true });
  const b = new CriMetrics();
  a.observeRpc('Version', grpc.status.OK, 0.001);
  const textA = await a.render();
  const textB = await b.render();
  t.is(sampleValue(textA, 'container_runtime_crisp_operations_total{operation_type="Version"}'), 1);
  t.is(sampleValue(textB, 'container_runtime_crisp_operations_total{operation_type="Version"}'), undefined);
  t.regex(textA, /^process_resident_memory_bytes \d+/m);
  t.regex(textA, /^nodejs_eventloop_lag_seconds /m);
  t.notRegex(textB, /process_resident_memory_bytes/);
});

test('listen addresses: host:port, [v6]:port, :port; anything else is refused', (t) => {
  t.deepEqual(parseListenAddress('127.0.0.1:9090'), { host: '127.0.0.1', port: 9090 });
  t.deepEqual(parseListenAddress('[::1]:0'), { host: '::1', port: 0 });
  t.deepEqual(parseListenAddress(':9090'), { host: undefined, port: 9090 });
  t.deepEqual(parseListenAddress('localhost:1'), { host: 'localhost', port: 1 });
  for (const bad of ['9090', '127.0.0.1', '::1:9090', 'host:70000', 'host:port']) {
    t.throws(() => parseListenAddress(bad), { message: /expected host:port/ }, bad);
  }
});

test('the HTTP endpoint serves /metrics in the text format and nothing else', async (t) => {
  const m = new CriMetrics();
  const server = new MetricsServer(m, silentLogger());
  const { port } = await server.listen('127.0.0.1:0');
  t.teardown(() => server.close());
  m.observeRpc('Status', grpc.status.OK, 0.0001);
  const res = await get(port, '/metrics');
  t.is(res.status, 200);
  t.regex(res.type, /^text\/plain; version=0\.0\.4/);
  t.is(sampleValue(res.body, 'container_runtime_crisp_operations_total{operation_type="Status"}'), 1);
  t.is((await get(port, '/metrics?x=1')).status, 200);
  t.is((await get(port, '/')).status, 404);
  t.is((await get(port, '/metrics', 'POST')).status, 405);
  const head = await get(port, '/metrics', 'HEAD');
  t.is(head.status, 200);
  t.is(head.body, '');
});

test('a taken port fails listen instead of serving nothing', async (t) => {
  const first = new MetricsServer(new CriMetrics(), silentLogger());
  const { port } = await first.listen('127.0.0.1:0');
  t.teardown(() => first.close());
  const second = new MetricsServer(new CriMetrics(), silentLogger());
  await t.throwsAsync(second.listen(`127.0.0.1:${port}`), { code: 'EADDRINUSE' } as never);
});
