import test from 'ava';
import { isCrispError } from '../../src/util/errors';
import {
  isDigest,
  isImageId,
  normalizeImageId,
  parseDigest,
  parseReference,
  tryParseReference,
} from '../../src/image/reference';

const D256 = `sha256:${'a'.repeat(64)}`;
const D512 = `sha512:${'b'.repeat(128)}`;

// input → [domain, path, tag, digest]
const valid: Array<[string, string, string, string | undefined, string | undefined]> = [
  ['busybox', 'docker.io', 'library/busybox', 'latest', undefined],
  ['busybox:1.36', 'docker.io', 'library/busybox', '1.36', undefined],
  ['library/busybox', 'docker.io', 'library/busybox', 'latest', undefined],
  ['docker.io/busybox', 'docker.io', 'library/busybox', 'latest', undefined],
  ['index.docker.io/busybox:glibc', 'docker.io', 'library/busybox', 'glibc', undefined],
  ['docker.io/library/busybox:latest', 'docker.io', 'library/busybox', 'latest', undefined],
  ['user/img', 'docker.io', 'user/img', 'latest', undefined],
  ['user/img:v1.0-rc_1', 'docker.io', 'user/img', 'v1.0-rc_1', undefined],
  ['user/sub/img', 'docker.io', 'user/sub/img', 'latest', undefined],
  ['localhost/img', 'localhost', 'img', 'latest', undefined],
  ['localhost:5000/a/b:tag', 'localhost:5000', 'a/b', 'tag', undefined],
  ['127.0.0.1:5000/x', '127.0.0.1:5000', 'x', 'latest', undefined],
  ['[::1]:5000/x:y', '[::1]:5000', 'x', 'y', undefined],
  ['registry.k8s.io/pause:3.9', 'registry.k8s.io', 'pause', '3.9', undefined],
  ['gcr.io/project/app', 'gcr.io', 'project/app', 'latest', undefined],
  ['my-registry:443/team/app', 'my-registry:443', 'team/app', 'latest', undefined],
  ['Registry.Example.com/app', 'Registry.Example.com', 'app', 'latest', undefined],
  ['UpperDomain/app', 'UpperDomain', 'app', 'latest', undefined],
  ['a.b/c__d/e-f/g.h/i---j', 'a.b', 'c__d/e-f/g.h/i---j', 'latest', undefined],
  [`busybox@${D256}`, 'docker.io', 'library/busybox', undefined, D256],
  [`busybox:1.36@${D256}`, 'docker.io', 'library/busybox', '1.36', D256],
  [`quay.io/org/app@${D512}`, 'quay.io', 'org/app', undefined, D512],
  [`localhost:5000/app:tag@${D256}`, 'localhost:5000', 'app', 'tag', D256],
  [`img:${'t'.repeat(128)}`, 'docker.io', 'library/img', 't'.repeat(128), undefined],
  ['img:_underscore', 'docker.io', 'library/img', '_underscore', undefined],
];

for (const [input, domain, path, tag, digest] of valid) {
  test(`parses ${input}`, (t) => {
    const r = parseReference(input);
    t.is(r.domain, domain);
    t.is(r.path, path);
    t.is(r.tag, tag);
    t.is(r.digest, digest);
  });
}

const invalid: Array<[string, RegExp]> = [
  ['', /empty/],
  [' busybox', /whitespace/],
  ['Busybox', /lowercase/],
  ['docker.io/Library/busybox', /lowercase/],
  ['busybox:', /bad tag/],
  ['busybox:-bad', /bad tag/],
  [`busybox:${'t'.repeat(129)}`, /bad tag/],
  ['busybox:a+b', /bad tag/],
  ['busybox@sha256:abc', /bad digest/],
  [`busybox@md5:${'a'.repeat(32)}`, /unsupported digest algorithm/],
  [`busybox@sha256:${'A'.repeat(64)}`, /bad digest/],
  [`busybox@sha512:${'a'.repeat(64)}`, /bad digest/],
  [`busybox@${D256}@${D256}`, /more than one/],
  ['localhost:5000/', /missing repository path/],
  ['/busybox', /bad repository path/],
  ['a//b', /bad repository path/],
  ['a/b/', /bad repository path/],
  ['a_-b', /bad repository path/],
  ['a___b', /bad repository path/],
  ['-a/b', /bad repository path/],
  ['a.', /bad repository path/],
  ['exa_mple.com/a', /bad registry host/],
  ['-example.com/a', /bad registry host/],
  ['example.com:port/a', /bad registry host/],
  [':5000/a', /bad registry host/],
  ['a'.repeat(64), /image ID/],
  [`sha256:${'c'.repeat(64)}`, /image ID/],
  [`example.com/${'a'.repeat(250)}`, /longer than 255/],
];

