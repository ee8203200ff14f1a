import * as fs from 'node:fs';
import * as path from 'node:path';
import test from 'ava';
import {
  ContainerConfig,
  MountPropagation,
  NamespaceMode,
  PodSandboxConfig,
  SecurityProfile_ProfileType,
  type LinuxContainerSecurityContext,
} from '../../src/generated/runtime/v1/api';
import type { CdiEdits } from '../../src/container/cdi';
import { buildSpec, type HostDevice, imageSubPath, imageVolumeKey, type ImageVolumeSource, type SpecHost, type SpecInput } from '../../src/container/spec_builder';
import { resolveProcessArgs } from '../../src/container/command';
import { DEFAULT_CAPABILITIES, KNOWN_CAPABILITIES } from '../../src/container/capabilities';
import { DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS } from '../../src/container/masked_paths';
import { evaluateSeccomp } from '../../src/container/seccomp_profile';
import { isCrispError } from '../../src/util/errors';
import type { ImageConfig } from '../../src/image/image_manager';

const SANDBOX_DIR = '/state/sandboxes/sb1';
const UPPER = '/state/containers/c1/upper';
const GOLDEN = path.join(__dirname, '../../../__test__/fixtures/container_spec_golden.json');

interface FakeHostState {
  existing: Set<string>;
  symlinks: Record<string, string>;
  devices: Record<string, HostDevice>;
  dirs: Record<string, string[]>;
  propagation: Record<string, 'shared' | 'slave' | 'private'>;
  files: Record<string, string>;
  created: string[];
  apparmor: boolean;
  selinux: boolean;
  /** Profiles given to loadAppArmorProfile; a profile text containing "FAIL" is refused. */
  loadedProfiles: string[];
  apparmorParserError?: string;
}

function fakeHost(over: Partial<FakeHostState> = {}): { host: Partial<SpecHost>; state: FakeHostState } {
  const state: FakeHostState = {
    existing: new Set([`${SANDBOX_DIR}/hostname`, `${SANDBOX_DIR}/hosts`, `${SANDBOX_DIR}/resolv.conf`, `${SANDBOX_DIR}/shm`, '/dev/shm']),
    symlinks: {},
    devices: {},
    dirs: {},
    propagation: {},
    files: {},
    created: [],
    apparmor: false,
    selinux: false,
    loadedProfiles: [],
    ...over,
  };
  const enoent = (p: string) => Object.assign(new Error(`ENOENT: no such file or directory, '${p}'`), { code: 'ENOENT' });
  const host: Partial<SpecHost> = {
    exists: async (p) => state.existing.has(p) || p in state.symlinks || p in state.devices || p in state.dirs,
    realpath: async (p) => {
      const target = state.symlinks[p] ?? p;
      if (!(state.existing.has(target) || target in state.devices || target in state.dirs)) throw enoent(p);
      return target;
    },
    mkdirAll: async (p) => {
      state.created.push(p);
      state.existing.add(p);
    },
    statDevice: async (p) => state.devices[p],
    isDirectory: async (p) => p in state.dirs,
    readDir: async (p) => state.dirs[p] ?? [],
    mountPropagation: async (p) => state.propagation[p] ?? 'private',
    apparmorEnabled: async () => state.apparmor,
    apparmorProfileLoaded: async (name) => name === 'k8s-nginx',
    loadAppArmorProfile: async (text) => {
      if (state.apparmorParserError) throw new Error(state.apparmorParserError);
      state.loadedProfiles.push(text);
    },
    selinuxEnabled: async () => state.selinux,
    hostname: () => 'node-1',
    capLastCap: async () => 40,
    swapControllerAvailable: async () => true,
    readFile: async (p) => {
      if (!(p in state.files)) throw enoent(p);
      return Buffer.from(state.files[p]!);
    },
  };
  return { host, state };
}

const PASSWD = 'root:x:0:0:root:/root:/bin/sh\nnginx:x:101:101::/nonexistent:/bin/false\n';
const GROUP = 'root:x:0:\nnginx:x:101:\nwww:x:33:nginx\n';

function imageConfig(over: NonNullable<ImageConfig['config']> = {}): ImageConfig {
  return {
    architecture: 'amd64',
    os: 'linux',
    config: {
      Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'NGINX_VERSION=1.27.0'],
      Entrypoint: ['/docker-entrypoint.sh'],
      Cmd: ['nginx', '-g', 'daemon off;'],
      WorkingDir: '',
      ...over,
    },
  };
}

/** What ts-proto's fromPartial accepts, spelled out so helpers can take partial messages. */
type DeepPartial<T> = T extends string | number | boolean | bigint | undefined
  ? T
  : T extends (infer U)[]
    ? DeepPartial<U>[]
    : T extends object
      ? { [K in keyof T]?: DeepPartial<T[K]> }
      : T;

const podConfig = (over: DeepPartial<PodSandboxConfig> = {}) =>
  PodSandboxConfig.fromPartial({ metadata: { name: 'web-0', namespace: 'default', uid: 'pod-uid-1', attempt: 0 }, hostname: 'web-0', ...over } as never);

const containerConfig = (over: DeepPartial<ContainerConfig> = {}) =>
  ContainerConfig.fromPartial({ metadata: { name: 'nginx', attempt: 0 }, image: { image: 'docker.io/library/nginx:1.27' }, ...over } as never);

function input(over: Partial<SpecInput> = {}, hostOver: Partial<FakeHostState> = {}): SpecInput & { state: FakeHostState } {
  const { host, state } = fakeHost(hostOver);
  return {
    containerId: 'c1',
    config: containerConfig(),
    sandboxConfig: podConfig(),
    sandbox: {
      id: 'sb1',
      dir: SANDBOX_DIR,
      namespaces: { network: 'pod', ipc: 'pod', uts: 'pod', pid: 'container' },
      nsPaths: { net: '/proc/77/ns/net', ipc: '/proc/77/ns/ipc', uts: '/proc/77/ns/uts', pid: '/proc/77/ns/pid' },
    },
    image: { config: imageConfig(), lowerDirs: ['/snap/3/fs', '/snap/2/fs', '/snap/1/fs'] },
    rootfs: { upperDir: UPPER, workDir: '/state/containers/c1/work' },
    cgroup: { version: 2, paths: { '': '/sys/fs/cgroup/kubepods/pod-uid-1/c1' } },
    readFileInImage: async (p) => (p === '/etc/passwd' ? Buffer.from(PASSWD) : p === '/etc/group' ? Buffer.from(GROUP) : undefined),
    host,
    state,
    ...over,
  };
}

const privilegedPod = podConfig({ linux: { securityContext: { privileged: true } } });

// ---- command ----

const commandCases: [string, string[], string[], string[] | null, string[] | null, string[]][] = [
  ['image entrypoint + cmd', [], [], ['/ep'], ['a', 'b'], ['/ep', 'a', 'b']],
  ['args replace cmd, keep entrypoint', [], ['x'], ['/ep'], ['a'], ['/ep', 'x']],
  ['command replaces entrypoint and drops cmd', ['/bin/sh'], [], ['/ep'], ['a'], ['/bin/sh']],
  ['command and args replace both', ['/bin/sh'], ['-c', 'true'], ['/ep'], ['a'], ['/bin/sh', '-c', 'true']],
  ['cmd alone', [], [], null, ['sleep', '1'], ['sleep', '1']],
  ['ENTRYPOINT [""] is cleared', [], [], [''], ['run'], ['run']],
  ['args without any entrypoint', [], ['echo', 'hi'], null, null, ['echo', 'hi']],
];

