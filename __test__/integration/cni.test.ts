/**
 * CniManager against the real CNI plugins (bridge, host-local, portmap, loopback) and the real kernel,
 * plus scripted plugins for the protocol details real plugins cannot show (root only).
 *
 * Everything lives on a bridge and a /24 unique to the run, without masquerading or routes off the
 * subnet; teardown removes the namespaces, the bridge, portmap's iptables rules and restores the
 * forwarding sysctls the bridge plugin turns on.
 */
import test, { type ExecutionContext } from 'ava';
import { spawn, type ChildProcess } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { CniManager } from '../../src/network/cni';
import type { CniAttachParams } from '../../src/network/cni_args';
import { CniPluginError } from '../../src/network/cni_invocation';
import { nativeLauncher } from '../../src/network/plugin_launcher';
import { loadNative } from '../../src/native';
import { NETWORK_NOT_READY_REASON } from '../../src/network/cni_config';
import { podIPs } from '../../src/network/cni_result';
import { isNamespacePath } from '../../src/network/netns_util';
import { CrispError } from '../../src/util/errors';
import { createNetns, deleteNetns, run, runInNetns, runOk } from '../fixtures/netns';
import { chainExists, cleanupPortmap, natRules } from '../fixtures/iptables';

const isRoot = process.getuid?.() === 0;
const serial = isRoot ? test.serial : test.serial.skip;

const tag = crypto.randomBytes(3).toString('hex');
const network = `crisp-it-${tag}`;
const bridge = `crisp-t${tag}`;
const hostPort = 20_000 + crypto.randomInt(10_000);
const PLUGIN_DIR = '/usr/lib/cni';

interface Ctx {
  tmp: string;
  subnet: string;
  prefix: string;
  gateway: string;
  ipamDir: string;
  cacheDir: string;
  mgr: CniManager;
  forwarding: Map<string, string>;
  hostportChainsExisted: boolean;
}
let ctx: Ctx;
const netnsCreated = new Set<string>();
const attached = new Map<string, CniAttachParams>();
const children = new Set<ChildProcess>();

function sandboxId(label: string): string {
  return crypto.createHash('sha256').update(`${tag}-${label}`).digest('hex');
}

function params(label: string, netnsPath: string, extra: Partial<CniAttachParams> = {}): CniAttachParams {
  return {
    containerId: sandboxId(label),
    netnsPath,
    ifName: 'eth0',
    podName: `pod-${label}`,
    podNamespace: 'cni-it',
    podUid: crypto.randomUUID(),
    ...extra,
  };
}

async function newNetns(label: string): Promise<{ name: string; path: string }> {
  const name = `${network}-${label}`;
  netnsCreated.add(name);
  return { name, path: await createNetns(name) };
}

async function addTracked(mgr: CniManager, p: CniAttachParams) {
  attached.set(p.containerId, p);
  return mgr.add(p);
}

function ipv4ToInt(ip: string): number {
  return ip.split('.').reduce((acc, octet) => acc * 256 + Number(octet), 0);
}

function overlaps(a: string, b: string): boolean {
  const [ipA, lenA = '32'] = a.split('/');
  const [ipB, lenB = '32'] = b.split('/');
  const block = 2 ** (32 - Math.min(Number(lenA), Number(lenB)));
  return Math.floor(ipv4ToInt(ipA as string) / block) === Math.floor(ipv4ToInt(ipB as string) / block);
}

/** A /24 no route or address of this host overlaps, so pods can never shadow real destinations. */
async function pickSubnet(): Promise<string> {
  const routes = (await runOk('ip', ['-4', '-o', 'route', 'show', 'table', 'all']))
    .split('\n')
    .map((line) => line.split(/\s+/).find((w) => /^\d+\.\d+\.\d+\.\d+(\/\d+)?$/.test(w)))
    .filter((w): w is string => w !== undefined);
  for (let i = 0; i < 50; i++) {
    const candidate = `10.213.${1 + crypto.randomInt(254)}.0/24`;
    if (!routes.some((r) => overlaps(r, candidate))) return candidate;
  }
  throw new Error('no free /24 in 10.213.0.0/16');
}

