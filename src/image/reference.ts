/**
 * Image references as the kubelet and Docker spell them, normalised the way containerd's CRI
 * plugin does: `busybox` means `docker.io/library/busybox:latest`.
 *
 * Grammar (distribution/reference):
 *   reference  := name [ ":" tag ] [ "@" digest ]
 *   name       := [domain "/"] path-component ["/" path-component]*
 *   domain     := host [":" port]       host := domain-name | IPv4 | "[" IPv6 "]"
 *   path-comp  := [a-z0-9]+ (separator [a-z0-9]+)*     separator := [._] | "__" | [-]+
 *   tag        := [\w][\w.-]{0,127}
 *   digest     := algorithm ":" hex
 */
import { invalidArgument } from '../util/errors';

export const DEFAULT_DOMAIN = 'docker.io';
/** Docker's historical name for Docker Hub; references using it mean docker.io. */
const LEGACY_DEFAULT_DOMAIN = 'index.docker.io';
const OFFICIAL_REPO_PREFIX = 'library/';
export const DEFAULT_TAG = 'latest';
const MAX_NAME_LENGTH = 255;

const PATH_COMPONENT = '[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*';
const PATH_RE = new RegExp(`^${PATH_COMPONENT}(?:/${PATH_COMPONENT})*$`);
const DOMAIN_COMPONENT = '(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])';
const DOMAIN_RE = new RegExp(
  `^(?:${DOMAIN_COMPONENT}(?:\\.${DOMAIN_COMPONENT})*|\\[[a-fA-F0-9:]+\\])(?::[0-9]+)?$`,
);
const TAG_RE = /^[\w][\w.-]{0,127}$/;
const DIGEST_RE = /^([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$/;
const IMAGE_ID_HEX_RE = /^[a-f0-9]{64}$/;

/** Hex lengths of the digest algorithms this runtime can verify. */
const DIGEST_HEX_LENGTH: Readonly<Record<string, number>> = { sha256: 64, sha512: 128 };

export type DigestAlgorithm = 'sha256' | 'sha512';

export interface ParsedDigest {
  algorithm: DigestAlgorithm;
  hex: string;
}

/**
 * Parses and validates a content digest (`sha256:<64 hex>` or `sha512:<128 hex>`, lowercase hex).
 * Throws InvalidArgument naming `what` for anything else.
 */
export function parseDigest(digest: string, what = 'digest'): ParsedDigest {
  const m = DIGEST_RE.exec(digest);
  if (!m) {
    throw invalidArgument(`invalid ${what} "${digest}": expected <algorithm>:<hex>`);
  }
  const [, algorithm, hex] = m;
  const want = DIGEST_HEX_LENGTH[algorithm];
  if (want === undefined) {
    throw invalidArgument(`invalid ${what} "${digest}": unsupported digest algorithm "${algorithm}"`);
  }
  if (hex.length !== want || !/^[a-f0-9]+$/.test(hex)) {
    throw invalidArgument(`invalid ${what} "${digest}": ${algorithm} needs ${want} lowercase hex characters`);
  }
  return { algorithm: algorithm as DigestAlgorithm, hex };
}

export function isDigest(s: string): boolean {
  try {
    parseDigest(s);
    return true;
  } catch {
    return false;
  }
}

/**
 * True for strings that name an image by ID rather than by reference: `sha256:<64 hex>` or a bare
 * 64-character hex ID. Such strings are never valid references (Docker forbids 64-hex repository
 * names for exactly this reason).
 */
export function isImageId(s: string): boolean {
  if (s.startsWith('sha256:')) return IMAGE_ID_HEX_RE.test(s.slice('sha256:'.length));
  return IMAGE_ID_HEX_RE.test(s);
}

/** The `sha256:<hex>` form of an image ID given either way. Throws InvalidArgument otherwise. */
export function normalizeImageId(s: string): string {
  if (!isImageId(s)) throw invalidArgument(`"${s}" is not an image ID`);
  return s.startsWith('sha256:') ? s : `sha256:${s}`;
}

/** A fully normalised image reference. */
export class ImageReference {
  constructor(
    /** Registry host with optional port, e.g. `docker.io`, `localhost:5000`. */
    readonly domain: string,
    /** Repository path inside the registry, e.g. `library/busybox`. */
    readonly path: string,
    /** Tag; `latest` when the reference had neither tag nor digest. */
    readonly tag: string | undefined,
    /** Content digest; when present it, not the tag, identifies what to pull. */
    readonly digest: string | undefined,
  ) {}

  /** `domain/path`: the repository name, as used in repo_tags/repo_digests without the suffix. */
  repository(): string {
    return `${this.domain}/${this.path}`;
  }

  /** What to pull: `name@digest` when a digest is known, else `name:tag`. */
  canonical(): string {
    return this.digest ? `${this.repository()}@${this.digest}` : `${this.repository()}:${this.tag ?? DEFAULT_TAG}`;
  }

  /** `name:tag` for repo_tags, or undefined for digest-only references. */
  tagged(): string | undefined {
    return this.tag === undefined ? undefined : `${this.repository()}:${this.tag}`;
  }

  /** `name@digest` for repo_digests. */
  digested(digest: string = this.digest ?? ''): string {
    if (!digest) throw invalidArgument(`reference "${this.toString()}" has no digest`);
    return `${this.repository()}@${digest}`;
  }

  /** The object to ask the registry for: the digest when given, else the tag. */
  object(): string {
    return this.digest ?? this.tag ?? DEFAULT_TAG;
  }

  /** The short form users type: Docker Hub's domain and `library/` prefix dropped. */
  familiarName(): string {
    if (this.domain !== DEFAULT_DOMAIN) return this.repository();
    if (this.path.startsWith(OFFICIAL_REPO_PREFIX) && !this.path.slice(OFFICIAL_REPO_PREFIX.length).includes('/')) {
      return this.path.slice(OFFICIAL_REPO_PREFIX.length);
    }
    return this.path;
  }

  familiar(): string {
    return this.familiarName() + this.suffix();
  }

  withDigest(digest: string): ImageReference {
    parseDigest(digest);
    return new ImageReference(this.domain, this.path, this.tag, digest);
  }

  /** Full normalised form keeping both tag and digest when both were given. */
  toString(): string {
    return this.repository() + this.suffix();
  }

  private suffix(): string {
    return (this.tag !== undefined ? `:${this.tag}` : '') + (this.digest ? `@${this.digest}` : '');
  }
}

/**
 * Parses a reference, applying Docker's normalisation (default domain docker.io, `library/` for
 * single-component Docker Hub names, default tag `latest` when neither tag nor digest is given).
 * Throws InvalidArgument with the reason for anything that is not a valid reference, including
 * image IDs (check {@link isImageId} first where IDs are acceptable).
 */
export function parseReference(input: string): ImageReference {
  const fail = (why: string): never => {
    throw invalidArgument(`invalid image reference "${input}": ${why}`);
  };
  if (input === '') fail('empty reference');
  if (input.trim() !== input) fail('leading or trailing whitespace');
  if (isImageId(input)) fail('it is an image ID, not a reference (64-character hex names are not allowed)');

  let rest = input;
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (digest.includes('@')) fail('more than one "@"');
    try {
      parseDigest(digest);
    } catch (err) {
      fail(`bad digest "${digest}" (${(err as Error).message.replace(/^invalid digest "[^"]*": /, '')})`);
    }
  }

  let tag: string | undefined;
  const colon = rest.lastIndexOf(':');
  if (colon > rest.lastIndexOf('/')) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG_RE.test(tag)) fail(`bad tag "${tag}" (must match [A-Za-z0-9_][A-Za-z0-9_.-]{0,127})`);
  }
  if (rest === '') fail('missing repository name');

  let domain = DEFAULT_DOMAIN;
  let path = rest;
  const slash = rest.indexOf('/');
  if (slash >= 0) {
    const first = rest.slice(0, slash);
    // Docker's rule: the first component names a registry only if it looks like a host.
    if (/[.:]/.test(first) || first === 'localhost' || first.toLowerCase() !== first) {
      domain = first;
      path = rest.slice(slash + 1);
    }
  }
  if (domain === LEGACY_DEFAULT_DOMAIN) domain = DEFAULT_DOMAIN;
  if (!DOMAIN_RE.test(domain)) fail(`bad registry host "${domain}"`);
  if (path === '') fail('missing repository path');
  if (path.toLowerCase() !== path) fail('repository name must be lowercase');
  if (!PATH_RE.test(path)) {
    fail(
      `bad repository path "${path}" (components are lowercase letters and digits joined by ".", "_", "__" or dashes)`,
    );
  }
  if (domain === DEFAULT_DOMAIN && !path.includes('/')) path = OFFICIAL_REPO_PREFIX + path;
  if (domain.length + 1 + path.length > MAX_NAME_LENGTH) fail(`repository name longer than ${MAX_NAME_LENGTH} characters`);

  if (tag === undefined && digest === undefined) tag = DEFAULT_TAG;
  return new ImageReference(domain, path, tag, digest);
}

/** Like {@link parseReference} but returns undefined instead of throwing. */
export function tryParseReference(input: string): ImageReference | undefined {
  try {
    return parseReference(input);
  } catch {
    return undefined;
  }
}
