/** Spec options for the container's process: command, environment, working directory, flags, user. */
import * as path from 'node:path';
import { invalidArgument } from '../util/errors';
import { resolveProcessArgs } from './command';
import { resolveUserWithHome } from './image_user';
import { cleanPath, type ContainerSpecOpt } from './spec_context';
import {
  applyOpts,
  withCwd,
  withEnv,
  withNoNewPrivileges,
  withProcessArgs,
  withRlimit,
  withRootReadonly,
  withTerminal,
  withUser,
} from './spec_opts';

export const DEFAULT_PATH_ENV = 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/** containerd's default, high enough for servers; the launcher clamps it to what the host allows. */
export const DEFAULT_NOFILE_LIMIT = 1_048_576;

/** Command, environment (the container's over the image's), working directory and process flags. */
export const processFromConfig: ContainerSpecOpt = (spec, { config, imageConfig, security, hostname }) => {
  const imageEnv = imageConfig.Env ?? [];
  const configEnv = config.envs.map((kv) => `${kv.key}=${kv.value}`);
  applyOpts(
    spec,
    withProcessArgs(resolveProcessArgs(config, imageConfig)),
    withEnv([DEFAULT_PATH_ENV]),
    withEnv([`HOSTNAME=${hostname}`]),
    // Image first so the container config overrides it.
    withEnv([...imageEnv, ...configEnv]),
    withCwd(resolveWorkingDir(config.workingDir, imageConfig.WorkingDir)),
    withTerminal(config.tty),
    withNoNewPrivileges(security?.noNewPrivs ?? false),
    withRootReadonly(security?.readonlyRootfs ?? false),
    withRlimit('RLIMIT_NOFILE', DEFAULT_NOFILE_LIMIT, DEFAULT_NOFILE_LIMIT),
  );
};

/** The OOM score adjustment, when the request carries resources. */
export const oomScoreAdjFromResources: ContainerSpecOpt = (spec, { config }) => {
  const resources = config.linux?.resources;
  if (resources) spec.process.oomScoreAdj = Number(resources.oomScoreAdj);
};

/** The user and groups (run_as_* over the image's USER, looked up in the image), and HOME unless set. */
export const userFromImage: ContainerSpecOpt = async (spec, { input, security, imageConfig }) => {
  const resolved = await resolveUserWithHome(
    {
      runAsUser: security?.runAsUser?.value,
      runAsUsername: security?.runAsUsername,
      runAsGroup: security?.runAsGroup?.value,
      imageUser: imageConfig.User,
      supplementalGroups: security?.supplementalGroups ?? [],
      supplementalGroupsPolicy: security?.supplementalGroupsPolicy ?? 0,
    },
    input.readFileInImage,
  );
  applyOpts(spec, withUser(resolved.user));
  if (!spec.process.env.some((e) => e.startsWith('HOME='))) spec.process.env.push(`HOME=${resolved.home}`);
};

function resolveWorkingDir(configDir: string, imageDir: string | undefined): string {
  if (configDir) {
    if (!path.posix.isAbsolute(configDir)) throw invalidArgument(`working_dir "${configDir}" is not an absolute path`);
    return cleanPath(configDir);
  }
  // Image builders store WORKDIR resolved; a relative one is taken relative to /.
  if (imageDir) return cleanPath(path.posix.join('/', imageDir));
  return '/';
}
