import test from 'ava';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { isCrispError } from '../../src/util/errors';
import { RegistryHosts, isLoopbackHost, parseHostsToml } from '../../src/image/registry_hosts';
import {
  credentialsFromAuthConfig,
  normalizeServerAddress,
  parseWwwAuthenticate,
  serverAddressMatches,
} from '../../src/image/registry_auth';

async function withConfigDir(files: Record<string, string>, fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'crisp-hosts-'));
  try {
    for (const [rel, content] of Object.entries(files)) {
      const p = path.join(dir, rel);
      await fsp.mkdir(path.dirname(p), { recursive: true });
      await fsp.writeFile(p, content);
    }
    await fn(dir);
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
}

test('defaults without configuration', async (t) => {
  const hosts = new RegistryHosts({ configDir: '' });
  const [hub] = await hosts.endpoints('docker.io');
  t.like(hub, { scheme: 'https', host: 'registry-1.docker.io', path: '/v2', mirror: false, skipVerify: false });
  t.deepEqual([...hub.capabilities], ['pull', 'resolve', 'push']);

  const [other] = await hosts.endpoints('quay.io');
  t.like(other, { scheme: 'https', host: 'quay.io', path: '/v2', mirror: false });

  for (const local of ['localhost:5000', 'localhost', '127.0.0.1:5000', '127.0.0.2', '[::1]:5000']) {
    const eps = await hosts.endpoints(local);
    t.is(eps.length, 1);
    t.like(eps[0], { scheme: 'http', host: local, path: '/v2' }, local);
  }
  const [tls] = await hosts.endpoints('localhost:443');
  t.like(tls, { scheme: 'https', skipVerify: true });
});

test('a missing config directory means defaults', async (t) => {
  const hosts = new RegistryHosts({ configDir: path.join(os.tmpdir(), 'crisp-does-not-exist', String(process.pid)) });
  const eps = await hosts.endpoints('docker.io');
  t.is(eps.length, 1);
  t.is(eps[0].host, 'registry-1.docker.io');
});

test('mirrors in file order, then upstream, with per-host settings', async (t) => {
  const toml = `
server = "https://registry-1.docker.io"
capabilities = ["pull", "resolve"]

[host."https://mirror-b.example.com"]
  capabilities = ["pull"]
  ca = "ca-b.pem"
  skip_verify = false
  [host."https://mirror-b.example.com".header]
    x-token = "abc"
    x-multi = ["1", "2"]

[host."http://mirror-a.example.com:8080/prefix"]
  capabilities = ["pull", "resolve"]
  skip_verify = true
  client = [["/abs/cert.pem", "key.pem"], "combined.pem"]

[host."mirror-c.example.com/custom/root"]
  override_path = true
  dial_timeout = "1m30s"
  ca = ["/etc/ca1.pem", "ca2.pem"]
`;
  await withConfigDir({ 'docker.io/hosts.toml': toml }, async (dir) => {
    const eps = await new RegistryHosts({ configDir: dir }).endpoints('docker.io');
    t.deepEqual(
      eps.map((e) => `${e.scheme}://${e.host}${e.path}`),
      [
        'https://mirror-b.example.com/v2',
        'http://mirror-a.example.com:8080/prefix/v2',
        'https://mirror-c.example.com/custom/root',
        'https://registry-1.docker.io/v2',
      ],
    );
    const hostDir = path.join(dir, 'docker.io');
    t.deepEqual([...eps[0].capabilities], ['pull']);
    t.deepEqual(eps[0].caFiles, [path.join(hostDir, 'ca-b.pem')]);
    t.deepEqual(eps[0].headers, { 'x-token': ['abc'], 'x-multi': ['1', '2'] });
    t.true(eps[0].mirror);
    t.is(eps[0].source, path.join(hostDir, 'hosts.toml'));

    t.true(eps[1].skipVerify);
    t.deepEqual(eps[1].clientCertificates, [
      { certFile: '/abs/cert.pem', keyFile: path.join(hostDir, 'key.pem') },
      { certFile: path.join(hostDir, 'combined.pem') },
    ]);
    t.deepEqual([...eps[1].capabilities], ['pull', 'resolve']);

    t.deepEqual([...eps[2].capabilities], ['pull', 'resolve', 'push'], 'capabilities default to all');
    t.is(eps[2].dialTimeoutMs, 90_000);
    t.deepEqual(eps[2].caFiles, ['/etc/ca1.pem', path.join(hostDir, 'ca2.pem')]);

    t.false(eps[3].mirror, 'registry-1.docker.io serves docker.io itself');
    t.deepEqual([...eps[3].capabilities], ['pull', 'resolve']);
  });
});

