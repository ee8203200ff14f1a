import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import type { DNSConfig } from '../generated/runtime/v1/api';
import { invalidArgument } from '../util/errors';
import { writeFileAtomic } from '../util/fsutil';

/** The resolver limits glibc honours; kubelet validates the same bounds. */
const MAX_SEARCHES = 32;

/**
 * resolv.conf for a pod: built from dns_config when kubelet sent one, otherwise the host's file, as
 * containerd and CRI-O do.
 */
export function renderResolvConf(dns: DNSConfig | undefined, hostResolvConf: string): string {
  if (!dns || (dns.servers.length === 0 && dns.searches.length === 0 && dns.options.length === 0)) return hostResolvConf;
  if (dns.searches.length > MAX_SEARCHES) throw invalidArgument(`dns_config has ${dns.searches.length} search domains; at most ${MAX_SEARCHES} are allowed`);
  const lines: string[] = [];
  if (dns.searches.length > 0) lines.push(`search ${dns.searches.join(' ')}`);
  for (const server of dns.servers) lines.push(`nameserver ${server}`);
  if (dns.options.length > 0) lines.push(`options ${dns.options.join(' ')}`);
  return `${lines.join('\n')}\n`;
}

/** /etc/hosts for a pod with its own network; kubelet manages the full file for most pods itself. */
export function renderHosts(hostname: string, ips: string[]): string {
  const lines = [
    '127.0.0.1\tlocalhost',
    '::1\tlocalhost ip6-localhost ip6-loopback',
    'fe00::0\tip6-localnet',
    'fe00::0\tip6-mcastprefix',
    'fe00::1\tip6-allnodes',
    'fe00::2\tip6-allrouters',
  ];
  for (const ip of ips) lines.push(`${ip}\t${hostname}`);
  return `${lines.join('\n')}\n`;
}

const HOSTNAME = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

/** A pod's hostname must be a DNS-1123 subdomain of at most 64 characters (the UTS limit). */
export function validateHostname(hostname: string): void {
  if (hostname.length > 64) throw invalidArgument(`hostname "${hostname}" is longer than 64 characters`);
  if (!HOSTNAME.test(hostname)) throw invalidArgument(`hostname "${hostname}" is not a valid DNS-1123 subdomain`);
}

export interface PodFiles {
  hostname: string;
  resolvConf: string;
  hosts: string;
}

/** Writes the per-pod files containers bind-mount; returns their paths. */
/** Written without fsync: a sandbox interrupted mid-create is undone, and state does not outlive a reboot. */
export async function writePodFiles(
  dir: string,
  options: { hostname: string; hostNetwork: boolean; dns: DNSConfig | undefined },
): Promise<PodFiles> {
  const hostResolv = await fsp.readFile('/etc/resolv.conf', 'utf8').catch(() => '');
  const files: PodFiles = {
    hostname: path.join(dir, 'hostname'),
    resolvConf: path.join(dir, 'resolv.conf'),
    hosts: path.join(dir, 'hosts'),
  };
  const hostname = options.hostNetwork ? os.hostname() : options.hostname;
  await writeFileAtomic(files.hostname, `${hostname}\n`, 0o644, { durable: false });
  await writeFileAtomic(files.resolvConf, renderResolvConf(options.dns, hostResolv), 0o644, { durable: false });
  const hosts = options.hostNetwork ? fs.readFileSync('/etc/hosts', 'utf8') : renderHosts(hostname, []);
  await writeFileAtomic(files.hosts, hosts, 0o644, { durable: false });
  return files;
}
