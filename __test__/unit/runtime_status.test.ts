import test from 'ava';
import { applyDocument, defaultConfig } from '../../src/config/config';
import { silentLogger } from '../../src/log';
import type { CniConfigState } from '../../src/network/cni_config';
import { cniLoadStatus, cniStatusInfo } from '../../src/network/cni';
import type { CallContext } from '../../src/server/instrument';
import { status } from '../../src/server/runtime_status';
import { CriService } from '../../src/server/service';

/** A CriService with what Status reads, the CNI sections wired as the daemon wires them. */
function service(cni: CniConfigState): CriService {
  const config = applyDocument(defaultConfig(), { root: '/r', state: '/s', cni: { conf_dir: '/net.d', bin_dirs: ['/a', '/b'] } }, 'f.toml');
  const svc = new CriService(config, silentLogger(), '9.9.9');
  svc.addConditionSource({ condition: async () => ({ type: 'NetworkReady', status: 'config' in cni, reason: '', message: '' }) });
  svc.addStatusInfo('cniconfig', () => cniStatusInfo(cni, config.cni.confDir, config.cni.binDirs));
  svc.addStatusInfo('lastCNILoadStatus', () => cniLoadStatus(cni));
  return svc;
}

const ctx = { id: 'x', method: 'Status', apiVersion: 'v1' } as unknown as CallContext;
const bridge = { type: 'bridge', bridge: 'cni0', ipam: { type: 'host-local' } };
const loaded: CniConfigState = { config: { name: 'pods', cniVersion: '1.0.0', disableCheck: false, plugins: [bridge] }, file: '/net.d/10-pods.conflist' };

test('verbose Status carries the keys tools read from containerd: config.sandboxImage, config.cni, cniconfig, lastCNILoadStatus', async (t) => {
  const res = await status(service(loaded), { verbose: true }, ctx);
  t.deepEqual(
    res.status!.conditions.map((c) => [c.type, c.status]),
    [
      ['RuntimeReady', true],
      ['NetworkReady', true],
    ],
  );
  // crictl info splices every value in as JSON.
  const info = Object.fromEntries(Object.entries(res.info).map(([k, v]) => [k, JSON.parse(v)]));
  t.deepEqual(Object.keys(info).sort(), ['cniconfig', 'config', 'lastCNILoadStatus', 'runtime']);
  t.is(info.config.sandboxImage, '', 'present, naming no image: crisp runs pods without one');
  t.is(info.config.rootDir, '/r');
  t.is(info.config.stateDir, '/s');
  t.is(info.config.root, '/r', "crisp's own keys stay");
  t.deepEqual(info.config.cni, { confDir: '/net.d', binDirs: ['/a', '/b'], binDir: '/a', maxConfNum: 1, pluginTimeoutMs: 60_000 });
  t.deepEqual(info.config.grpc, { apiVersions: ['v1', 'v1alpha2'] });
  t.deepEqual(info.cniconfig, {
    PluginDirs: ['/a', '/b'],
    PluginConfDir: '/net.d',
    PluginMaxConfNum: 1,
    Prefix: 'eth',
    Networks: [{ Config: { Name: 'pods', CNIVersion: '1.0.0', Plugins: [{ Network: bridge }] }, IFName: 'eth0' }],
    file: '/net.d/10-pods.conflist',
  });
  t.is(info.lastCNILoadStatus, 'OK');
  t.is(info.runtime.name, 'crisp');
  t.is(info.runtime.version, '9.9.9');
});

test('without a network config, cniconfig lists no network and lastCNILoadStatus says why; without verbose there is no info', async (t) => {
  const svc = service({ error: 'no network config found in /net.d' });
  const res = await status(svc, { verbose: true }, ctx);
  const cniconfig = JSON.parse(res.info.cniconfig);
  t.deepEqual(cniconfig.Networks, []);
  t.is(cniconfig.error, 'no network config found in /net.d');
  t.is(JSON.parse(res.info.lastCNILoadStatus), 'no network config found in /net.d');
  t.deepEqual((await status(svc, { verbose: false }, ctx)).info, {});
});

test('verbose Status names the registry hosts with credentials and the user names, never the secrets', async (t) => {
  const svc = service(loaded);
  svc.config.registry.auths = { 'reg.example': { username: 'u', password: 'hunter2' }, 'b.example': { auth: 'dTpodW50ZXIy', identitytoken: 'tok' } };
  const { info } = await status(svc, { verbose: true }, ctx);
  t.deepEqual(JSON.parse(info.config).registry.auths, {
    'reg.example': { username: 'u', password: '<redacted>' },
    'b.example': { auth: '<redacted>', identitytoken: '<redacted>' },
  });
  t.false(/hunter2|dTpodW50ZXIy|tok"/.test(info.config));
  t.is(svc.config.registry.auths['reg.example'].password, 'hunter2', 'the configuration itself is unchanged');
});
