/**
 * Named points where tests can make the daemon die on purpose, to prove that recovery after a crash
 * half-way through an operation leaves nothing leaked. Enabled only through the environment:
 * CRISP_FAILPOINTS="sandbox-after-cni,…" makes the daemon SIGKILL itself on reaching those points.
 */
const armed = new Set((process.env.CRISP_FAILPOINTS ?? '').split(',').filter(Boolean));

export function failpoint(name: string): void {
  if (armed.size > 0 && armed.has(name)) process.kill(process.pid, 'SIGKILL');
}
