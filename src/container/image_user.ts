import { SupplementalGroupsPolicy } from '../generated/runtime/v1/api';
import { invalidArgument } from '../util/errors';
import type { OciUser } from './spec_opts';

export interface PasswdEntry {
  name: string;
  uid: number;
  gid: number;
  home: string;
  shell: string;
}

export interface GroupEntry {
  name: string;
  gid: number;
  members: string[];
}

/** Reads a file of the image's root filesystem; undefined when it does not exist. */
export type ImageFileReader = (absPath: string) => Promise<Buffer | undefined>;

/** Ids are 32-bit unsigned in the kernel, but -1 (2^32-1) means "no change" to set*id(2). */
const MAX_ID = 0xffff_fffe;

function parseId(text: string): number | undefined {
  if (!/^\d+$/.test(text)) return undefined;
  const n = Number(text);
  return n <= MAX_ID ? n : undefined;
}

function dataLines(content: string): string[][] {
  return content
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line !== '' && !line.startsWith('#'))
    .map((line) => line.split(':'));
}

/** passwd(5); malformed lines are skipped, as libc does. */
export function parsePasswd(content: string): PasswdEntry[] {
  const entries: PasswdEntry[] = [];
  for (const f of dataLines(content)) {
    if (f.length < 4) continue;
    const uid = parseId(f[2]!);
    const gid = parseId(f[3]!);
    if (uid === undefined || gid === undefined || f[0] === '') continue;
    entries.push({ name: f[0]!, uid, gid, home: f[5] ?? '', shell: f[6] ?? '' });
  }
  return entries;
}

/** group(5); malformed lines are skipped. */
export function parseGroup(content: string): GroupEntry[] {
  const entries: GroupEntry[] = [];
  for (const f of dataLines(content)) {
    if (f.length < 3) continue;
    const gid = parseId(f[2]!);
    if (gid === undefined || f[0] === '') continue;
    const members = (f[3] ?? '')
      .split(',')
      .map((m) => m.trim())
      .filter((m) => m !== '');
    entries.push({ name: f[0]!, gid, members });
  }
  return entries;
}

export interface UserRequest {
  runAsUser?: bigint;
  runAsUsername?: string;
  runAsGroup?: bigint;
  /** The image config's User: "", "uid", "uid:gid", "name", "name:group". */
  imageUser?: string;
  supplementalGroups: readonly bigint[];
  supplementalGroupsPolicy: SupplementalGroupsPolicy;
}

function checkRequestedId(value: bigint, what: string): number {
  if (value < 0n || value > BigInt(MAX_ID)) throw invalidArgument(`${what} ${value} is out of range`);
  return Number(value);
}

/** The CRI user fields as one "user[:group]" string; run_as_username wins over run_as_user. */
function requestedUserString(req: UserRequest): string | undefined {
  let user: string | undefined;
  if (req.runAsUser !== undefined) user = String(checkRequestedId(req.runAsUser, 'run_as_user'));
  if (req.runAsUsername) user = req.runAsUsername;
  const group = req.runAsGroup !== undefined ? String(checkRequestedId(req.runAsGroup, 'run_as_group')) : undefined;
  if (user === undefined) {
    if (group !== undefined) throw invalidArgument(`run_as_group ${group} is specified without run_as_user or run_as_username`);
    return undefined;
  }
  return group !== undefined ? `${user}:${group}` : user;
}

class ImageAccounts {
  private passwd?: PasswdEntry[];
  private group?: GroupEntry[];

  constructor(private readonly read: ImageFileReader) {}

  async users(): Promise<PasswdEntry[]> {
    if (!this.passwd) {
      const buf = await this.read('/etc/passwd');
      this.passwd = buf ? parsePasswd(buf.toString('utf8')) : [];
    }
    return this.passwd;
  }

  async groups(): Promise<GroupEntry[]> {
    if (!this.group) {
      const buf = await this.read('/etc/group');
      this.group = buf ? parseGroup(buf.toString('utf8')) : [];
    }
    return this.group;
  }
}