/** Whether a process is still running (a zombie waiting for a reaper counts as dead). */
function isAlive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

async function hostLocalAllocations(): Promise<string[]> {
  try {
    return (await fsp.readdir(path.join(ctx.ipamDir, network))).filter((n) => /^\d+\.\d+\.\d+\.\d+$/.test(n));
  } catch {
    return [];
  }
}

test.before(async () => {
  if (!isRoot) return;
  const tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'crisp-cni-it-'));
  const subnet = await pickSubnet();
  const prefix = subnet.split('.').slice(0, 3).join('.');
  const confDir = path.join(tmp, 'net.d');
  const ipamDir = path.join(tmp, 'ipam');
  const cacheDir = path.join(tmp, 'cache');
  await fsp.mkdir(confDir);
  const forwarding = new Map<string, string>();
  for (const key of ['/proc/sys/net/ipv4/ip_forward', '/proc/sys/net/ipv6/conf/all/forwarding']) {
    forwarding.set(key, (await fsp.readFile(key, 'utf8')).trim());
  }
  const hostportChainsExisted = await chainExists('CNI-HOSTPORT-DNAT');
  await fsp.writeFile(
    path.join(confDir, '10-crisp-it.conflist'),
    JSON.stringify({
      cniVersion: '1.0.0',
      name: network,
      plugins: [
        {
          type: 'bridge',
          bridge,
          isGateway: true,
          ipMasq: false,
          ipam: { type: 'host-local', ranges: [[{ subnet, gateway: `${prefix}.1` }]], dataDir: ipamDir },
        },
        { type: 'portmap', capabilities: { portMappings: true } },
      ],
    }),
  );
  // Plugins are started the way the daemon starts them.
  const mgr = new CniManager({ cacheDir, confDir, binDirs: [PLUGIN_DIR], pluginTimeoutMs: 30_000, launcher: nativeLauncher(loadNative()) });
  ctx = { tmp, subnet, prefix, gateway: `${prefix}.1`, ipamDir, cacheDir, mgr, forwarding, hostportChainsExisted };
  await mgr.start();
});

test.after.always(async () => {
  if (!isRoot || ctx === undefined) return;
  for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  for (const p of attached.values()) {
    await ctx.mgr.del(p).catch(() => undefined);
  }
  ctx.mgr.close();
  for (const name of netnsCreated) await deleteNetns(name).catch(() => undefined);
  await run('ip', ['link', 'delete', bridge]);

  await cleanupPortmap(network, ctx.hostportChainsExisted);
  for (const [key, value] of ctx.forwarding) await fsp.writeFile(key, value).catch(() => undefined);
  await fsp.rm(ctx.tmp, { recursive: true, force: true });
});

const pods: Record<string, { netns: { name: string; path: string }; params: CniAttachParams; ip: string }> = {};