for (const [name, command, args, entrypoint, cmd, expected] of commandCases) {
  test(`command: ${name}`, (t) => {
    t.deepEqual(resolveProcessArgs({ command, args }, { Entrypoint: entrypoint, Cmd: cmd }), expected);
  });
}

test('command: nothing to run is InvalidArgument', async (t) => {
  t.throws(() => resolveProcessArgs({ command: [], args: [] }, { Entrypoint: null, Cmd: null }), { message: 'no command specified' });
  const inp = input({ image: { config: imageConfig({ Entrypoint: null, Cmd: null }), lowerDirs: ['/l'] } });
  const err = await t.throwsAsync(buildSpec(inp), { message: 'no command specified' });
  t.true(isCrispError(err, 'InvalidArgument'));
});

// ---- env and working dir ----

test('env: default PATH, HOSTNAME, image env, then config env overriding in place', async (t) => {
  const spec = await buildSpec(
    input({
      image: { config: imageConfig({ Env: ['NGINX_VERSION=1.27.0', 'LANG=C'] }), lowerDirs: ['/l'] },
      config: containerConfig({ envs: [{ key: 'LANG', value: 'C.UTF-8' }, { key: 'POD_IP', value: '10.0.0.5' }, { key: 'EMPTY', value: '' }] }),
    }),
  );
  t.deepEqual(spec.process.env, [
    'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
    'HOSTNAME=web-0',
    'NGINX_VERSION=1.27.0',
    'LANG=C.UTF-8',
    'POD_IP=10.0.0.5',
    'EMPTY=',
    'HOME=/root',
  ]);
});

test('env: HOME comes from the user\'s passwd entry unless set, "/" for a uid without one', async (t) => {
  const nginx = await buildSpec(input({ image: { config: imageConfig({ User: 'nginx' }), lowerDirs: ['/l'] } }));
  t.true(nginx.process.env.includes('HOME=/nonexistent'));
  const unknown = await buildSpec(input({ image: { config: imageConfig({ User: '4242' }), lowerDirs: ['/l'] } }));
  t.true(unknown.process.env.includes('HOME=/'));
  const preset = await buildSpec(input({ image: { config: imageConfig({ Env: ['HOME=/data'] }), lowerDirs: ['/l'] } }));
  t.deepEqual(preset.process.env.filter((e) => e.startsWith('HOME=')), ['HOME=/data']);
});

test('env: image PATH replaces the default; host-network pods without a hostname get the node name', async (t) => {
  const spec = await buildSpec(
    input({
      image: { config: imageConfig({ Env: ['PATH=/opt/bin'] }), lowerDirs: ['/l'] },
      sandboxConfig: podConfig({ hostname: '' }),
    }),
  );
  t.deepEqual(spec.process.env, ['PATH=/opt/bin', 'HOSTNAME=node-1', 'HOME=/root']);
});

test('working dir: config, else image, else /; relative config dir is rejected', async (t) => {
  t.is((await buildSpec(input({ config: containerConfig({ workingDir: '/srv/app/' }) }))).process.cwd, '/srv/app');
  t.is((await buildSpec(input({ image: { config: imageConfig({ WorkingDir: '/usr/share/nginx' }), lowerDirs: ['/l'] } }))).process.cwd, '/usr/share/nginx');
  t.is((await buildSpec(input())).process.cwd, '/');
  const err = await t.throwsAsync(buildSpec(input({ config: containerConfig({ workingDir: 'srv' }) })), { message: /not an absolute path/ });
  t.true(isCrispError(err, 'InvalidArgument'));
});

test('tty, readonly rootfs, no_new_privs, oom_score_adj and rlimits', async (t) => {
  const spec = await buildSpec(
    input({
      config: containerConfig({
        tty: true,
        linux: { securityContext: { readonlyRootfs: true, noNewPrivs: true }, resources: { oomScoreAdj: 1000n } },
      }),
    }),
  );
  t.true(spec.process.terminal);
  t.true(spec.root.readonly);
  t.true(spec.process.noNewPrivileges);
  t.is(spec.process.oomScoreAdj, 1000);
  t.deepEqual(spec.process.rlimits, [{ type: 'RLIMIT_NOFILE', hard: 1048576, soft: 1048576 }]);
  // The pod's files follow the read-only rootfs.
  t.deepEqual(spec.mounts.find((m) => m.destination === '/etc/hosts')?.options, ['rbind', 'rprivate', 'ro']);
});

// ---- user ----

test('user: image user name resolved through the image passwd and group files', async (t) => {
  const spec = await buildSpec(input({ image: { config: imageConfig({ User: 'nginx' }), lowerDirs: ['/l'] } }));
  t.deepEqual(spec.process.user, { uid: 101, gid: 101, additionalGids: [33, 101] });
});

test('user: security context wins; supplemental groups are added', async (t) => {
  const spec = await buildSpec(
    input({
      image: { config: imageConfig({ User: 'nginx' }), lowerDirs: ['/l'] },
      config: containerConfig({ linux: { securityContext: { runAsUser: { value: 1000n }, runAsGroup: { value: 3000n }, supplementalGroups: [1234n] } } }),
    }),
  );
  t.deepEqual(spec.process.user, { uid: 1000, gid: 3000, additionalGids: [1234, 3000] });
});

test('user: errors are InvalidArgument', async (t) => {
  let err = await t.throwsAsync(buildSpec(input({ config: containerConfig({ linux: { securityContext: { runAsGroup: { value: 5n } } } }) })));
  t.true(isCrispError(err, 'InvalidArgument'));
  err = await t.throwsAsync(buildSpec(input({ image: { config: imageConfig({ User: 'postgres' }), lowerDirs: ['/l'] } })), { message: /"postgres"/ });
  t.true(isCrispError(err, 'InvalidArgument'));
});

// ---- mounts ----

