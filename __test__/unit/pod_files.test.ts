import test from 'ava';
import { renderHosts, renderResolvConf, validateHostname } from '../../src/sandbox/pod_files';

const HOST = 'nameserver 192.0.2.53\nsearch example.org\n';

test('resolv.conf from dns_config', (t) => {
  t.is(
    renderResolvConf({ servers: ['10.96.0.10', 'fd00::a'], searches: ['ns.svc.cluster.local', 'svc.cluster.local'], options: ['ndots:5', 'edns0'] }, HOST),
    'search ns.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\nnameserver fd00::a\noptions ndots:5 edns0\n',
  );
  t.is(renderResolvConf({ servers: ['1.1.1.1'], searches: [], options: [] }, HOST), 'nameserver 1.1.1.1\n');
});

test('without dns_config the host resolv.conf is used', (t) => {
  t.is(renderResolvConf(undefined, HOST), HOST);
  t.is(renderResolvConf({ servers: [], searches: [], options: [] }, HOST), HOST);
});

test('too many search domains are rejected', (t) => {
  const searches = Array.from({ length: 33 }, (_, i) => `d${i}.example`);
  t.throws(() => renderResolvConf({ servers: [], searches, options: [] }, HOST), { message: /33 search domains/ });
});

test('hosts file', (t) => {
  const hosts = renderHosts('web-0', ['10.1.2.3']);
  t.true(hosts.startsWith('127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n'));
  t.true(hosts.endsWith('10.1.2.3\tweb-0\n'));
});

test('hostname validation', (t) => {
  t.notThrows(() => validateHostname('web-0.svc'));
  t.throws(() => validateHostname('Web_0'), { message: /not a valid DNS-1123/ });
  t.throws(() => validateHostname('a'.repeat(65)), { message: /longer than 64/ });
});