/**
 * Resolves the user a container runs as, following containerd:
 * - the CRI security context (run_as_username, run_as_user, run_as_group) wins, otherwise the
 *   image's User, otherwise root;
 * - a numeric user needs no passwd entry; its primary group is the entry's gid or 0 without one;
 *   a user name must exist in the image's /etc/passwd;
 * - a group given after ':' is numeric or a name from the image's /etc/group;
 * - supplementary groups: the primary group, plus (policy Merge) every /etc/group entry listing
 *   the user name, plus the security context's supplemental_groups; sorted, without duplicates.
 */
export async function resolveUser(req: UserRequest, read: ImageFileReader): Promise<OciUser> {
  return (await resolveUserWithHome(req, read)).user;
}

/**
 * As resolveUser, plus the user's home directory from /etc/passwd ("/" when the uid has no
 * entry), which becomes HOME when neither the image nor the config sets it, as runc does.
 */
export async function resolveUserWithHome(req: UserRequest, read: ImageFileReader): Promise<{ user: OciUser; home: string }> {
  const accounts = new ImageAccounts(read);
  const fromRequest = requestedUserString(req);
  const spec = fromRequest ?? (req.imageUser || '0');
  const source = fromRequest !== undefined ? 'security context' : 'image';

  const colon = spec.indexOf(':');
  const userPart = colon < 0 ? spec : spec.slice(0, colon);
  const groupPart = colon < 0 ? undefined : spec.slice(colon + 1);
  if (userPart === '') throw invalidArgument(`invalid user "${spec}" in ${source}: empty user name`);

  let uid: number;
  let gid: number;
  let username: string | undefined;
  let home = '/';
  const numericUid = parseId(userPart);
  if (numericUid !== undefined) {
    uid = numericUid;
    const entry = (await accounts.users()).find((u) => u.uid === uid);
    username = entry?.name;
    gid = entry?.gid ?? 0;
    home = entry?.home || '/';
  } else {
    if (/^-?\d+$/.test(userPart)) throw invalidArgument(`invalid user "${spec}" in ${source}: uid out of range`);
    const entry = (await accounts.users()).find((u) => u.name === userPart);
    if (!entry) throw invalidArgument(`user "${userPart}" (from the ${source}) is not found in the image's /etc/passwd`);
    uid = entry.uid;
    gid = entry.gid;
    username = entry.name;
    home = entry.home || '/';
  }

  if (groupPart !== undefined) {
    if (groupPart === '') throw invalidArgument(`invalid user "${spec}" in ${source}: empty group name`);
    const numericGid = parseId(groupPart);
    if (numericGid !== undefined) {
      gid = numericGid;
    } else {
      if (/^-?\d+$/.test(groupPart)) throw invalidArgument(`invalid user "${spec}" in ${source}: gid out of range`);
      const entry = (await accounts.groups()).find((g) => g.name === groupPart);
      if (!entry) throw invalidArgument(`group "${groupPart}" (from the ${source}) is not found in the image's /etc/group`);
      gid = entry.gid;
    }
  }

  const gids = new Set<number>([gid]);
  if (req.supplementalGroupsPolicy === SupplementalGroupsPolicy.Merge && username !== undefined) {
    for (const g of await accounts.groups()) {
      // A group named after the user is its primary group in most images, not a supplementary one.
      if (g.name !== username && g.members.includes(username)) gids.add(g.gid);
    }
  } else if (req.supplementalGroupsPolicy !== SupplementalGroupsPolicy.Merge && req.supplementalGroupsPolicy !== SupplementalGroupsPolicy.Strict) {
    throw invalidArgument(`unsupported supplemental_groups_policy ${req.supplementalGroupsPolicy}`);
  }
  for (const g of req.supplementalGroups) gids.add(checkRequestedId(g, 'supplemental group'));

  return { user: { uid, gid, additionalGids: [...gids].sort((a, b) => a - b) }, home };
}
