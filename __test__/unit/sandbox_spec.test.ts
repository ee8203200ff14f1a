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