test('mounts: defaults, pod files, shm, CRI mounts by depth, then image volumes', async (t) => {
  const inp = input(
    {
      config: containerConfig({
        mounts: [
          { containerPath: '/var/lib/data/cache', hostPath: '/host/cache', readonly: false },
          { containerPath: '/var/log', hostPath: '/host/log', readonly: true },
          { containerPath: '/etc/hosts', hostPath: '/kubelet/pods/p/etc-hosts' },
        ],
      }),
      image: { config: imageConfig({ Volumes: { '/var/lib/data': {}, '/var/log': {} } }), lowerDirs: ['/l'] },
    },
    {},
  );
  for (const p of ['/host/cache', '/host/log', '/kubelet/pods/p/etc-hosts']) inp.state.existing.add(p);
  const spec = await buildSpec(inp);
  t.deepEqual(
    spec.mounts.map((m) => [m.destination, m.type]),
    [
      ['/proc', 'proc'],
      ['/dev', 'tmpfs'],
      ['/dev/pts', 'devpts'],
      ['/dev/mqueue', 'mqueue'],
      ['/sys', 'sysfs'],
      ['/sys/fs/cgroup', 'cgroup'],
      ['/var/log', 'bind'],
      ['/etc/hosts', 'bind'],
      ['/etc/hostname', 'bind'],
      ['/etc/resolv.conf', 'bind'],
      ['/dev/shm', 'bind'],
      ['/var/lib/data', 'bind'],
      ['/var/lib/data/cache', 'bind'],
    ],
  );
  const byDest = Object.fromEntries(spec.mounts.map((m) => [m.destination, m]));
  t.deepEqual(byDest['/var/log']!.options, ['rbind', 'rprivate', 'ro']);
  t.is(byDest['/etc/hosts']!.source, '/kubelet/pods/p/etc-hosts', 'a CRI mount wins over the pod file');
  t.is(byDest['/etc/hostname']!.source, `${SANDBOX_DIR}/hostname`);
  t.is(byDest['/dev/shm']!.source, `${SANDBOX_DIR}/shm`);
  t.deepEqual(byDest['/proc']!.options, ['nosuid', 'noexec', 'nodev']);
  t.deepEqual(byDest['/dev']!.options, ['nosuid', 'strictatime', 'mode=755', 'size=65536k']);
  t.deepEqual(byDest['/dev/pts']!.options, ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620', 'gid=5']);
  t.deepEqual(byDest['/sys']!.options, ['nosuid', 'noexec', 'nodev', 'ro']);
  t.deepEqual(byDest['/sys/fs/cgroup']!.options, ['nosuid', 'noexec', 'nodev', 'relatime', 'ro']);
  // The image volume not covered by a CRI mount gets a directory next to the writable layer.
  t.regex(byDest['/var/lib/data']!.source, /^\/state\/containers\/c1\/volumes\/[0-9a-f]{32}$/);
  t.deepEqual(inp.state.created, [byDest['/var/lib/data']!.source]);
});

test('mounts: image VOLUMEs at or under /dev, /proc and /sys are ignored; the runtime\'s mounts stay', async (t) => {
  const volumes = { '/dev': {}, '/dev/shm': {}, '/proc/sys': {}, '/sys': {}, '/sys/firmware/': {}, '/devices': {}, '/system': {}, '/data': {} };
  const spec = await buildSpec(input({ image: { config: imageConfig({ Volumes: volumes }), lowerDirs: ['/l'] } }));
  const byDest = new Map(spec.mounts.map((m) => [m.destination, m]));
  t.is(byDest.get('/dev')?.type, 'tmpfs');
  t.is(byDest.get('/dev/shm')?.source, `${SANDBOX_DIR}/shm`, 'the pod\'s /dev/shm, not a volume');
  t.is(byDest.get('/sys')?.type, 'sysfs');
  t.is(byDest.get('/proc')?.type, 'proc');
  t.false(byDest.has('/proc/sys') || byDest.has('/sys/firmware'));
  for (const dest of ['/data', '/devices', '/system']) t.regex(byDest.get(dest)?.source ?? '', /\/state\/containers\/c1\/volumes\/[0-9a-f]{32}$/, dest);
  t.deepEqual(spec.linux.maskedPaths, [...DEFAULT_MASKED_PATHS]);
});

test('mounts: the pod\'s own files and /dev/shm are bound as they are, without host lookups', async (t) => {
  const inp = input();
  inp.state.existing.clear();
  const looked: string[] = [];
  const host = inp.host as Partial<SpecHost>;
  const { exists, realpath } = host as Required<Pick<SpecHost, 'exists' | 'realpath'>>;
  host.exists = async (p) => (looked.push(p), exists(p));
  host.realpath = async (p) => (looked.push(p), realpath(p));
  const spec = await buildSpec(inp);
  const sources = Object.fromEntries(spec.mounts.filter((m) => m.type === 'bind').map((m) => [m.destination, m.source]));
  t.deepEqual(sources, {
    '/etc/hostname': `${SANDBOX_DIR}/hostname`,
    '/etc/hosts': `${SANDBOX_DIR}/hosts`,
    '/etc/resolv.conf': `${SANDBOX_DIR}/resolv.conf`,
    '/dev/shm': `${SANDBOX_DIR}/shm`,
  });
  t.deepEqual(looked.filter((p) => p.startsWith(SANDBOX_DIR)), []);
});

test('mounts: image volumes are read-only overlays of their layers, or a bind of one file', async (t) => {
  const mounts = [
    { containerPath: '/models', image: { image: 'registry.example/models:1' }, imageSubPath: '', readonly: true },
    { containerPath: '/one', image: { image: 'registry.example/tiny:1' }, imageSubPath: 'data', readonly: false },
    { containerPath: '/etc/app.conf', image: { image: 'registry.example/models:1' }, imageSubPath: 'conf/app.conf', readonly: true },
  ];
  const imageVolumes = new Map<string, ImageVolumeSource>([
    [imageVolumeKey(mounts[0] as never), { kind: 'dir', layers: ['/snap/9/fs', '/snap/8/fs'] }],
    [imageVolumeKey(mounts[1] as never), { kind: 'dir', layers: ['/snap/5/fs/data'] }],
    [imageVolumeKey(mounts[2] as never), { kind: 'file', path: '/snap/9/fs/conf/app.conf' }],
  ]);
  const inp = input({ config: containerConfig({ mounts }), imageVolumes, emptyLowerDir: '/root/empty' });
  const spec = await buildSpec(inp);
  const byDest = Object.fromEntries(spec.mounts.map((m) => [m.destination, m]));
  t.deepEqual(byDest['/models'], { destination: '/models', type: 'overlay', source: 'overlay', options: ['ro', 'nodev', 'nosuid', 'lowerdir=/snap/9/fs:/snap/8/fs'] });
  t.deepEqual(byDest['/one']!.options, ['ro', 'nodev', 'nosuid', 'lowerdir=/snap/5/fs/data:/root/empty'], 'one layer gets the empty one below it; read-only regardless');
  t.deepEqual(byDest['/etc/app.conf'], { destination: '/etc/app.conf', type: 'bind', source: '/snap/9/fs/conf/app.conf', options: ['rbind', 'rprivate', 'ro', 'nosuid', 'nodev'] });

  t.is(imageSubPath({ imageSubPath: 'a/./b/', containerPath: '/x' }), '/a/b');
  t.is(imageSubPath({ imageSubPath: '', containerPath: '/x' }), '/');
  for (const bad of ['/abs', '../up', 'a/../../b']) t.throws(() => imageSubPath({ imageSubPath: bad, containerPath: '/x' }), { message: /must be a relative path inside the image/ });
  const both = input({ config: containerConfig({ mounts: [{ containerPath: '/v', hostPath: '/h', image: { image: 'i' } }] }), imageVolumes });
  await t.throwsAsync(buildSpec(both), { message: /sets both host_path and image/ });
  const unresolved = input({ config: containerConfig({ mounts: [{ containerPath: '/v', image: { image: 'other' } }] }), imageVolumes });
  await t.throwsAsync(buildSpec(unresolved), { message: /was not resolved/ });
});

test('user namespaces: the pod\'s is joined by path with its mappings; id-mapped volumes need the same mappings', async (t) => {
  const map = { hostId: 200000, containerId: 0, length: 65536 };
  const userns = { uidMappings: [{ containerId: 0, hostId: 200000, size: 65536 }], gidMappings: [{ containerId: 0, hostId: 200000, size: 65536 }] };
  const nsOpts = { usernsOptions: { mode: NamespaceMode.POD, uids: [map], gids: [map] } };
  const inp = input({
    config: containerConfig({
      linux: { securityContext: { namespaceOptions: nsOpts } },
      mounts: [{ containerPath: '/data', hostPath: '/srv/data', uidMappings: [map], gidMappings: [map] }],
    }),
  });
  inp.sandbox.namespaces.userns = userns;
  inp.sandbox.nsPaths.user = '/state/sandboxes/sb1/ns/user';
  inp.state.existing.add('/srv/data');
  const spec = await buildSpec(inp);
  t.deepEqual(spec.linux.namespaces.find((n) => n.type === 'user'), { type: 'user', path: '/state/sandboxes/sb1/ns/user' });
  t.deepEqual(spec.linux.uidMappings, [{ containerID: 0, hostID: 200000, size: 65536 }]);
  t.deepEqual(spec.mounts.find((m) => m.destination === '/data')?.options, ['rbind', 'rprivate', 'rw', 'idmap']);

  const other = input({
    config: containerConfig({
      linux: { securityContext: { namespaceOptions: nsOpts } },
      mounts: [{ containerPath: '/data', hostPath: '/srv/data', uidMappings: [{ ...map, hostId: 300000 }], gidMappings: [map] }],
    }),
  });
  other.sandbox.namespaces.userns = userns;
  other.sandbox.nsPaths.user = '/u';
  await t.throwsAsync(buildSpec(other), { message: /ID mappings other than the pod user namespace's/ });
  const outside = input({ config: containerConfig({ linux: { securityContext: { namespaceOptions: nsOpts } } }) });
  await t.throwsAsync(buildSpec(outside), { message: /the pod has none/ });
  const left = input();
  left.sandbox.namespaces.userns = userns;
  left.sandbox.nsPaths.user = '/u';
  await t.throwsAsync(buildSpec(left), { message: /must use it/ });
});

test('mounts: host IPC binds the host /dev/shm; a supplied /dev replaces every default under /dev', async (t) => {
  const inp = input({ config: containerConfig({ mounts: [{ containerPath: '/dev', hostPath: '/dev' }] }) });
  inp.sandbox.namespaces.ipc = 'node';
  inp.state.existing.add('/dev');
  const spec = await buildSpec(inp);
  const dests = spec.mounts.map((m) => m.destination);
  t.false(dests.includes('/dev/pts'));
  t.false(dests.includes('/dev/mqueue'));
  t.is(spec.mounts.find((m) => m.destination === '/dev')?.source, '/dev');
  t.is(spec.mounts.find((m) => m.destination === '/dev/shm')?.source, '/dev/shm');
});

test('mounts: symlinked host paths are resolved; missing ones are created', async (t) => {
  const inp = input({
    config: containerConfig({
      mounts: [
        { containerPath: '/data', hostPath: '/mnt/link' },
        { containerPath: '/new', hostPath: '/host/new-dir' },
      ],
    }),
  });
  inp.state.symlinks['/mnt/link'] = '/mnt/real';
  inp.state.existing.add('/mnt/real');
  const spec = await buildSpec(inp);
  t.is(spec.mounts.find((m) => m.destination === '/data')?.source, '/mnt/real');
  t.is(spec.mounts.find((m) => m.destination === '/new')?.source, '/host/new-dir');
  t.deepEqual(inp.state.created, ['/host/new-dir']);
});

test('mounts: propagation modes and the rootfs propagation they need', async (t) => {
  const mk = (propagation: MountPropagation) => {
    const inp = input({ config: containerConfig({ mounts: [{ containerPath: '/m', hostPath: '/host/m', propagation }] }) });
    inp.state.existing.add('/host/m');
    return inp;
  };
  let inp = mk(MountPropagation.PROPAGATION_PRIVATE);
  let spec = await buildSpec(inp);
  t.deepEqual(spec.mounts.at(-1)?.options, ['rbind', 'rprivate', 'rw']);
  t.is(spec.linux.rootfsPropagation, undefined);

  inp = mk(MountPropagation.PROPAGATION_HOST_TO_CONTAINER);
  inp.state.propagation['/host/m'] = 'slave';
  spec = await buildSpec(inp);
  t.deepEqual(spec.mounts.find((m) => m.destination === '/m')?.options, ['rbind', 'rslave', 'rw']);
  t.is(spec.linux.rootfsPropagation, 'rslave');

  inp = mk(MountPropagation.PROPAGATION_BIDIRECTIONAL);
  inp.state.propagation['/host/m'] = 'shared';
  spec = await buildSpec(inp);
  t.deepEqual(spec.mounts.find((m) => m.destination === '/m')?.options, ['rbind', 'rshared', 'rw']);
  t.is(spec.linux.rootfsPropagation, 'rshared');

  // Bidirectional needs a shared host mount, host-to-container at least a slave one.
  inp = mk(MountPropagation.PROPAGATION_BIDIRECTIONAL);
  inp.state.propagation['/host/m'] = 'slave';
  await t.throwsAsync(buildSpec(inp), { message: /not shared/ });
  inp = mk(MountPropagation.PROPAGATION_HOST_TO_CONTAINER);
  await t.throwsAsync(buildSpec(inp), { message: /neither shared nor slave/ });
});

test('mounts: invalid CRI mounts are rejected', async (t) => {
  for (const m of [
    { containerPath: 'relative', hostPath: '/x' },
    { containerPath: '/x', hostPath: '' },
    { containerPath: '/x', hostPath: '/x', readonly: false, recursiveReadOnly: true },
    { containerPath: '/x', hostPath: '/x', readonly: true, recursiveReadOnly: true, propagation: MountPropagation.PROPAGATION_HOST_TO_CONTAINER },
  ]) {
    const err = await t.throwsAsync(buildSpec(input({ config: containerConfig({ mounts: [m] }) })));
    t.true(isCrispError(err, 'InvalidArgument'), String(err));
  }
});

test('mounts: a recursive read-only mount gets the OCI rro option', async (t) => {
  const inp = input({ config: containerConfig({ mounts: [{ containerPath: '/data', hostPath: '/srv/data', readonly: true, recursiveReadOnly: true }] }) });
  inp.state.existing.add('/srv/data');
  const spec = await buildSpec(inp);
  t.deepEqual(spec.mounts.find((m) => m.destination === '/data')?.options, ['rbind', 'rprivate', 'ro', 'rro']);
});

// ---- capabilities, masked paths, privileged ----

test('capabilities: default set; add/drop with and without CAP_ prefix; ALL', async (t) => {
  const caps = async (capabilities: { addCapabilities?: string[]; dropCapabilities?: string[]; addAmbientCapabilities?: string[] }) =>
    (await buildSpec(input({ config: containerConfig({ linux: { securityContext: { capabilities } } }) }))).process.capabilities;

  const def = await caps({});
  t.deepEqual([...def.bounding].sort(), [...DEFAULT_CAPABILITIES].sort());
  t.deepEqual(def.effective, def.bounding);
  t.deepEqual(def.permitted, def.bounding);
  t.deepEqual(def.inheritable, []);
  t.deepEqual(def.ambient, []);

  const c = await caps({ addCapabilities: ['NET_ADMIN', 'cap_sys_time'], dropCapabilities: ['MKNOD', 'CAP_NET_RAW'] });
  t.true(c.bounding.includes('CAP_NET_ADMIN'));
  t.true(c.bounding.includes('CAP_SYS_TIME'));
  t.false(c.bounding.includes('CAP_MKNOD'));
  t.false(c.bounding.includes('CAP_NET_RAW'));

  t.deepEqual((await caps({ dropCapabilities: ['ALL'] })).bounding, []);
  t.deepEqual((await caps({ dropCapabilities: ['ALL'], addCapabilities: ['NET_BIND_SERVICE'] })).bounding, ['CAP_NET_BIND_SERVICE']);
  const all = await caps({ addCapabilities: ['ALL'], dropCapabilities: ['CHOWN'] });
  t.is(all.bounding.length, KNOWN_CAPABILITIES.length - 1);
  t.false(all.bounding.includes('CAP_CHOWN'));

  const ambient = await caps({ dropCapabilities: ['ALL'], addAmbientCapabilities: ['NET_BIND_SERVICE'] });
  t.deepEqual(ambient, {
    bounding: ['CAP_NET_BIND_SERVICE'],
    effective: ['CAP_NET_BIND_SERVICE'],
    permitted: ['CAP_NET_BIND_SERVICE'],
    inheritable: ['CAP_NET_BIND_SERVICE'],
    ambient: ['CAP_NET_BIND_SERVICE'],
  });

  const err = await t.throwsAsync(caps({ addCapabilities: ['FLY'] }), { message: /unknown capability "FLY"/ });
  t.true(isCrispError(err, 'InvalidArgument'));
});

test('masked and read-only paths: defaults, replaced by the request when non-empty', async (t) => {
  let spec = await buildSpec(input());
  t.deepEqual(spec.linux.maskedPaths, [...DEFAULT_MASKED_PATHS]);
  t.deepEqual(spec.linux.readonlyPaths, [...DEFAULT_READONLY_PATHS]);
  spec = await buildSpec(input({ config: containerConfig({ linux: { securityContext: { maskedPaths: ['/proc/kcore'], readonlyPaths: ['/proc/sys'] } } }) }));
  t.deepEqual(spec.linux.maskedPaths, ['/proc/kcore']);
  t.deepEqual(spec.linux.readonlyPaths, ['/proc/sys']);
});

test('privileged: all capabilities, nothing masked, writable sysfs and cgroupfs, unconfined, all host devices', async (t) => {
  const inp = input(
    {
      sandboxConfig: privilegedPod,
      config: containerConfig({
        linux: {
          securityContext: {
            privileged: true,
            capabilities: { dropCapabilities: ['ALL'] },
            seccomp: { profileType: SecurityProfile_ProfileType.RuntimeDefault, localhostRef: '' },
          },
        },
      }),
    },
    {
      dirs: { '/dev': ['null', 'sda', 'pts', 'console', 'net'], '/dev/pts': ['0'], '/dev/net': ['tun'] },
      devices: {
        '/dev/null': { type: 'c', major: 1, minor: 3, fileMode: 0o666, uid: 0, gid: 0 },
        '/dev/sda': { type: 'b', major: 8, minor: 0, fileMode: 0o660, uid: 0, gid: 6 },
        '/dev/pts/0': { type: 'c', major: 136, minor: 0, fileMode: 0o620, uid: 0, gid: 5 },
        '/dev/console': { type: 'c', major: 5, minor: 1, fileMode: 0o600, uid: 0, gid: 0 },
        '/dev/net/tun': { type: 'c', major: 10, minor: 200, fileMode: 0o666, uid: 0, gid: 0 },
      },
    },
  );
  const spec = await buildSpec(inp);
  t.is(spec.process.capabilities.bounding.length, KNOWN_CAPABILITIES.length);
  t.deepEqual(spec.linux.maskedPaths, []);
  t.deepEqual(spec.linux.readonlyPaths, []);
  t.deepEqual(spec.mounts.find((m) => m.destination === '/sys')?.options, ['nosuid', 'noexec', 'nodev', 'rw']);
  t.deepEqual(spec.mounts.find((m) => m.destination === '/sys/fs/cgroup')?.options, ['nosuid', 'noexec', 'nodev', 'relatime', 'rw']);
  t.is(spec.linux.seccomp, undefined);
  t.deepEqual(
    spec.linux.devices.map((d) => d.path),
    ['/dev/net/tun', '/dev/null', '/dev/sda'],
  );
  t.deepEqual(spec.linux.resources.devices, [{ allow: true, access: 'rwm' }]);
  t.false(spec.linux.namespaces.some((n) => n.type === 'cgroup'), 'privileged containers keep the host cgroup namespace');
});

test('privileged container in an unprivileged pod is rejected', async (t) => {
  const err = await t.throwsAsync(buildSpec(input({ config: containerConfig({ linux: { securityContext: { privileged: true } } }) })), {
    message: /no privileged container allowed/,
  });
  t.true(isCrispError(err, 'InvalidArgument'));
});

// ---- devices ----

test('devices: CRI devices with numbers from the host node, cgroup rules with their permissions', async (t) => {
  const inp = input(
    {
      config: containerConfig({
        devices: [
          { hostPath: '/dev/fuse', containerPath: '/dev/fuse', permissions: 'rwm' },
          { hostPath: '/dev/disk/by-id/nvme-x', containerPath: '/dev/xvda', permissions: 'r' },
          { hostPath: '/dev/dri', containerPath: '/dev/dri', permissions: 'rw' },
        ],
      }),
    },
    {
      symlinks: { '/dev/disk/by-id/nvme-x': '/dev/nvme0n1' },
      dirs: { '/dev/dri': ['card0', 'renderD128'] },
      devices: {
        '/dev/fuse': { type: 'c', major: 10, minor: 229, fileMode: 0o666, uid: 0, gid: 0 },
        '/dev/nvme0n1': { type: 'b', major: 259, minor: 0, fileMode: 0o660, uid: 0, gid: 6 },
        '/dev/dri/card0': { type: 'c', major: 226, minor: 0, fileMode: 0o660, uid: 0, gid: 44 },
        '/dev/dri/renderD128': { type: 'c', major: 226, minor: 128, fileMode: 0o660, uid: 0, gid: 109 },
      },
    },
  );
  const spec = await buildSpec(inp);
  t.deepEqual(spec.linux.devices, [
    { path: '/dev/fuse', type: 'c', major: 10, minor: 229, fileMode: 0o666, uid: 0, gid: 0 },
    { path: '/dev/xvda', type: 'b', major: 259, minor: 0, fileMode: 0o660, uid: 0, gid: 6 },
    { path: '/dev/dri/card0', type: 'c', major: 226, minor: 0, fileMode: 0o660, uid: 0, gid: 44 },
    { path: '/dev/dri/renderD128', type: 'c', major: 226, minor: 128, fileMode: 0o660, uid: 0, gid: 109 },
  ]);
  const rules = spec.linux.resources.devices;
  t.deepEqual(rules[0], { allow: false, access: 'rwm' }, 'everything is denied first');
  t.deepEqual(rules.slice(1, 3), [
    { allow: true, type: 'c', access: 'm' },
    { allow: true, type: 'b', access: 'm' },
  ]);
  t.true(rules.some((r) => r.major === 1 && r.minor === 3 && r.access === 'rwm'), '/dev/null is usable');
  t.false(rules.slice(0, -4).some((r) => r.allow && r.type === 'b' && r.access !== 'm'), 'no block device is usable by default');
  t.deepEqual(rules.slice(-4), [
    { allow: true, type: 'c', major: 10, minor: 229, access: 'rwm' },
    { allow: true, type: 'b', major: 259, minor: 0, access: 'r' },
    { allow: true, type: 'c', major: 226, minor: 0, access: 'rw' },
    { allow: true, type: 'c', major: 226, minor: 128, access: 'rw' },
  ]);
});

test('CDI edits: environment replaces, nodes take numbers from the host unless given, mounts bind, groups add', async (t) => {
  const cdi: CdiEdits = {
    env: ['GPU=0', 'PATH=/opt/gpu/bin'],
    deviceNodes: [
      { path: '/dev/gpu0', hostPath: '/dev/by-name/gpu0', permissions: 'rw' },
      { path: '/dev/gpuctl', type: 'c', major: 195, minor: 255, fileMode: 0o600, gid: 44 },
      { path: '/dev/gpu-fifo', type: 'p', major: 0 },
    ],
    mounts: [
      { hostPath: '/usr/lib/gpu', containerPath: '/usr/lib/gpu', options: ['ro', 'nosuid', 'bind'] },
      { hostPath: '/opt/gpu/bin', containerPath: '/opt/gpu/bin' },
    ],
    additionalGids: [44],
    hooks: { createContainer: [{ path: '/usr/bin/gpu-hook', args: ['gpu-hook', 'update-ldcache'], timeout: 5 }], poststop: [{ path: '/usr/bin/gpu-cleanup' }] },
    unsupported: [],
  };
  const inp = input(
    { config: containerConfig({ envs: [{ key: 'GPU', value: 'none' }] }), cdi },
    { symlinks: { '/dev/by-name/gpu0': '/dev/gpu-real0' }, devices: { '/dev/gpu-real0': { type: 'c', major: 195, minor: 0, fileMode: 0o666, uid: 0, gid: 0 } } },
  );
  const spec = await buildSpec(inp);
  t.true(spec.process.env.includes('GPU=0') && !spec.process.env.includes('GPU=none'), 'the CDI value replaces the config one');
  t.true(spec.process.env.includes('PATH=/opt/gpu/bin'));
  t.deepEqual(spec.linux.devices, [
    { path: '/dev/gpu0', type: 'c', major: 195, minor: 0, fileMode: 0o666, uid: 0, gid: 0 },
    { path: '/dev/gpuctl', type: 'c', major: 195, minor: 255, fileMode: 0o600, uid: 0, gid: 44 },
    { path: '/dev/gpu-fifo', type: 'p', major: 0, minor: 0, fileMode: 0o666, uid: 0, gid: 0 },
  ]);
  t.deepEqual(spec.linux.resources.devices.slice(-2), [
    { allow: true, type: 'c', major: 195, minor: 0, access: 'rw' },
    { allow: true, type: 'c', major: 195, minor: 255, access: 'rwm' },
  ]);
  const byDest = Object.fromEntries(spec.mounts.map((m) => [m.destination, m]));
  t.deepEqual(byDest['/usr/lib/gpu'], { destination: '/usr/lib/gpu', type: 'bind', source: '/usr/lib/gpu', options: ['ro', 'nosuid', 'bind'] });
  t.deepEqual(byDest['/opt/gpu/bin']!.options, ['rbind']);
  t.true(spec.process.user.additionalGids!.includes(44));
  t.deepEqual(spec.hooks, { createContainer: [{ path: '/usr/bin/gpu-hook', args: ['gpu-hook', 'update-ldcache'], timeout: 5 }], poststop: [{ path: '/usr/bin/gpu-cleanup' }] });

  const missing = input({ cdi: { ...cdi, deviceNodes: [{ path: '/dev/nope' }] } });
  t.true(isCrispError(await t.throwsAsync(buildSpec(missing)), 'InvalidArgument'));
  const badType = input({ cdi: { ...cdi, deviceNodes: [{ path: '/dev/x', type: 'x', major: 1, minor: 1 }] } });
  await t.throwsAsync(buildSpec(badType), { message: /unknown type "x"/ });
});

test('devices: missing nodes, non-devices and bad permissions are InvalidArgument', async (t) => {
  const cases = [
    { hostPath: '/dev/nope', containerPath: '/dev/nope', permissions: 'rwm' },
    { hostPath: '/etc/passwd', containerPath: '/dev/x', permissions: 'rwm' },
    { hostPath: '/dev/fuse', containerPath: '/dev/fuse', permissions: 'rwx' },
  ];
  for (const device of cases) {
    const inp = input({ config: containerConfig({ devices: [device] }) }, { devices: { '/dev/fuse': { type: 'c', major: 10, minor: 229, fileMode: 0o666, uid: 0, gid: 0 } } });
    inp.state.existing.add('/etc/passwd');
    const err = await t.throwsAsync(buildSpec(inp));
    t.true(isCrispError(err, 'InvalidArgument'), `${device.hostPath}: ${String(err)}`);
  }
});

// ---- seccomp and AppArmor ----

test('seccomp: from the field or the deprecated path; localhost profiles loaded from the host', async (t) => {
  const sc = (securityContext: DeepPartial<LinuxContainerSecurityContext>, files: Record<string, string> = {}) =>
    buildSpec(input({ config: containerConfig({ linux: { securityContext } }) }, { files }));

  const rd = await sc({ seccomp: { profileType: SecurityProfile_ProfileType.RuntimeDefault, localhostRef: '' } });
  t.is(rd.linux.seccomp?.defaultAction, 'SCMP_ACT_ERRNO');
  t.is(evaluateSeccomp(rd.linux.seccomp!, 'read').action, 'SCMP_ACT_ALLOW');
  t.is(evaluateSeccomp(rd.linux.seccomp!, 'mount').action, 'SCMP_ACT_ERRNO');
  t.is(evaluateSeccomp(rd.linux.seccomp!, 'sethostname').action, 'SCMP_ACT_ERRNO');

  const admin = await sc({ capabilities: { addCapabilities: ['SYS_ADMIN'] }, seccompProfilePath: 'runtime/default' });
  t.is(evaluateSeccomp(admin.linux.seccomp!, 'mount').action, 'SCMP_ACT_ALLOW', 'the profile follows the final capabilities');

  t.is((await sc({ seccomp: { profileType: SecurityProfile_ProfileType.Unconfined, localhostRef: '' } })).linux.seccomp, undefined);
  t.is((await sc({ seccompProfilePath: 'unconfined' })).linux.seccomp, undefined);
  t.is((await sc({})).linux.seccomp, undefined);

  const profile = JSON.stringify({ defaultAction: 'SCMP_ACT_ALLOW', syscalls: [{ names: ['mkdir'], action: 'SCMP_ACT_ERRNO' }] });
  const local = await sc({ seccomp: { profileType: SecurityProfile_ProfileType.Localhost, localhostRef: '/var/lib/kubelet/seccomp/audit.json' } }, { '/var/lib/kubelet/seccomp/audit.json': profile });
  t.is(evaluateSeccomp(local.linux.seccomp!, 'mkdir').action, 'SCMP_ACT_ERRNO');
  const legacy = await sc({ seccompProfilePath: 'localhost/audit.json' }, { '/var/lib/kubelet/seccomp/audit.json': profile });
  t.deepEqual(legacy.linux.seccomp, local.linux.seccomp);

  const err = await t.throwsAsync(sc({ seccomp: { profileType: SecurityProfile_ProfileType.Localhost, localhostRef: '/missing.json' } }), { message: /"\/missing.json"/ });
  t.true(isCrispError(err, 'InvalidArgument'));
});

test('apparmor without AppArmor on the host: default, unconfined and no request run as they are; a localhost profile is refused', async (t) => {
  const aa = (securityContext: DeepPartial<LinuxContainerSecurityContext>) =>
    buildSpec(input({ config: containerConfig({ linux: { securityContext } }) }, { apparmor: false }));
  for (const sc of [
    {},
    { apparmor: { profileType: SecurityProfile_ProfileType.RuntimeDefault, localhostRef: '' } },
    { apparmor: { profileType: SecurityProfile_ProfileType.Unconfined, localhostRef: '' } },
    { apparmorProfile: 'runtime/default' },
    { apparmorProfile: 'unconfined' },
  ]) {
    t.is((await aa(sc)).process.apparmorProfile, undefined, JSON.stringify(sc));
  }
  for (const sc of [
    { apparmor: { profileType: SecurityProfile_ProfileType.Localhost, localhostRef: 'k8s-nginx' } },
    { apparmor: { profileType: SecurityProfile_ProfileType.Localhost, localhostRef: 'localhost/k8s-nginx' } },
    { apparmorProfile: 'localhost/k8s-nginx' },
    { privileged: true, apparmor: { profileType: SecurityProfile_ProfileType.Localhost, localhostRef: 'k8s-nginx' } },
  ]) {
    const inp = input({ config: containerConfig({ linux: { securityContext: sc } }), sandboxConfig: privilegedPod }, { apparmor: false });
    const err = await t.throwsAsync(buildSpec(inp), {
      message: 'AppArmor profile "k8s-nginx" was requested, but this host does not enforce AppArmor; refusing to run the container unconfined',
    });
    t.true(isCrispError(err, 'FailedPrecondition'), JSON.stringify(sc));
  }
  await t.throwsAsync(aa({ apparmor: { profileType: SecurityProfile_ProfileType.Localhost, localhostRef: '' } }), { message: /needs a localhost_ref/ });
  await t.throwsAsync(aa({ apparmorProfile: 'bogus' }), { message: /unsupported AppArmor profile/ });
});

test('apparmor on an AppArmor host: crisp\'s default profile for default and no request, loaded first; localhost profiles even when privileged', async (t) => {
  const aa = async (securityContext: DeepPartial<LinuxContainerSecurityContext>, over: Partial<FakeHostState> = {}) => {
    const inp = input({ config: containerConfig({ linux: { securityContext } }), sandboxConfig: privilegedPod }, { apparmor: true, ...over });
    inp.state.existing.add('/etc/apparmor.d/tunables/global').add('/etc/apparmor.d/abstractions/base');
    return { spec: await buildSpec(inp), state: inp.state };
  };
  for (const sc of [{}, { apparmor: { profileType: SecurityProfile_ProfileType.RuntimeDefault, localhostRef: '' } }, { apparmorProfile: 'runtime/default' }]) {
    const { spec, state } = await aa(sc);
    t.is(spec.process.apparmorProfile, 'crisp-default', JSON.stringify(sc));
    t.is(state.loadedProfiles.length, 1);
    t.regex(state.loadedProfiles[0]!, /^#include <tunables\/global>\n\nprofile crisp-default flags=\(attach_disconnected,mediate_deleted\) \{\n  #include <abstractions\/base>/);
    t.regex(state.loadedProfiles[0]!, /^ {2}deny mount,$/m);
  }
  t.is((await aa({ apparmor: { profileType: SecurityProfile_ProfileType.Unconfined, localhostRef: '' } })).spec.process.apparmorProfile, undefined);
  const privileged = await aa({ privileged: true, apparmor: { profileType: SecurityProfile_ProfileType.RuntimeDefault, localhostRef: '' } });
  t.is(privileged.spec.process.apparmorProfile, undefined, 'privileged containers run unconfined by default');
  t.is(privileged.state.loadedProfiles.length, 0);

  const local = await aa({ privileged: true, apparmor: { profileType: SecurityProfile_ProfileType.Localhost, localhostRef: 'localhost/k8s-nginx' } });
  t.is(local.spec.process.apparmorProfile, 'k8s-nginx', 'an explicit profile applies to a privileged container too');
  const missing = await t.throwsAsync(aa({ apparmor: { profileType: SecurityProfile_ProfileType.Localhost, localhostRef: 'other' } }), { message: 'AppArmor profile "other" is not loaded' });
  t.true(isCrispError(missing, 'FailedPrecondition'));

  const parser = await t.throwsAsync(aa({}, { apparmorParserError: 'apparmor_parser: spawn apparmor_parser ENOENT' }), {
    message: 'cannot load the default AppArmor profile "crisp-default": apparmor_parser: spawn apparmor_parser ENOENT',
  });
  t.true(isCrispError(parser, 'FailedPrecondition'), 'a container asking for the default is not run without it');
});

test('selinux: labels from the container\'s options over the pod\'s, completed with container_t; ignored without SELinux', async (t) => {
  const se = async (container: DeepPartial<LinuxContainerSecurityContext>['selinuxOptions'], pod: DeepPartial<LinuxContainerSecurityContext>['selinuxOptions'], selinux: boolean, privileged = false) => {
    const sandboxConfig = podConfig({ linux: { securityContext: { privileged, selinuxOptions: pod } } });
    const spec = await buildSpec(input({ config: containerConfig({ linux: { securityContext: { privileged, selinuxOptions: container } } }), sandboxConfig }, { selinux }));
    return [spec.process.selinuxLabel, spec.linux.mountLabel];
  };
  t.deepEqual(await se({ level: 's0:c1,c2' }, undefined, true), ['system_u:system_r:container_t:s0:c1,c2', 'system_u:object_r:container_file_t:s0:c1,c2']);
  t.deepEqual(await se({ type: 'spc_t' }, { user: 'u', level: 's0:c3,c4' }, true), ['u:system_r:spc_t:s0:c3,c4', 'u:object_r:container_file_t:s0:c3,c4']);
  t.deepEqual(await se(undefined, { level: 's0:c5,c6' }, true), ['system_u:system_r:container_t:s0:c5,c6', 'system_u:object_r:container_file_t:s0:c5,c6']);
  t.deepEqual(await se(undefined, undefined, true), [undefined, undefined], 'no options, no label');
  t.deepEqual(await se(undefined, { level: 's0:c5,c6' }, true, true), [undefined, undefined], 'a privileged container keeps the runtime\'s label');
  t.deepEqual(await se({ type: 'spc_t' }, undefined, true, true), ['system_u:system_r:spc_t:s0', 'system_u:object_r:container_file_t:s0']);
  t.deepEqual(await se({ level: 's0:c1,c2', type: 'container_t' }, { level: 's0:c9' }, false), [undefined, undefined], 'ignored where SELinux is off');
  await t.throwsAsync(se({ type: 'a:b' }, undefined, true), { message: /not a valid SELinux name/ });
  await t.throwsAsync(se({ level: 's0 c1' }, undefined, true), { message: /not a valid MLS\/MCS level/ });
});

// ---- namespaces ----

test('namespaces per pod mode', async (t) => {
  const ns = async (namespaces: SpecInput['sandbox']['namespaces'], version: 1 | 2 = 2, pidMode?: NamespaceMode, target?: string) => {
    const inp = input({
      cgroup: { version, paths: {} },
      targetPidNamespace: target,
      config: containerConfig(pidMode === undefined ? {} : { linux: { securityContext: { namespaceOptions: { pid: pidMode } } } }),
    });
    inp.sandbox.namespaces = namespaces;
    return (await buildSpec(inp)).linux.namespaces;
  };
  t.deepEqual(await ns({ network: 'pod', ipc: 'pod', uts: 'pod', pid: 'container' }), [
    { type: 'mount' },
    { type: 'network', path: '/proc/77/ns/net' },
    { type: 'ipc', path: '/proc/77/ns/ipc' },
    { type: 'uts', path: '/proc/77/ns/uts' },
    { type: 'pid' },
    { type: 'cgroup' },
  ]);
  t.deepEqual(await ns({ network: 'node', ipc: 'node', uts: 'node', pid: 'pod' }, 1), [{ type: 'mount' }, { type: 'pid', path: '/proc/77/ns/pid' }]);
  t.deepEqual(await ns({ network: 'pod', ipc: 'node', uts: 'pod', pid: 'node' }, 1), [
    { type: 'mount' },
    { type: 'network', path: '/proc/77/ns/net' },
    { type: 'uts', path: '/proc/77/ns/uts' },
  ]);
  t.deepEqual((await ns({ network: 'pod', ipc: 'pod', uts: 'pod', pid: 'pod' }, 1, NamespaceMode.TARGET, '/proc/99/ns/pid')).at(-1), { type: 'pid', path: '/proc/99/ns/pid' });
  await t.throwsAsync(ns({ network: 'pod', ipc: 'pod', uts: 'pod', pid: 'pod' }, 1, NamespaceMode.TARGET));
});

test('hostname is set only with the pod UTS namespace', async (t) => {
  t.is((await buildSpec(input())).hostname, 'web-0');
  const inp = input();
  inp.sandbox.namespaces = { network: 'node', ipc: 'pod', uts: 'node', pid: 'container' };
  t.is((await buildSpec(inp)).hostname, undefined);
});

// ---- resources ----

test('resources: cpu, memory with swap pinned to the limit, hugepages, unified', async (t) => {
  const spec = await buildSpec(
    input({
      config: containerConfig({
        linux: {
          resources: {
            cpuShares: 512n,
            cpuQuota: 50000n,
            cpuPeriod: 100000n,
            cpusetCpus: '0-1',
            memoryLimitInBytes: 268435456n,
            hugepageLimits: [{ pageSize: '2MB', limit: 4194304n }],
            unified: { 'memory.high': '200000000' },
            oomScoreAdj: -997n,
          },
        },
      }),
    }),
  );
  t.deepEqual(spec.linux.resources.cpu, { shares: 512, quota: 50000, period: 100000, cpus: '0-1' });
  t.deepEqual(spec.linux.resources.memory, { limit: 268435456, swap: 268435456 });
  t.deepEqual(spec.linux.resources.hugepageLimits, [{ pageSize: '2MB', limit: 4194304 }]);
  t.deepEqual(spec.linux.resources.unified, { 'memory.high': '200000000' });
  t.is(spec.process.oomScoreAdj, -997);
});

// ---- golden ----

function typicalPod(): SpecInput & { state: FakeHostState } {
  const inp = input({
    sandboxConfig: podConfig(),
    config: containerConfig({
      image: { image: 'sha256:4f67c83422ec747235357c04556616234e66fc3fa39cb4f40b2d4441ddd8f100', userSpecifiedImage: 'nginx:1.27' },
      envs: [{ key: 'KUBERNETES_SERVICE_HOST', value: '10.96.0.1' }],
      mounts: [
        { containerPath: '/var/run/secrets/kubernetes.io/serviceaccount', hostPath: '/var/lib/kubelet/pods/pod-uid-1/volumes/kubernetes.io~projected/kube-api-access-x', readonly: true },
        { containerPath: '/etc/hosts', hostPath: '/var/lib/kubelet/pods/pod-uid-1/etc-hosts' },
        { containerPath: '/dev/termination-log', hostPath: '/var/lib/kubelet/pods/pod-uid-1/containers/nginx/0a1b2c3d' },
      ],
      labels: { 'io.kubernetes.container.name': 'nginx' },
      annotations: { 'io.kubernetes.container.hash': 'abc123', 'io.kubernetes.container.restartCount': '0' },
      logPath: 'nginx/0.log',
      linux: {
        resources: { cpuShares: 102n, cpuPeriod: 100000n, cpuQuota: 50000n, memoryLimitInBytes: 134217728n, oomScoreAdj: 1000n },
        securityContext: {
          seccomp: { profileType: SecurityProfile_ProfileType.Unconfined, localhostRef: '' },
          maskedPaths: [...DEFAULT_MASKED_PATHS],
          readonlyPaths: [...DEFAULT_READONLY_PATHS],
          namespaceOptions: { pid: NamespaceMode.CONTAINER },
        },
      },
    }),
  });
  for (const p of [
    '/var/lib/kubelet/pods/pod-uid-1/volumes/kubernetes.io~projected/kube-api-access-x',
    '/var/lib/kubelet/pods/pod-uid-1/etc-hosts',
    '/var/lib/kubelet/pods/pod-uid-1/containers/nginx/0a1b2c3d',
  ]) {
    inp.state.existing.add(p);
  }
  return inp;
}

test('golden: the spec of a typical pod container', async (t) => {
  const spec = JSON.parse(JSON.stringify(await buildSpec(typicalPod())));
  if (process.env.CRISP_UPDATE_GOLDEN) fs.writeFileSync(GOLDEN, `${JSON.stringify(spec, null, 2)}\n`);
  t.deepEqual(spec, JSON.parse(fs.readFileSync(GOLDEN, 'utf8')));
});
