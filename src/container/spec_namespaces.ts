/** Spec options for namespaces: which of the pod's the container joins, and its hostname. */
import { NamespaceMode } from '../generated/runtime/v1/api';
import type { IdMapping } from '../sandbox/sandbox_spec';
import { invalidArgument } from '../util/errors';
import type { ContainerSpecOpt } from './spec_context';
import { applyOpts, withNamespace } from './spec_opts';

/**
 * The namespaces of the container: its own mount namespace, the pod's network, IPC, UTS and user
 * namespaces joined by path, the PID namespace the request asks for, and a private cgroup one.
 */
export const podNamespaces: ContainerSpecOpt = (spec, { input, privileged }) => {
  const { namespaces, nsPaths } = input.sandbox;
  // Entries with a path join the pod's namespace; types left out are inherited from the pod's
  // monitor, which is the pod's namespace (or the host's, for node mode).
  applyOpts(spec, withNamespace({ type: 'mount' }));
  if (namespaces.network === 'pod' && nsPaths.net) applyOpts(spec, withNamespace({ type: 'network', path: nsPaths.net }));
  if (namespaces.ipc === 'pod' && nsPaths.ipc) applyOpts(spec, withNamespace({ type: 'ipc', path: nsPaths.ipc }));
  if (namespaces.uts === 'pod' && nsPaths.uts) applyOpts(spec, withNamespace({ type: 'uts', path: nsPaths.uts }));
  if (namespaces.userns) {
    if (!nsPaths.user) throw invalidArgument(`pod ${input.sandbox.id} has no pinned user namespace`);
    applyOpts(spec, withNamespace({ type: 'user', path: nsPaths.user }));
    const oci = (list: IdMapping[]) => list.map((m) => ({ containerID: m.containerId, hostID: m.hostId, size: m.size }));
    spec.linux.uidMappings = oci(namespaces.userns.uidMappings);
    spec.linux.gidMappings = oci(namespaces.userns.gidMappings);
  }

  const containerPidMode = input.config.linux?.securityContext?.namespaceOptions?.pid;
  if (containerPidMode === NamespaceMode.TARGET) {
    if (!input.targetPidNamespace) throw invalidArgument('PID namespace mode TARGET needs the target container to be running');
    applyOpts(spec, withNamespace({ type: 'pid', path: input.targetPidNamespace }));
  } else if (namespaces.pid === 'container') {
    applyOpts(spec, withNamespace({ type: 'pid' }));
  } else if (namespaces.pid === 'pod' && nsPaths.pid) {
    applyOpts(spec, withNamespace({ type: 'pid', path: nsPaths.pid }));
  }
  // A private cgroup namespace hides the host hierarchy; like containerd, only on cgroup v2
  // (v1 tools expect the host layout) and not for privileged containers (which manage cgroups).
  if (input.cgroup.version === 2 && !privileged) applyOpts(spec, withNamespace({ type: 'cgroup' }));
};

/** The pod's hostname, when the container shares the pod's UTS namespace. */
export const podHostname: ContainerSpecOpt = (spec, { input, hostname }) => {
  if (input.sandbox.namespaces.uts === 'pod') spec.hostname = hostname;
};
