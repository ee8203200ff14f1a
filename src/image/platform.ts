/**
 * OCI platforms: normalisation, the host's platform, and choosing the right manifest from an
 * index with containerd's compatibility rules (an arm/v7 host also runs v6 and v5 images, an
 * arm64 host treats "v8" and no variant alike, and so on).
 */
import * as os from 'node:os';
import { invalidArgument } from '../util/errors';

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
  'os.version'?: string;
  'os.features'?: string[];
}

/** Lowercases and maps the aliases registries and uname use onto OCI's GOARCH-style names. */
export function normalizePlatform(p: Platform): Platform {
  let osName = p.os.toLowerCase();
  if (osName === 'macos') osName = 'darwin';
  let arch = p.architecture.toLowerCase();
  let variant = (p.variant ?? '').toLowerCase();
  switch (arch) {
    case 'i386':
    case 'i686':
    case 'x86':
      arch = '386';
      variant = '';
      break;
    case 'x86_64':
    case 'x86-64':
    case 'amd64':
      arch = 'amd64';
      if (variant === 'v1') variant = '';
      break;
    case 'aarch64':
    case 'arm64':
      arch = 'arm64';
      if (variant === '8' || variant === 'v8' || variant === 'v8.0') variant = 'v8';
      if (variant === '') variant = 'v8';
      break;
    case 'armhf':
      arch = 'arm';
      variant = 'v7';
      break;
    case 'armel':
      arch = 'arm';
      variant = 'v6';
      break;
    case 'arm':
      if (variant === '' || variant === '7') variant = 'v7';
      else if (/^[5-8]$/.test(variant)) variant = `v${variant}`;
      break;
    default:
      break;
  }
  const out: Platform = { os: osName, architecture: arch };
  if (variant) out.variant = variant;
  return out;
}

/** The platform images must be built for to run on this host. */
export function hostPlatform(): Platform {
  const arch = ((): { architecture: string; variant?: string } => {
    switch (process.arch) {
      case 'x64':
        return { architecture: 'amd64' };
      case 'arm64':
        return { architecture: 'arm64', variant: 'v8' };
      case 'arm': {
        const v = (process.config.variables as unknown as Record<string, unknown>).arm_version;
        return { architecture: 'arm', variant: `v${typeof v === 'string' || typeof v === 'number' ? v : 7}` };
      }
      case 'ia32':
        return { architecture: '386' };
      case 'ppc64':
        return { architecture: os.endianness() === 'LE' ? 'ppc64le' : 'ppc64' };
      case 'mips':
        return { architecture: 'mips' };
      case 'mipsel':
        return { architecture: 'mipsle' };
      default:
        // s390x, riscv64, loong64 already use the OCI spelling.
        return { architecture: process.arch };
    }
  })();
  return normalizePlatform({ os: process.platform === 'win32' ? 'windows' : process.platform, ...arch });
}

/** Parses `os/arch[/variant]` (as in `linux/arm64/v8`). */
export function parsePlatform(s: string): Platform {
  const parts = s.split('/');
  if (parts.length < 2 || parts.length > 3 || parts.some((p) => p === '')) {
    throw invalidArgument(`invalid platform "${s}": expected os/architecture[/variant]`);
  }
  return normalizePlatform({ os: parts[0], architecture: parts[1], variant: parts[2] });
}

export function formatPlatform(p: Platform): string {
  return [p.os, p.architecture, p.variant].filter((x) => x).join('/');
}

/**
 * Variants a host of the given platform can run, best first. Lower ARM and x86-64 levels run on
 * higher ones; everything else needs an exact match.
 */
function compatibleVariants(want: Platform): string[] {
  const v = want.variant ?? '';
  if (want.architecture === 'arm') {
    const order = ['v8', 'v7', 'v6', 'v5'];
    const i = order.indexOf(v);
    return i >= 0 ? order.slice(i) : [v];
  }
  if (want.architecture === 'amd64') {
    const order = ['v4', 'v3', 'v2', ''];
    const i = order.indexOf(v);
    return i >= 0 ? order.slice(i) : [v];
  }
  return [v];
}

/**
 * How well `candidate` suits a host of platform `want`: 0 is a perfect match, larger is worse,
 * undefined means it cannot run at all.
 */
export function platformRank(want: Platform, candidate: Platform): number | undefined {
  const w = normalizePlatform(want);
  const c = normalizePlatform(candidate);
  if (w.os !== c.os || w.architecture !== c.architecture) return undefined;
  const i = compatibleVariants(w).indexOf(c.variant ?? '');
  return i >= 0 ? i : undefined;
}

export function platformMatches(want: Platform, candidate: Platform): boolean {
  return platformRank(want, candidate) !== undefined;
}

/**
 * Picks the entry of an index best suited to `want`. Entries without a platform are taken only
 * when no entry matches explicitly, as containerd orders them last.
 */
export function selectPlatformEntry<T extends { platform?: Platform }>(entries: readonly T[], want: Platform): T | undefined {
  let best: T | undefined;
  let bestRank = Infinity;
  let unplatformed: T | undefined;
  for (const e of entries) {
    if (!e.platform) {
      unplatformed ??= e;
      continue;
    }
    if (typeof e.platform.os !== 'string' || typeof e.platform.architecture !== 'string') continue;
    const rank = platformRank(want, e.platform);
    if (rank !== undefined && rank < bestRank) {
      best = e;
      bestRank = rank;
    }
  }
  return best ?? unplatformed;
}