for (const [input, why] of invalid) {
  test(`rejects ${JSON.stringify(input.length > 60 ? `${input.slice(0, 60)}…` : input)}`, (t) => {
    const err = t.throws(() => parseReference(input));
    t.true(isCrispError(err, 'InvalidArgument'), String(err));
    t.regex(err?.message ?? '', why);
    t.true(err?.message.includes('invalid image reference'));
    t.is(tryParseReference(input), undefined);
  });
}

test('string forms', (t) => {
  const hub = parseReference('busybox');
  t.is(hub.repository(), 'docker.io/library/busybox');
  t.is(hub.canonical(), 'docker.io/library/busybox:latest');
  t.is(hub.tagged(), 'docker.io/library/busybox:latest');
  t.is(hub.familiar(), 'busybox:latest');
  t.is(hub.familiarName(), 'busybox');
  t.is(hub.object(), 'latest');
  t.is(hub.toString(), 'docker.io/library/busybox:latest');
  t.is(hub.digested(D256), `docker.io/library/busybox@${D256}`);
  t.throws(() => hub.digested(), { message: /has no digest/ });

  const both = parseReference(`localhost:5000/a/b:tag@${D256}`);
  t.is(both.canonical(), `localhost:5000/a/b@${D256}`, 'digest wins for pulling');
  t.is(both.tagged(), 'localhost:5000/a/b:tag', 'tag kept for repo_tags');
  t.is(both.object(), D256);
  t.is(both.familiar(), `localhost:5000/a/b:tag@${D256}`);
  t.is(both.toString(), `localhost:5000/a/b:tag@${D256}`);

  const digestOnly = parseReference(`user/img@${D256}`);
  t.is(digestOnly.tagged(), undefined);
  t.is(digestOnly.familiar(), `user/img@${D256}`);
  t.is(digestOnly.canonical(), `docker.io/user/img@${D256}`);

  t.is(parseReference('library/a/b').familiarName(), 'library/a/b', 'only single-component official names shorten');
  const pinned = parseReference('busybox:1').withDigest(D512);
  t.is(pinned.canonical(), `docker.io/library/busybox@${D512}`);
  t.is(pinned.tag, '1');
});

test('image IDs are recognised and normalised', (t) => {
  const hex = 'f'.repeat(64);
  t.true(isImageId(hex));
  t.true(isImageId(`sha256:${hex}`));
  t.false(isImageId(`sha256:${'f'.repeat(63)}`));
  t.false(isImageId('F'.repeat(64)));
  t.false(isImageId(`sha512:${'f'.repeat(128)}`));
  t.false(isImageId('busybox'));
  t.is(normalizeImageId(hex), `sha256:${hex}`);
  t.is(normalizeImageId(`sha256:${hex}`), `sha256:${hex}`);
  t.throws(() => normalizeImageId('busybox'), { message: /not an image ID/ });
});

test('digests are validated per algorithm', (t) => {
  t.deepEqual(parseDigest(D256), { algorithm: 'sha256', hex: 'a'.repeat(64) });
  t.deepEqual(parseDigest(D512), { algorithm: 'sha512', hex: 'b'.repeat(128) });
  t.true(isDigest(D256));
  t.false(isDigest('sha256:'));
  t.false(isDigest('latest'));
  t.false(isDigest(`sha384:${'a'.repeat(96)}`));
  const err = t.throws(() => parseDigest('sha256:xyz', 'layer digest'));
  t.true(isCrispError(err, 'InvalidArgument'));
  t.regex(err?.message ?? '', /invalid layer digest "sha256:xyz"/);
});
