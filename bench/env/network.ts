/**
 * The CNI network both runtimes attach pods to: one conflist, one bridge and one private subnet
 * that belong to this run only, so the two runtimes do exactly the same network work per pod.
 * No masquerade and no port mappings: nothing is written to iptables.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { deleteLink } from './host';

/** Where Debian's containernetworking-plugins installs the plugins. */
export const CNI_BIN_DIR = '/usr/lib/cni';

const IP_FORWARD = '/proc/sys/net/ipv4/ip_forward';

export class BenchNetwork {
  readonly confDir: string;
  readonly bridge: string;
  readonly subnet: string;
  readonly name: string;
  private readonly ipamDir: string;
  private readonly forwarding: string;

  /**
   * `addresses` is how many pod IPs may be in use at once (both runtimes together); the prefix
   * grows from /24 when that does not fit.
   */
  constructor(
    dir: string,
    readonly tag: string,
    addresses: number,
  ) {
    this.confDir = path.join(dir, 'net.d');
    this.ipamDir = path.join(dir, 'ipam');
    this.bridge = `crisp-b${tag}`;
    this.name = `crisp-bench-${tag}`;
    let prefix = 24;
    while (prefix > 16 && 2 ** (32 - prefix) - 3 < addresses) prefix--;
    // A random block inside 10.200.0.0/13, aligned to the prefix.
    const block = 2 ** (32 - prefix);
    const base = ((10 << 24) | (200 << 16)) >>> 0;
    const offset = crypto.randomInt(0, (2 ** 19) / block) * block;
    const start = base + offset;
    this.subnet = `${[24, 16, 8, 0].map((s) => (start >>> s) & 255).join('.')}/${prefix}`;
    this.forwarding = fs.readFileSync(IP_FORWARD, 'utf8');
    fs.mkdirSync(this.confDir, { recursive: true });
    fs.writeFileSync(
      path.join(this.confDir, '10-crisp-bench.conflist'),
      JSON.stringify(
        {
          cniVersion: '1.0.0',
          name: this.name,
          plugins: [
            {
              type: 'bridge',
              bridge: this.bridge,
              isGateway: true,
              ipMasq: false,
              hairpinMode: false,
              ipam: { type: 'host-local', ranges: [[{ subnet: this.subnet }]], dataDir: this.ipamDir },
            },
          ],
        },
        null,
        2,
      ),
    );
  }

  /** Removes the bridge and restores IPv4 forwarding, which the bridge plugin turns on. */
  async destroy(): Promise<void> {
    await deleteLink(this.bridge);
    try {
      fs.writeFileSync(IP_FORWARD, this.forwarding);
    } catch {
      // read-only /proc/sys: nothing was changed then either
    }
  }
}