serial('ADD attaches two sandboxes to the bridge: addresses, loopback, pod-to-pod and host-to-pod traffic', async (t) => {
  for (const label of ['a', 'b']) {
    const netns = await newNetns(label);
    const p = params(label, netns.path, {
      runtimeConfig:
        label === 'a'
          ? {
              portMappings: [
                { hostPort, containerPort: 8080, protocol: 'TCP', hostIP: '127.0.0.1' },
                // kubelet also lists ports without a host port; those must not reach portmap.
                { hostPort: 0, containerPort: 9090, protocol: 'TCP' },
              ],
            }
          : undefined,
    });
    await ctx.mgr.bringUpLoopback(netns.path, p.containerId);
    const result = await addTracked(ctx.mgr, p);

    t.is(result.cniVersion, '1.0.0');
    const ips = podIPs(result);
    t.is(ips.length, 1);
    const ip = ips[0] as string;
    t.true(ip.startsWith(`${ctx.prefix}.`), `${ip} in ${ctx.subnet}`);
    const eth0 = result.interfaces.findIndex((i) => i.name === 'eth0');
    t.is(result.interfaces[eth0]?.sandbox, netns.path);
    t.true(result.interfaces.some((i) => i.name === bridge && i.sandbox === undefined));
    t.like(result.ips[0], { address: `${ip}/24`, family: 4, prefixLength: 24, gateway: ctx.gateway, interface: eth0 });

    const addr = await runOk('ip', ['-n', netns.name, '-4', '-o', 'addr', 'show', 'dev', 'eth0']);
    t.true(addr.includes(`inet ${ip}/24`), addr);
    const lo = await runOk('ip', ['-n', netns.name, '-o', 'addr', 'show', 'dev', 'lo']);
    t.true(lo.includes('inet 127.0.0.1/8'), lo);
    const loLink = await runOk('ip', ['-n', netns.name, 'link', 'show', 'dev', 'lo']);
    t.regex(loLink, /<[^>]*\bUP\b[^>]*>/);

    t.deepEqual(await ctx.mgr.cachedResult(p.containerId), result);
    pods[label] = { netns, params: p, ip };
  }
  const a = pods.a!;
  const b = pods.b!;
  t.not(a.ip, b.ip);
  t.deepEqual((await hostLocalAllocations()).sort(), [a.ip, b.ip].sort());

  const pingBA = await runInNetns(b.netns.name, ['busybox', 'ping', '-c', '1', '-W', '3', a.ip]);
  t.is(pingBA.code, 0, pingBA.stdout + pingBA.stderr);
  const pingAB = await runInNetns(a.netns.name, ['busybox', 'ping', '-c', '1', '-W', '3', b.ip]);
  t.is(pingAB.code, 0, pingAB.stdout + pingAB.stderr);
  const pingHost = await run('busybox', ['ping', '-c', '1', '-W', '3', a.ip]);
  t.is(pingHost.code, 0, pingHost.stdout + pingHost.stderr);
});

serial('a second ADD of the same attachment is refused', async (t) => {
  const a = pods.a!;
  const err = await t.throwsAsync(ctx.mgr.add(a.params), { instanceOf: CrispError });
  t.is(err?.code, 'AlreadyExists');
});

serial('ADD into a namespace that does not exist fails before running any plugin', async (t) => {
  const p = params('ghost', `/run/netns/${network}-ghost`);
  const err = await t.throwsAsync(ctx.mgr.add(p), { instanceOf: CrispError });
  t.is(err?.code, 'FailedPrecondition');
  t.regex(err?.message ?? '', /does not exist/);
  t.is(await ctx.mgr.cachedResult(p.containerId), undefined);
});

serial('CHECK passes for a healthy attachment and fails once the pod interface is gone', async (t) => {
  // Only b: portmap up to v1.2 fails CHECK for IPv4-only pods with port mappings, looking for an
  // ip6tables chain it never created (containernetworking/plugins#819).
  await t.notThrowsAsync(ctx.mgr.check(pods.b!.params));

  await runOk('ip', ['-n', pods.b!.netns.name, 'link', 'delete', 'eth0']);
  const err = await t.throwsAsync(ctx.mgr.check(pods.b!.params), { instanceOf: CniPluginError });
  t.is(err?.plugin, 'bridge');
  t.is(err?.command, 'CHECK');
  t.regex(err?.message ?? '', /^plugin bridge failed \(CHECK\): /);
});