test('a file without server keeps the registry as upstream', async (t) => {
  await withConfigDir(
    {
      'localhost_5000_/hosts.toml': `[host."http://127.0.0.1:6000"]\n`,
      'quay.io/hosts.toml': `skip_verify = true\n[host."https://m.example.com"]\n`,
    },
    async (dir) => {
      const hosts = new RegistryHosts({ configDir: dir });
      const local = await hosts.endpoints('localhost:5000');
      t.deepEqual(
        local.map((e) => [e.scheme, e.host, e.mirror]),
        [
          ['http', '127.0.0.1:6000', true],
          ['http', 'localhost:5000', false],
        ],
      );
      const quay = await hosts.endpoints('quay.io');
      t.deepEqual(
        quay.map((e) => [e.host, e.skipVerify]),
        [
          ['m.example.com', false],
          ['quay.io', true],
        ],
      );
    },
  );
});

test('_default applies to registries without their own directory', async (t) => {
  await withConfigDir(
    {
      '_default/hosts.toml': `[host."https://catch-all.example.com"]\ncapabilities = ["pull", "resolve"]\n`,
      'ghcr.io/hosts.toml': `server = "https://ghcr.io"\n`,
    },
    async (dir) => {
      const hosts = new RegistryHosts({ configDir: dir });
      const quay = await hosts.endpoints('quay.io');
      t.deepEqual(
        quay.map((e) => e.host),
        ['catch-all.example.com', 'quay.io'],
      );
      const ghcr = await hosts.endpoints('ghcr.io');
      t.deepEqual(
        ghcr.map((e) => e.host),
        ['ghcr.io'],
      );
    },
  );
});

test('a host directory without hosts.toml is read in Docker certs.d layout', async (t) => {
  await withConfigDir(
    {
      'reg.example.com/ca.crt': 'x',
      'reg.example.com/client.cert': 'x',
      'reg.example.com/client.key': 'x',
      'reg.example.com/other.cert': 'x',
    },
    async (dir) => {
      const [ep] = await new RegistryHosts({ configDir: dir }).endpoints('reg.example.com');
      const d = path.join(dir, 'reg.example.com');
      t.deepEqual(ep.caFiles, [path.join(d, 'ca.crt')]);
      t.deepEqual(ep.clientCertificates, [
        { certFile: path.join(d, 'client.cert'), keyFile: path.join(d, 'client.key') },
        { certFile: path.join(d, 'other.cert') },
      ]);
      t.is(ep.scheme, 'https');
    },
  );
});

test('malformed hosts.toml is an error naming the file and the problem', async (t) => {
  const cases: Array<[string, RegExp]> = [
    ['server = "https://x\n', /line 1/],
    ['capabilities = ["pull", "fly"]\n', /unknown capability "fly"/],
    ['skip_verify = "yes"\n', /skip_verify must be a boolean/],
    ['[host."https://m"]\nca = 5\n', /host\."https:\/\/m": ca must be/],
    ['[host."https://m"]\nclient = [["only-one"]]\n', /client entries/],
    ['dial_timeout = "soon"\n', /dial_timeout/],
    ['server = "ftp://x"\n', /must use http or https/],
    ['[header]\nx = 1\n', /header "x"/],
  ];
  for (const [content, why] of cases) {
    await withConfigDir({ 'bad.example.com/hosts.toml': content }, async (dir) => {
      const err = await t.throwsAsync(new RegistryHosts({ configDir: dir }).endpoints('bad.example.com'));
      t.true(isCrispError(err, 'FailedPrecondition'), String(err));
      t.true(err?.message.includes(path.join(dir, 'bad.example.com', 'hosts.toml')), err?.message);
      t.regex(err?.message ?? '', why);
    });
  }
});

test('parseHostsToml path rules', (t) => {
  const entries = parseHostsToml(
    `server = "https://up.example.com/v2/"\n[host."https://a/x/y/"]\n[host."https://b/x/v2"]\n[host."https://c"]\noverride_path = true\n`,
    '/etc/crisp/certs.d/r/hosts.toml',
  );
  t.deepEqual(
    entries.map((e) => e.url?.path),
    ['/x/y/v2', '/x/v2', '/', '/v2'],
  );
});

