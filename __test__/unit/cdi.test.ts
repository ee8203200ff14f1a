import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import test from 'ava';
import { CdiRegistry, parseCdiSpec, parseQualifiedName, requestedCdiDevices } from '../../src/container/cdi';
import { CrispError } from '../../src/util/errors';

function specDirs(t: { teardown(fn: () => void): void }, count: number): string[] {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'crisp-cdi-'));
  t.teardown(() => fs.rmSync(base, { recursive: true, force: true }));
  return Array.from({ length: count }, (_, i) => {
    const dir = path.join(base, `d${i}`);
    fs.mkdirSync(dir);
    return dir;
  });
}

const GPU_YAML = `
cdiVersion: 0.6.0
kind: example.com/gpu
containerEdits:
  env: [GPU_VENDOR=example]
  mounts:
    - hostPath: /usr/lib/example
      containerPath: /usr/lib/example
      options: [ro, nosuid, nodev, bind]
devices:
  - name: gpu0
    containerEdits:
      deviceNodes:
        - path: /dev/example-gpu0
          hostPath: /dev/null
          permissions: rw
      env: [GPU=0]
  - name: gpu1
    containerEdits:
      deviceNodes:
        - {path: /dev/example-gpu1, type: c, major: 195, minor: 1, fileMode: 0o660, uid: 0, gid: 44}
      env: [GPU=1]
      additionalGids: [44, 0]
`;

test('qualified names: vendor.com/class=name', (t) => {
  t.deepEqual(parseQualifiedName('example.com/gpu=gpu0'), { kind: 'example.com/gpu', name: 'gpu0' });
  t.deepEqual(parseQualifiedName('nvidia.com/gpu=all'), { kind: 'nvidia.com/gpu', name: 'all' });
  for (const bad of ['gpu0', 'example.com/gpu', 'example.com=gpu0', '/gpu=x', 'example.com/gpu=', 'exa_mple.com/gpu=x', 'example.com/g/pu=x']) {
    t.throws(() => parseQualifiedName(bad), { message: /not a qualified name/ }, bad);
  }
});

test('requested devices: the CRI field, then cdi.k8s.io annotations, without repeats', (t) => {
  const names = requestedCdiDevices({
    CDIDevices: [{ name: 'example.com/gpu=gpu0' }],
    annotations: { 'cdi.k8s.io/plugin': 'example.com/gpu=gpu1, example.com/gpu=gpu0', other: 'example.com/gpu=ignored' },
  });
  t.deepEqual(names, ['example.com/gpu=gpu0', 'example.com/gpu=gpu1']);
});

test('a YAML spec: spec-wide edits once, each device its own', async (t) => {
  const [etc] = specDirs(t, 1);
  fs.writeFileSync(path.join(etc!, 'example.yaml'), GPU_YAML);
  const edits = await new CdiRegistry([etc!]).resolve(['example.com/gpu=gpu0', 'example.com/gpu=gpu1']);
  t.deepEqual(edits.env, ['GPU_VENDOR=example', 'GPU=0', 'GPU=1']);
  t.deepEqual(edits.deviceNodes, [
    { path: '/dev/example-gpu0', hostPath: '/dev/null', permissions: 'rw' },
    { path: '/dev/example-gpu1', type: 'c', major: 195, minor: 1, fileMode: 0o660, uid: 0, gid: 44 },
  ]);
  t.deepEqual(edits.mounts, [{ hostPath: '/usr/lib/example', containerPath: '/usr/lib/example', options: ['ro', 'nosuid', 'nodev', 'bind'] }]);
  t.deepEqual(edits.additionalGids, [44], 'gid 0 is ignored');
});

