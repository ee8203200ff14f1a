import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import test from 'ava';
import { DEFAULT_APPARMOR_PROFILE, defaultAppArmorProfile } from '../../src/container/apparmor_profile';
import { nodeSpecHost } from '../../src/container/spec_host';

/** apparmor_parser compiles a profile without loading it (-Q), so this works on any host. */
function compile(text: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'crisp-apparmor-'));
  try {
    const file = path.join(dir, 'profile');
    fs.writeFileSync(file, text);
    return execFileSync('apparmor_parser', ['-Q', '-K', '-N', file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

test('the default profile compiles, with and without the distribution\'s abstractions', (t) => {
  for (const withAbstractions of [true, false]) {
    t.is(compile(defaultAppArmorProfile({ withAbstractions })).trim(), DEFAULT_APPARMOR_PROFILE, `withAbstractions=${withAbstractions}`);
  }
  t.is(compile(defaultAppArmorProfile({ withAbstractions: false }, 'other-name')).trim(), 'other-name');
});

test('the default profile denies what containerd\'s denies: mount, kernel-wide /proc and /sys writes, kcore, firmware, LSM policy', (t) => {
  const rules = defaultAppArmorProfile({ withAbstractions: false }).split('\n').map((l) => l.trim());
  for (const rule of [
    'deny mount,',
    'deny /proc/* w,',
    'deny /proc/sys/[^k]** w,',
    'deny /proc/sysrq-trigger rwklx,',
    'deny /proc/kcore rwklx,',
    'deny /sys/firmware/** rwklx,',
    'deny /sys/kernel/security/** rwklx,',
    `signal (send,receive) peer=${DEFAULT_APPARMOR_PROFILE},`,
  ]) {
    t.true(rules.includes(rule), rule);
  }
  t.false(rules.some((r) => r.startsWith('#include')), 'no includes without the abstractions');
});

test('loading a profile on a host whose kernel has no AppArmor fails with apparmor_parser\'s reason', async (t) => {
  if (fs.existsSync('/sys/kernel/security/apparmor')) return t.pass('this host has AppArmor: loading would change its policy');
  const err = await t.throwsAsync(nodeSpecHost.loadAppArmorProfile(defaultAppArmorProfile({ withAbstractions: false }, 'crisp-test-unloadable')));
  t.regex(err!.message, /^apparmor_parser exited with \d+: .+/s);
});