test('configured credentials attach to the right endpoints', async (t) => {
  await withConfigDir({ 'docker.io/hosts.toml': `[host."https://mirror.example.com"]\n` }, async (dir) => {
    const hosts = new RegistryHosts({
      configDir: dir,
      credentials: {
        'https://index.docker.io/v1/': { auth: Buffer.from('hubuser:hubpass').toString('base64') },
        'mirror.example.com': { username: 'm', password: 'mp' },
        'private.example.com:5000': { identitytoken: 'refresh-me' },
      },
    });
    const [mirror, hub] = await hosts.endpoints('docker.io');
    t.deepEqual(mirror.credentials, { kind: 'basic', username: 'm', password: 'mp' });
    t.deepEqual(hub.credentials, { kind: 'basic', username: 'hubuser', password: 'hubpass' });
    const [priv] = await hosts.endpoints('private.example.com:5000');
    t.deepEqual(priv.credentials, { kind: 'identityToken', token: 'refresh-me' });
    const [none] = await hosts.endpoints('quay.io');
    t.is(none.credentials, undefined);
  });
  t.throws(() => new RegistryHosts({ configDir: '', credentials: { r: { auth: 'bm9jb2xvbg==' } } }), {
    message: /credentials configured for registry r: "auth" must encode "username:password"/,
  });
});

test('loopback detection', (t) => {
  for (const h of ['localhost', 'localhost:5000', '127.0.0.1', '127.1.2.3:80', '[::1]:5000', '[::1]']) t.true(isLoopbackHost(h), h);
  for (const h of ['localhost.example.com', '10.0.0.1:5000', 'docker.io', '[::2]:5000', '128.0.0.1']) t.false(isLoopbackHost(h), h);
});

test('AuthConfig precedence and server address matching', (t) => {
  t.deepEqual(credentialsFromAuthConfig({ username: 'u', password: 'p', auth: Buffer.from('x:y').toString('base64') }), {
    kind: 'basic',
    username: 'u',
    password: 'p',
  });
  t.deepEqual(credentialsFromAuthConfig({ auth: Buffer.from('x:y:z').toString('base64') }), {
    kind: 'basic',
    username: 'x',
    password: 'y:z',
  });
  t.deepEqual(credentialsFromAuthConfig({ identityToken: 'id', auth: Buffer.from('x:y').toString('base64') }), {
    kind: 'identityToken',
    token: 'id',
  });
  t.deepEqual(credentialsFromAuthConfig({ registryToken: 'rt' }), { kind: 'registryToken', token: 'rt' });
  t.is(credentialsFromAuthConfig({}), undefined);
  t.is(credentialsFromAuthConfig(undefined), undefined);
  const err = t.throws(() => credentialsFromAuthConfig({ auth: '!!!' }));
  t.true(isCrispError(err, 'InvalidArgument'));

  t.is(normalizeServerAddress('https://index.docker.io/v1/'), 'docker.io');
  t.is(normalizeServerAddress('Registry.Example.com:5000/'), 'registry.example.com:5000');
  t.true(serverAddressMatches('https://index.docker.io/v1/', 'registry-1.docker.io'));
  t.true(serverAddressMatches(undefined, 'anything'));
  t.true(serverAddressMatches('localhost:5000', 'localhost:5000'));
  t.false(serverAddressMatches('localhost:5000', 'localhost:5001'));
});

test('WWW-Authenticate parsing', (t) => {
  t.deepEqual(
    parseWwwAuthenticate('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull,push"'),
    [
      {
        scheme: 'bearer',
        params: { realm: 'https://auth.docker.io/token', service: 'registry.docker.io', scope: 'repository:library/busybox:pull,push' },
      },
    ],
  );
  t.deepEqual(parseWwwAuthenticate('Basic realm="Registry, \\"quoted\\"" , Bearer realm="https://t/token", service=svc,scope=""'), [
    { scheme: 'basic', params: { realm: 'Registry, "quoted"' } },
    { scheme: 'bearer', params: { realm: 'https://t/token', service: 'svc', scope: '' } },
  ]);
  t.deepEqual(parseWwwAuthenticate(['Negotiate abc==', 'BASIC Realm=x']), [
    { scheme: 'negotiate', params: { '': 'abc==' } },
    { scheme: 'basic', params: { realm: 'x' } },
  ]);
  t.deepEqual(parseWwwAuthenticate('Bearer'), [{ scheme: 'bearer', params: {} }]);
  t.deepEqual(parseWwwAuthenticate(undefined), []);
});
