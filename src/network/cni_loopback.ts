/** The pod's loopback interface, brought up by the standard `loopback` plugin. */
import pino, { type Logger } from 'pino';
import { DEFAULT_CNI_BIN_DIRS, DEFAULT_PLUGIN_TIMEOUT_MS, invokePlugin } from './cni_invocation';
import { childProcessLauncher, type PluginLauncher } from './plugin_launcher';

export interface LoopbackOptions {
  binDirs?: readonly string[];
  timeoutMs?: number;
  /** The sandbox id, for CNI_CONTAINERID; the loopback plugin keeps no state under it. */
  containerId?: string;
  signal?: AbortSignal;
  logger?: Logger;
  launcher?: PluginLauncher;
}

/**
 * Brings up `lo` inside the network namespace at `netnsPath`. Uses the standard `loopback` plugin;
 * the only contract callers rely on is "lo is up with 127.0.0.1/::1 when this resolves".
 */
export async function bringUpLoopback(netnsPath: string, opts: LoopbackOptions = {}): Promise<void> {
  const config = { cniVersion: '0.3.1', name: 'cni-loopback', type: 'loopback' };
  await invokePlugin({
    plugin: 'loopback',
    command: 'ADD',
    cniEnv: {
      CNI_COMMAND: 'ADD',
      CNI_CONTAINERID: opts.containerId ?? 'loopback',
      CNI_NETNS: netnsPath,
      CNI_IFNAME: 'lo',
      CNI_ARGS: '',
      CNI_PATH: (opts.binDirs ?? DEFAULT_CNI_BIN_DIRS).join(':'),
    },
    stdin: JSON.stringify(config),
    binDirs: opts.binDirs ?? DEFAULT_CNI_BIN_DIRS,
    timeoutMs: opts.timeoutMs ?? DEFAULT_PLUGIN_TIMEOUT_MS,
    signal: opts.signal,
    logger: opts.logger ?? pino({ level: 'silent' }),
    launcher: opts.launcher ?? childProcessLauncher,
  });
}
