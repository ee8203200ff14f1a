import test from 'ava';
import { NamespaceMode, PodSandboxConfig } from '../../src/generated/runtime/v1/api';
import { sandboxNamespaces, validateSandboxConfig, validateSysctls } from '../../src/sandbox/sandbox_spec';

const podNs = { network: 'pod', ipc: 'pod', uts: 'pod', pid: 'container' } as const;

test('namespace modes', (t) => {
  t.deepEqual(sandboxNamespaces(PodSandboxConfig.fromPartial({})), podNs);
  t.deepEqual(
    sandboxNamespaces(
      PodSandboxConfig.fromPartial({
        linux: { securityContext: { namespaceOptions: { network: NamespaceMode.NODE, pid: NamespaceMode.POD, ipc: NamespaceMode.NODE } } },
      }),
    ),
    { network: 'node', ipc: 'node', uts: 'node', pid: 'pod' },
  );
  t.is(sandboxNamespaces(PodSandboxConfig.fromPartial({ linux: { securityContext: { namespaceOptions: { pid: NamespaceMode.NODE } } } })).pid, 'node');
});

test('sysctls: namespaced ones pass, normalised', (t) => {
  t.deepEqual(validateSysctls({ 'net/ipv4/ip_unprivileged_port_start': '0', 'kernel.shm_rmid_forced': '1', 'fs.mqueue.msg_max': '20' }, podNs), {
    'net.ipv4.ip_unprivileged_port_start': '0',
    'kernel.shm_rmid_forced': '1',
    'fs.mqueue.msg_max': '20',
  });
});

test('sysctls: non-namespaced and host-namespace conflicts are InvalidArgument', (t) => {
  t.throws(() => validateSysctls({ 'vm.swappiness': '1' }, podNs), { message: /not namespaced/ });
  t.throws(() => validateSysctls({ 'kernel.pid_max': '1' }, podNs), { message: /not namespaced/ });
  t.throws(() => validateSysctls({ 'net.core.somaxconn': '1' }, { ...podNs, network: 'node' }), { message: /host network/ });
  t.throws(() => validateSysctls({ 'kernel.sem': '1 2 3 4' }, { ...podNs, ipc: 'node' }), { message: /host IPC/ });
  t.throws(() => validateSysctls({ 'net..x': '1' }, podNs), { message: /not a valid sysctl name/ });
});

test('sandbox config validation', (t) => {
  t.throws(() => validateSandboxConfig(undefined), { message: 'sandbox config is required' });
  t.throws(() => validateSandboxConfig(PodSandboxConfig.fromPartial({})), { message: 'sandbox config metadata is required' });
  t.throws(() => validateSandboxConfig(PodSandboxConfig.fromPartial({ metadata: { namespace: 'ns', uid: 'u' } })), { message: /name is empty/ });
  t.throws(() => validateSandboxConfig(PodSandboxConfig.fromPartial({ metadata: { name: 'p', namespace: 'ns', uid: 'u' }, hostname: 'Bad_Host' })), {
    message: /DNS-1123/,
  });
  t.notThrows(() => validateSandboxConfig(PodSandboxConfig.fromPartial({ metadata: { name: 'p', namespace: 'ns', uid: 'u' }, hostname: 'p-0' })));
});

test('user namespaces: a POD mode with mappings; refused with node namespaces, odd modes or empty or overflowing mappings', (t) => {
  const map = { hostId: 200000, containerId: 0, length: 65536 };
  const pod = (namespaceOptions: Record<string, unknown>) =>
    PodSandboxConfig.fromPartial({ metadata: { name: 'p', namespace: 'ns', uid: 'u' }, linux: { securityContext: { namespaceOptions } } } as never);
  const ok = pod({ usernsOptions: { mode: NamespaceMode.POD, uids: [map], gids: [map] } });
  t.notThrows(() => validateSandboxConfig(ok));
  t.deepEqual(sandboxNamespaces(ok).userns, { uidMappings: [{ containerId: 0, hostId: 200000, size: 65536 }], gidMappings: [{ containerId: 0, hostId: 200000, size: 65536 }] });
  t.is(sandboxNamespaces(pod({ usernsOptions: { mode: NamespaceMode.NODE } })).userns, undefined, 'NODE is the node user namespace');
  t.notThrows(() => validateSandboxConfig(pod({ usernsOptions: { mode: NamespaceMode.NODE } })));
  const bad: [Record<string, unknown>, RegExp][] = [
    [{ usernsOptions: { mode: NamespaceMode.CONTAINER, uids: [map], gids: [map] } }, /mode CONTAINER is not valid/],
    [{ network: NamespaceMode.NODE, usernsOptions: { mode: NamespaceMode.POD, uids: [map], gids: [map] } }, /host network, IPC or PID/],
    [{ pid: NamespaceMode.NODE, usernsOptions: { mode: NamespaceMode.POD, uids: [map], gids: [map] } }, /host network, IPC or PID/],
    [{ usernsOptions: { mode: NamespaceMode.POD, uids: [], gids: [map] } }, /uid mappings: between 1 and 340/],
    [{ usernsOptions: { mode: NamespaceMode.POD, uids: [map], gids: [{ ...map, hostId: 2 ** 32 - 10 }] } }, /gid mapping .* out of range/],
    [{ usernsOptions: { mode: NamespaceMode.POD, uids: [{ ...map, length: 0 }], gids: [map] } }, /out of range/],
    [{ usernsOptions: { mode: NamespaceMode.POD, uids: [map], gids: [{ ...map, containerId: 1000 }] } }, /do not map gid 0/],
  ];
  for (const [ns, message] of bad) t.throws(() => validateSandboxConfig(pod(ns)), { message }, JSON.stringify(ns));
});
