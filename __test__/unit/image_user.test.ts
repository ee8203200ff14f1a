import test from 'ava';
import { SupplementalGroupsPolicy } from '../../src/generated/runtime/v1/api';
import { parseGroup, parsePasswd, resolveUser, type UserRequest } from '../../src/container/image_user';
import { isCrispError } from '../../src/util/errors';

const PASSWD = `root:x:0:0:root:/root:/bin/bash
# a comment
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin
app:x:1000:1001::/home/app:/bin/sh
broken line
bad:x:notanumber:1::/:/bin/sh
`;

const GROUP = `root:x:0:
daemon:x:1:
www-data:x:33:
staff:x:50:app,www-data
app:x:1001:app
video:x:44:app
audio:x:29:someoneelse
`;

const image = (files: Record<string, string>) => async (p: string) => (p in files ? Buffer.from(files[p]!) : undefined);
const withFiles = image({ '/etc/passwd': PASSWD, '/etc/group': GROUP });
const noFiles = image({});

const req = (over: Partial<UserRequest>): UserRequest => ({
  supplementalGroups: [],
  supplementalGroupsPolicy: SupplementalGroupsPolicy.Merge,
  ...over,
});

test('parsePasswd and parseGroup skip comments and malformed lines', (t) => {
  const users = parsePasswd(PASSWD);
  t.deepEqual(
    users.map((u) => [u.name, u.uid, u.gid]),
    [
      ['root', 0, 0],
      ['daemon', 1, 1],
      ['www-data', 33, 33],
      ['app', 1000, 1001],
    ],
  );
  const staff = parseGroup(GROUP).find((g) => g.name === 'staff');
  t.deepEqual(staff, { name: 'staff', gid: 50, members: ['app', 'www-data'] });
});

const cases: [string, Partial<UserRequest>, { uid: number; gid: number; additionalGids: number[] }][] = [
  ['default is root', {}, { uid: 0, gid: 0, additionalGids: [0] }],
  ['image numeric uid with passwd entry takes its gid and groups', { imageUser: '1000' }, { uid: 1000, gid: 1001, additionalGids: [44, 50, 1001] }],
  ['image numeric uid without entry gets gid 0', { imageUser: '4242' }, { uid: 4242, gid: 0, additionalGids: [0] }],
  ['image uid:gid', { imageUser: '1000:7' }, { uid: 1000, gid: 7, additionalGids: [7, 44, 50] }],
  ['image user name', { imageUser: 'www-data' }, { uid: 33, gid: 33, additionalGids: [33, 50] }],
  ['image name:group', { imageUser: 'app:staff' }, { uid: 1000, gid: 50, additionalGids: [44, 50] }],
  ['image uid:group name', { imageUser: '33:video' }, { uid: 33, gid: 44, additionalGids: [44, 50] }],
  ['run_as_user overrides the image', { imageUser: 'app', runAsUser: 33n }, { uid: 33, gid: 33, additionalGids: [33, 50] }],
  ['run_as_username wins over run_as_user', { runAsUser: 0n, runAsUsername: 'app' }, { uid: 1000, gid: 1001, additionalGids: [44, 50, 1001] }],
  ['run_as_group overrides the primary group', { runAsUser: 1000n, runAsGroup: 3000n }, { uid: 1000, gid: 3000, additionalGids: [44, 50, 3000] }],
  ['supplemental groups merge, sorted and unique', { runAsUser: 1000n, supplementalGroups: [5678n, 1234n, 50n] }, { uid: 1000, gid: 1001, additionalGids: [44, 50, 1001, 1234, 5678] }],
  [
    'Strict policy ignores /etc/group',
    { runAsUser: 1000n, supplementalGroups: [1234n], supplementalGroupsPolicy: SupplementalGroupsPolicy.Strict },
    { uid: 1000, gid: 1001, additionalGids: [1001, 1234] },
  ],
];

for (const [name, over, expected] of cases) {
  test(`resolveUser: ${name}`, async (t) => {
    t.deepEqual(await resolveUser(req(over), withFiles), expected);
  });
}

test('resolveUser: numeric users work in images without /etc/passwd', async (t) => {
  t.deepEqual(await resolveUser(req({ imageUser: '65534:65534' }), noFiles), { uid: 65534, gid: 65534, additionalGids: [65534] });
  t.deepEqual(await resolveUser(req({ runAsUser: 1000n }), noFiles), { uid: 1000, gid: 0, additionalGids: [0] });
});

const errors: [string, Partial<UserRequest>, RegExp][] = [
  ['run_as_group without a user', { runAsGroup: 10n }, /run_as_group 10 is specified without run_as_user/],
  ['unknown user name from the image', { imageUser: 'nobody' }, /user "nobody" \(from the image\) is not found/],
  ['unknown run_as_username', { runAsUsername: 'ghost' }, /user "ghost" \(from the security context\) is not found/],
  ['unknown group name', { imageUser: 'app:wheel' }, /group "wheel" .* not found/],
  ['negative uid', { runAsUser: -1n }, /run_as_user -1 is out of range/],
  ['uid beyond 32 bits', { runAsUser: 1n << 40n }, /out of range/],
  ['empty user part', { imageUser: ':5' }, /empty user name/],
];

for (const [name, over, message] of errors) {
  test(`resolveUser rejects ${name}`, async (t) => {
    const err = await t.throwsAsync(resolveUser(req(over), withFiles), { message });
    t.true(isCrispError(err, 'InvalidArgument'));
  });
}
