import { invalidArgument } from '../util/errors';

/**
 * The argv of a container from the CRI request and the image, with kubelet's semantics (the same
 * as Docker's): `command` replaces the image Entrypoint and then the image Cmd is dropped too unless
 * `args` is given; `args` alone replaces Cmd and keeps the Entrypoint.
 */
export function resolveProcessArgs(
  config: { command: readonly string[]; args: readonly string[] },
  image: { Entrypoint?: readonly string[] | null; Cmd?: readonly string[] | null },
): string[] {
  let command = [...config.command];
  let args = [...config.args];
  if (command.length === 0) {
    if (args.length === 0) args = [...(image.Cmd ?? [])];
    const entrypoint = image.Entrypoint ?? [];
    // `ENTRYPOINT [""]` is how a Dockerfile clears an inherited entrypoint.
    if (!(entrypoint.length === 1 && entrypoint[0] === '')) command = [...entrypoint];
  }
  const argv = [...command, ...args];
  if (argv.length === 0) throw invalidArgument('no command specified');
  return argv;
}
