import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as grpc from '@grpc/grpc-js';
import test from 'ava';
import { TestDaemon } from '../fixtures/daemon';

/** A port free right now on the loopback interface. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

function scrape(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path: '/metrics' }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (body += d));
        res.on('end', () => (res.statusCode === 200 ? resolve(body) : reject(new Error(`HTTP ${res.statusCode}: ${body}`))));
      })
      .on('error', reject);
  });
}

function value(text: string, series: string): number {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? 0 : Number(line.slice(series.length + 1));
}

test('the Prometheus endpoint counts CRI calls, their errors and latencies, and process metrics', async (t) => {
  const port = await freePort();
  const d = await TestDaemon.start({ extraConfig: `[metrics]\naddress = "127.0.0.1:${port}"` });
  t.teardown(() => d.destroy());
  const c = d.client();
  const before = await scrape(port);
  const versions = value(before, 'container_runtime_crisp_operations_total{operation_type="Version"}');
  t.true(versions >= 1, 'the readiness probe of the test fixture was counted');

  for (let i = 0; i < 3; i++) await c.call('version', {});
  const err = (await t.throwsAsync(c.call('podSandboxStatus', { podSandboxId: 'no-such-pod' }))) as grpc.ServiceError;
  t.is(err.code, grpc.status.NOT_FOUND);

  const after = await scrape(port);
  t.is(value(after, 'container_runtime_crisp_operations_total{operation_type="Version"}'), versions + 3);
  t.is(value(after, 'container_runtime_crisp_operations_latency_seconds_count{operation_type="Version"}'), versions + 3);
  t.is(value(after, 'container_runtime_crisp_operations_errors_total{operation_type="PodSandboxStatus",code="NOT_FOUND"}'), 1);
  t.is(value(after, 'container_runtime_crisp_operations_errors_total{operation_type="Version",code="NOT_FOUND"}'), 0);
  t.regex(after, /^container_runtime_crisp_running_pods 0$/m);
  t.regex(after, /^container_runtime_crisp_running_containers 0$/m);
  t.true(value(after, 'process_resident_memory_bytes') > 0);
  t.regex(after, /^nodejs_eventloop_lag_seconds /m);
});

test('without an address there is no endpoint', async (t) => {
  const d = await TestDaemon.start();
  t.teardown(() => d.destroy());
  t.notRegex(d.output(), /serving Prometheus metrics/);
});

test('SIGHUP applies the log level of the re-read configuration file', async (t) => {
  const d = await TestDaemon.start();
  t.teardown(() => d.destroy());
  const c = d.client();
  await c.call('version', {});
  const versionLines = () => d.output().split('\n').filter((l) => l.includes('"rpc":"Version"')).length;
  t.true(versionLines() > 0, 'debug: high-frequency calls are logged');

  fs.writeFileSync(d.configFile, fs.readFileSync(d.configFile, 'utf8').replace('log_level = "debug"', 'log_level = "info"'));
  d.child!.kill('SIGHUP');
  for (const started = Date.now(); !/log level changed/.test(d.output()); ) {
    if (Date.now() - started > 10_000) t.fail(`no reload logged:\n${d.output()}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  t.regex(d.output(), /"level":"info","previous":"debug"/);
  const logged = versionLines();
  await c.call('version', {});
  await c.call('version', {});
  await new Promise((r) => setTimeout(r, 200));
  t.is(versionLines(), logged, 'debug lines stopped');

  fs.writeFileSync(d.configFile, 'log_level = "loud"\n');
  d.child!.kill('SIGHUP');
  for (const started = Date.now(); !/configuration reload failed/.test(d.output()); ) {
    if (Date.now() - started > 10_000) t.fail(`no reload failure logged:\n${d.output()}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  t.is((await c.call('version', {})).runtimeName, 'crisp', 'a broken file does not take the daemon down');
});