test('a later directory overrides a device; the same device twice in one directory conflicts', async (t) => {
  const [etc, run] = specDirs(t, 2);
  const spec = (env: string) => JSON.stringify({ cdiVersion: '0.5.0', kind: 'example.com/nic', devices: [{ name: 'n0', containerEdits: { env: [env] } }] });
  fs.writeFileSync(path.join(etc!, 'a.json'), spec('FROM=etc'));
  fs.writeFileSync(path.join(run!, 'a.json'), spec('FROM=run'));
  t.deepEqual((await new CdiRegistry([etc!, run!]).resolve(['example.com/nic=n0'])).env, ['FROM=run']);
  fs.writeFileSync(path.join(run!, 'b.json'), spec('FROM=run-b'));
  await t.throwsAsync(new CdiRegistry([etc!, run!]).resolve(['example.com/nic=n0']), { message: /declared by both .*a\.json and .*b\.json/ });
});

test('unknown devices are NotFound and name unreadable specs; OCI hooks are kept, unknown kinds refused; missing directories are empty', async (t) => {
  const [etc] = specDirs(t, 1);
  fs.writeFileSync(path.join(etc!, 'broken.json'), '{ not json');
  fs.writeFileSync(
    path.join(etc!, 'hooked.json'),
    JSON.stringify({
      cdiVersion: '0.6.0',
      kind: 'example.com/acc',
      devices: [
        { name: 'plain', containerEdits: { env: ['A=1'] } },
        { name: 'hooked', containerEdits: { hooks: [{ hookName: 'createContainer', path: '/usr/bin/true', args: ['true', '-x'], timeout: 3 }] } },
        { name: 'poststart', containerEdits: { hooks: [{ hookName: 'poststart', path: '/usr/bin/true' }] } },
        { name: 'odd', containerEdits: { hooks: [{ hookName: 'prestart', path: '/usr/bin/true' }] } },
      ],
    }),
  );
  const registry = new CdiRegistry([etc!, path.join(etc!, 'missing')]);
  const unknown = (await t.throwsAsync(registry.resolve(['example.com/acc=nope']))) as CrispError;
  t.is(unknown.code, 'NotFound');
  t.regex(unknown.message, /example\.com\/acc=nope.*unreadable: .*broken\.json: not valid JSON/);
  t.deepEqual((await registry.resolve(['example.com/acc=plain'])).env, ['A=1']);
  t.deepEqual((await registry.resolve(['example.com/acc=hooked', 'example.com/acc=poststart'])).hooks, {
    createContainer: [{ path: '/usr/bin/true', args: ['true', '-x'], timeout: 3 }],
    poststart: [{ path: '/usr/bin/true' }],
  });
  const odd = (await t.throwsAsync(registry.resolve(['example.com/acc=odd']))) as CrispError;
  t.is(odd.code, 'Unimplemented', 'a device whose spec needs something crisp does not do is refused, not half-given');
  t.regex(odd.message, /hook kind "prestart" is not an OCI hook crisp runs/);
  t.deepEqual(await registry.resolve([]), { env: [], deviceNodes: [], mounts: [], additionalGids: [], hooks: {}, unsupported: [] });
});

test('spec validation names the file and the problem', (t) => {
  const cases: [string, RegExp][] = [
    ['{}', /cdiVersion is missing/],
    ['{"cdiVersion":"0.6.0","kind":"bad","devices":[{"name":"x"}]}', /not a qualified name/],
    ['{"cdiVersion":"0.6.0","kind":"a.com/b","devices":[]}', /at least one device/],
    ['{"cdiVersion":"0.6.0","kind":"a.com/b","devices":[{"name":"x"},{"name":"x"}]}', /declared twice/],
    ['{"cdiVersion":"0.6.0","kind":"a.com/b","devices":[{"name":"x","containerEdits":{"deviceNodes":[{"path":"dev/x"}]}}]}', /absolute path/],
    ['{"cdiVersion":"0.6.0","kind":"a.com/b","devices":[{"name":"x","containerEdits":{"env":["NOEQUALS"]}}]}', /NAME=value/],
    ['{"cdiVersion":"0.6.0","kind":"a.com/b","devices":[{"name":"x","containerEdits":{"deviceNodes":[{"path":"/dev/x","permissions":"rwx"}]}}]}', /invalid permissions/],
  ];
  for (const [text, message] of cases) t.throws(() => parseCdiSpec(text, '/etc/cdi/t.json'), { message }, text);
});