serial('a hostPort on 127.0.0.1 reaches a server inside the pod through portmap', async (t) => {
  const a = pods.a!;
  const nat = await natRules();
  t.true(nat.includes(`dnat name: \\"${network}\\" id: \\"${a.params.containerId}\\"`), 'portmap rules name the network and sandbox');
  t.true(nat.includes(`--dport ${hostPort}`));
  t.false(nat.includes('--dport 0 '), 'mappings without a host port are dropped');
  // portmap enables route_localnet on the bridge so 127.0.0.1-sourced traffic may be routed to the pod.
  t.is((await fsp.readFile(`/proc/sys/net/ipv4/conf/${bridge}/route_localnet`, 'utf8')).trim(), '1');

  const server = spawn('ip', ['netns', 'exec', a.netns.name, 'busybox', 'nc', '-l', '-p', '8080'], { stdio: ['pipe', 'pipe', 'pipe'] });
  children.add(server);
  let received = '';
  server.stdout.on('data', (chunk: Buffer) => (received += chunk.toString('utf8')));
  const token = `hello-${tag}-${crypto.randomInt(1e9)}`;

  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      await new Promise<void>((resolve, reject) => {
        const sock = net.connect({ host: '127.0.0.1', port: hostPort }, () => sock.end(`${token}\n`, () => resolve()));
        sock.on('error', reject);
        sock.setTimeout(3_000, () => sock.destroy(new Error('connect timeout')));
      });
      break;
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  const until = Date.now() + 10_000;
  while (!received.includes(token) && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
  server.stdin.end();
  t.true(received.includes(token), `server received ${JSON.stringify(received)}`);
});

serial('DEL removes the attachment and its port mappings, and a second DEL is fine', async (t) => {
  const a = pods.a!;
  const b = pods.b!;
  await ctx.mgr.del(a.params);
  t.false((await natRules()).includes(network), 'no portmap rule of this network is left');
  t.deepEqual(await hostLocalAllocations(), [b.ip]);
  t.is(await ctx.mgr.cachedResult(a.params.containerId), undefined);
  t.false(fs.existsSync(path.join(ctx.cacheDir, a.params.containerId)));
  const link = await run('ip', ['-n', a.netns.name, 'link', 'show', 'dev', 'eth0']);
  t.not(link.code, 0, 'the pod interface is gone');

  await t.notThrowsAsync(ctx.mgr.del(a.params));
  // b lost its interface earlier; DEL still releases its address.
  await t.notThrowsAsync(ctx.mgr.del(b.params));
  await t.notThrowsAsync(ctx.mgr.del(b.params));
  t.deepEqual(await hostLocalAllocations(), []);
  attached.delete(a.params.containerId);
  attached.delete(b.params.containerId);
});

serial('DEL succeeds after the network namespace was deleted, and for a sandbox never attached', async (t) => {
  const netns = await newNetns('c');
  const p = params('c', netns.path);
  const result = await addTracked(ctx.mgr, p);
  const ip = podIPs(result)[0] as string;
  t.deepEqual(await hostLocalAllocations(), [ip]);
  const hostVeths = (await runOk('ip', ['-o', 'link', 'show', 'master', bridge])).trim().split('\n').filter(Boolean);
  t.is(hostVeths.length, 1);

  await deleteNetns(netns.name);
  t.false(await isNamespacePath(netns.path));
  await ctx.mgr.del(p);
  t.deepEqual(await hostLocalAllocations(), []);
  t.is(await ctx.mgr.cachedResult(p.containerId), undefined);
  // Deleting the namespace takes the veth pair with it; the kernel tears namespaces down
  // asynchronously, so give it a moment under load.
  let veths = '';
  for (const until = Date.now() + 5000; Date.now() < until; await new Promise((r) => setTimeout(r, 50))) {
    veths = (await runOk('ip', ['-o', 'link', 'show', 'master', bridge])).trim();
    if (veths === '') break;
  }
  t.is(veths, '');
  attached.delete(p.containerId);

  await t.notThrowsAsync(ctx.mgr.del(params('never-added', `/run/netns/${network}-never`)));
});

serial('a 0.3.1 single-plugin .conf network: results with per-IP versions parse, CHECK is refused', async (t) => {
  const confDir = await fsp.mkdtemp(path.join(ctx.tmp, 'conf031-'));
  const legacy = `${network}-v031`;
  await fsp.writeFile(
    path.join(confDir, '10-legacy.conf'),
    JSON.stringify({
      cniVersion: '0.3.1',
      name: legacy,
      type: 'bridge',
      bridge,
      isGateway: true,
      ipMasq: false,
      ipam: { type: 'host-local', subnet: ctx.subnet, gateway: ctx.gateway, dataDir: ctx.ipamDir },
    }),
  );
  const mgr = new CniManager({ cacheDir: path.join(confDir, 'cache'), confDir, binDirs: [PLUGIN_DIR] });
  await mgr.start();
  t.teardown(() => mgr.close());
  const netns = await newNetns('v031');
  const p = params('v031', netns.path);
  // Teardowns run last-registered first: this DEL runs before the manager is closed.
  t.teardown(() => mgr.del(p).catch(() => undefined));
  const result = await mgr.add(p);
  t.is(result.cniVersion, '0.3.1');
  t.true(Array.isArray(result.raw.ips) && (result.raw.ips as { version?: string }[])[0]?.version === '4');
  const ip = podIPs(result)[0] as string;
  t.true(ip.startsWith(`${ctx.prefix}.`));
  t.like(result.ips[0], { family: 4, gateway: ctx.gateway });

  const err = await t.throwsAsync(mgr.check(p), { instanceOf: CrispError });
  t.is(err?.code, 'FailedPrecondition');
  t.regex(err?.message ?? '', /0\.3\.1, which has no CHECK command/);

  await mgr.del(p);
  const left = await fsp.readdir(path.join(ctx.ipamDir, legacy));
  t.false(left.includes(ip), 'the address was released');
});

serial('status() reports the network ready with its config file', async (t) => {
  const status = await ctx.mgr.status();
  t.true(status.ready, status.message);
  t.is(status.network, network);
  t.is(status.cniVersion, '1.0.0');
  t.is(path.basename(status.file ?? ''), '10-crisp-it.conflist');
});

// ---- Protocol details, with scripted plugins that record what they were given. ----

interface FakeEnv {
  mgr: CniManager;
  binDir: string;
  logDir: string;
  dataDir: string;
  confDir: string;
  network: string;
}

/**
 * Writes a shell plugin that logs its CNI_* environment and stdin, then runs `body` (shell code that
 * must exit). With `result`, ADD prints it, "@NETNS@" replaced by CNI_NETNS, before `body` runs.
 */
async function writePlugin(env: FakeEnv, name: string, body: string, result?: unknown): Promise<void> {
  let printResult = '';
  if (result !== undefined) {
    const resultFile = path.join(env.dataDir, `${name}.result.json`);
    await fsp.writeFile(resultFile, JSON.stringify(result));
    printResult = `[ "$CNI_COMMAND" = ADD ] && sed "s#@NETNS@#$CNI_NETNS#g" ${JSON.stringify(resultFile)}`;
  }
  const script = `#!/bin/sh
set -u
log=${JSON.stringify(env.logDir)}
seq=$(ls "$log" | wc -l)
seq=$(printf '%03d' "$seq")
env | grep '^CNI_' | sort > "$log/$seq-$CNI_COMMAND-${name}.env"
cat > "$log/$seq-$CNI_COMMAND-${name}.stdin"
${printResult}
${body}
`;
  await fsp.writeFile(path.join(env.binDir, name), script, { mode: 0o755 });
}

async function fakeEnv(t: ExecutionContext, plugins: unknown[], opts: { timeoutMs?: number } = {}): Promise<FakeEnv> {
  const root = await fsp.mkdtemp(path.join(ctx.tmp, 'fake-'));
  const binDir = path.join(root, 'bin');
  const logDir = path.join(root, 'log');
  const confDir = path.join(root, 'net.d');
  const dataDir = path.join(root, 'data');
  await Promise.all([binDir, logDir, confDir, dataDir].map((d) => fsp.mkdir(d)));
  const name = `crisp-fake-${tag}`;
  await fsp.writeFile(path.join(confDir, '10-fake.conflist'), JSON.stringify({ cniVersion: '1.0.0', name, plugins }));
  const mgr = new CniManager({
    cacheDir: path.join(root, 'cache'),
    confDir,
    binDirs: [binDir],
    pluginTimeoutMs: opts.timeoutMs ?? 10_000,
    launcher: nativeLauncher(loadNative()),
  });
  await mgr.start();
  t.teardown(() => mgr.close());
  return { mgr, binDir, logDir, dataDir, confDir, network: name };
}

interface Call {
  command: string;
  plugin: string;
  env: Record<string, string>;
  stdin: Record<string, unknown>;
}

async function calls(env: FakeEnv): Promise<Call[]> {
  const files = (await fsp.readdir(env.logDir)).sort();
  const out: Call[] = [];
  for (const file of files.filter((f) => f.endsWith('.stdin'))) {
    const [, command, ...rest] = file.replace(/\.stdin$/, '').split('-');
    const plugin = rest.join('-');
    const envText = await fsp.readFile(path.join(env.logDir, file.replace(/\.stdin$/, '.env')), 'utf8');
    const vars = Object.fromEntries(
      envText
        .split('\n')
        .filter(Boolean)
        .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
    );
    out.push({ command: command as string, plugin, env: vars, stdin: JSON.parse(await fsp.readFile(path.join(env.logDir, file), 'utf8')) });
  }
  return out;
}

// Addresses from the documentation ranges: the scripted plugins only report them, nothing is configured.
const RESULT_A = {
  cniVersion: '1.0.0',
  interfaces: [{ name: 'eth0', sandbox: '@NETNS@' }],
  ips: [{ address: '198.51.100.7/24', interface: 0 }],
};
const RESULT_B = {
  cniVersion: '1.0.0',
  interfaces: [{ name: 'host0' }, { name: 'eth0', mac: '02:00:00:00:00:07', sandbox: '@NETNS@' }],
  ips: [
    { address: '2001:db8::7/64', interface: 1, gateway: '2001:db8::1' },
    { address: '198.51.100.7/24', interface: 1, gateway: '198.51.100.1' },
    { address: '203.0.113.9/32', interface: 0 },
  ],
  routes: [{ dst: '198.51.100.0/24' }],
  dns: { nameservers: ['198.51.100.53'], search: ['example.test'] },
};

serial('plugins get the CNI environment, their own config with runtimeConfig filtered by capability, and chained prevResult', async (t) => {
  const env = await fakeEnv(t, [
    { type: 'rec-a', foo: 'bar', capabilities: { portMappings: true, bandwidth: false } },
    { type: 'rec-b', name: 'ignored', cniVersion: '0.3.1', capabilities: { bandwidth: true, dns: true } },
  ]);
  await writePlugin(env, 'rec-a', 'exit 0', RESULT_A);
  await writePlugin(env, 'rec-b', 'exit 0', RESULT_B);
  const netns = await newNetns('rec');
  const p = params('rec', netns.path, {
    runtimeConfig: {
      portMappings: [
        { hostPort: 8443, containerPort: 443, protocol: 'TCP', hostIP: '' },
        { hostPort: 0, containerPort: 80, protocol: 'TCP' },
      ],
      bandwidth: { ingressRate: 1_000_000, ingressBurst: 2_000_000 },
      dns: { servers: ['198.51.100.53'], searches: ['svc.test'], options: ['ndots:5'] },
    },
  });

  const result = await env.mgr.add(p);
  t.deepEqual(podIPs(result), ['198.51.100.7', '2001:db8::7'], 'IPv4 first, host-side addresses excluded');
  t.deepEqual(result.dns, { nameservers: ['198.51.100.53'], search: ['example.test'], options: [] });
  t.deepEqual(result.routes, [{ dst: '198.51.100.0/24' }]);

  const adds = await calls(env);
  t.deepEqual(
    adds.map((c) => `${c.command} ${c.plugin}`),
    ['ADD rec-a', 'ADD rec-b'],
  );
  const [a, b] = adds as [Call, Call];
  t.deepEqual(a.env, {
    CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAMESPACE=cni-it;K8S_POD_NAME=pod-rec;K8S_POD_INFRA_CONTAINER_ID=${p.containerId};K8S_POD_UID=${p.podUid}`,
    CNI_COMMAND: 'ADD',
    CNI_CONTAINERID: p.containerId,
    CNI_IFNAME: 'eth0',
    CNI_NETNS: netns.path,
    CNI_PATH: env.binDir,
  });
  t.deepEqual(a.stdin, {
    type: 'rec-a',
    foo: 'bar',
    name: env.network,
    cniVersion: '1.0.0',
    runtimeConfig: { portMappings: [{ hostPort: 8443, containerPort: 443, protocol: 'tcp' }] },
  });
  const addedA = JSON.parse(JSON.stringify(RESULT_A).replace('@NETNS@', netns.path));
  t.deepEqual(b.stdin, {
    type: 'rec-b',
    name: env.network,
    cniVersion: '1.0.0',
    runtimeConfig: {
      bandwidth: { ingressRate: 1_000_000, ingressBurst: 2_000_000 },
      dns: { servers: ['198.51.100.53'], searches: ['svc.test'], options: ['ndots:5'] },
    },
    prevResult: addedA,
  });

  // DEL without runtime options still tears down what ADD set up: reverse order, cached result and options.
  await env.mgr.del({ ...p, runtimeConfig: undefined });
  const dels = (await calls(env)).slice(2);
  t.deepEqual(
    dels.map((c) => `${c.command} ${c.plugin}`),
    ['DEL rec-b', 'DEL rec-a'],
  );
  const addedB = JSON.parse(JSON.stringify(RESULT_B).replace(/@NETNS@/g, netns.path));
  t.deepEqual(dels[1]?.stdin.prevResult, addedB);
  t.deepEqual(dels[1]?.stdin.runtimeConfig, a.stdin.runtimeConfig);
  t.is(dels[0]?.env.CNI_NETNS, netns.path);
  t.is(await env.mgr.cachedResult(p.containerId), undefined);

  // With nothing cached, DEL uses the current config, without prevResult, and an empty CNI_NETNS for a gone namespace.
  await deleteNetns(netns.name);
  await env.mgr.del(p);
  const again = (await calls(env)).slice(4);
  t.deepEqual(
    again.map((c) => `${c.command} ${c.plugin}`),
    ['DEL rec-b', 'DEL rec-a'],
  );
  t.false('prevResult' in (again[0]?.stdin ?? {}));
  t.is(again[0]?.env.CNI_NETNS, '', 'CNI_NETNS is empty');
  t.is(again[0]?.env.CNI_CONTAINERID, p.containerId);
});

serial('a failing plugin: its error reaches the caller and the partial attachment is deleted', async (t) => {
  const env = await fakeEnv(t, [{ type: 'rec-a' }, { type: 'fail' }]);
  await writePlugin(env, 'rec-a', 'exit 0', RESULT_A);
  await writePlugin(
    env,
    'fail',
    `if [ "$CNI_COMMAND" = ADD ]; then
  echo 'fail: giving up' >&2
  printf '%s' '{"cniVersion":"1.0.0","code":117,"msg":"no room for ${tag}","details":"all 0 addresses taken"}'
  exit 1
fi
exit 0`,
  );
  const netns = await newNetns('fail');
  const p = params('fail', netns.path);
  const err = await t.throwsAsync(env.mgr.add(p), { instanceOf: CniPluginError });
  t.is(err?.message, `plugin fail failed (ADD): no room for ${tag}: all 0 addresses taken; stderr: fail: giving up`);
  t.is(err?.code, 'Internal');
  t.is(err?.cniCode, 117);
  t.is(err?.plugin, 'fail');
  t.is(err?.command, 'ADD');
  t.deepEqual(
    (await calls(env)).map((c) => `${c.command} ${c.plugin}`),
    ['ADD rec-a', 'ADD fail', 'DEL fail', 'DEL rec-a'],
  );
  t.is(await env.mgr.cachedResult(p.containerId), undefined);

  // Output that is not a CNI error is reported as is.
  await writePlugin(env, 'fail', `echo 'segfault or so'; exit 2`);
  const raw = await t.throwsAsync(env.mgr.add(p), { instanceOf: CniPluginError });
  t.is(raw?.message, 'plugin fail failed (ADD): exit status 2: segfault or so');
});

serial('a missing plugin makes the network not ready and ADD fail', async (t) => {
  const env = await fakeEnv(t, [{ type: 'not-installed' }]);
  const status = await env.mgr.status();
  t.false(status.ready);
  t.is(status.reason, NETWORK_NOT_READY_REASON);
  t.regex(status.message ?? '', /plugin not-installed not found in /);
  const netns = await newNetns('missing');
  const err = await t.throwsAsync(env.mgr.add(params('missing', netns.path)), { instanceOf: CniPluginError });
  t.is(err?.code, 'FailedPrecondition');

  await fsp.rm(path.join(env.confDir, '10-fake.conflist'));
  await env.mgr.watcher.refresh();
  const none = await env.mgr.status();
  t.false(none.ready);
  t.is(none.message, `no network config found in ${env.confDir}`);
  const noConf = await t.throwsAsync(env.mgr.add(params('missing', netns.path)), { instanceOf: CrispError });
  t.is(noConf?.code, 'FailedPrecondition');
  t.regex(noConf?.message ?? '', /NetworkPluginNotReady: no network config found/);
});

serial('a plugin that hangs is killed, with whatever it started, when the timeout fires', async (t) => {
  const env = await fakeEnv(t, [{ type: 'hang' }], { timeoutMs: 500 });
  await writePlugin(
    env,
    'hang',
    `if [ "$CNI_COMMAND" = ADD ]; then
  sleep 60 &
  echo $! > "$log/sleep.pid"
  wait
fi
exit 0`,
  );
  const netns = await newNetns('hang');
  const started = Date.now();
  const err = await t.throwsAsync(env.mgr.add(params('hang', netns.path)), { instanceOf: CniPluginError });
  t.true(Date.now() - started < 5_000);
  t.is(err?.code, 'DeadlineExceeded');
  t.regex(err?.message ?? '', /^plugin hang timed out after 500 ms \(ADD\) and was killed/);
  const sleeper = Number(await fsp.readFile(path.join(env.logDir, 'sleep.pid'), 'utf8'));
  const until = Date.now() + 2_000;
  while (isAlive(sleeper) && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
  t.false(isAlive(sleeper), 'the plugin\'s own child was killed too');
  // The cleanup DEL ran after the timeout.
  t.deepEqual(
    (await calls(env)).map((c) => `${c.command} ${c.plugin}`),
    ['ADD hang', 'DEL hang'],
  );

  // Cancelling the operation kills the plugin as well.
  const ac = new AbortController();
  const slow = await fakeEnv(t, [{ type: 'hang' }], { timeoutMs: 30_000 });
  await writePlugin(slow, 'hang', `[ "$CNI_COMMAND" = ADD ] && exec sleep 60\nexit 0`);
  setTimeout(() => ac.abort(), 200);
  const canceled = await t.throwsAsync(slow.mgr.add(params('hang2', netns.path, { signal: ac.signal })), { instanceOf: CniPluginError });
  t.is(canceled?.code, 'Canceled');
});
