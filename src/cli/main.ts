import { parseArgs } from 'node:util';
import { type Config, ConfigError, defaultConfig, LOG_LEVELS, type LogLevel, loadConfigFile, renderConfig } from '../config/config';
import { Daemon } from '../daemon';
import { createLogger, type Logger } from '../log';
import { packageVersion } from '../version';

const USAGE = `usage: crisp <command> [flags]

commands:
  daemon           run the CRI runtime in the foreground
  version          print the version
  config default   print the effective configuration as commented TOML

daemon flags:
  --config FILE       configuration file (TOML); default /etc/crisp/config.toml if it exists
  --socket PATH       gRPC socket (default /run/crisp/crisp.sock)
  --root DIR          persistent data (default /var/lib/crisp)
  --state DIR         runtime state (default /run/crisp)
  --log-level LEVEL   ${LOG_LEVELS.join('|')}
`;

const DEFAULT_CONFIG_FILE = '/etc/crisp/config.toml';

/** Exit code 2 means the command line or the configuration is wrong, as for most daemons. */
class UsageError extends Error {}

function resolveConfig(values: Record<string, string | boolean | undefined>): Config {
  let config = defaultConfig();
  const file = values.config as string | undefined;
  if (file !== undefined) {
    config = loadConfigFile(file, config);
  } else {
    try {
      config = loadConfigFile(DEFAULT_CONFIG_FILE, config);
    } catch (err) {
      // Embedded defaults need no file; a file that exists but is wrong is still an error.
      if (!(err instanceof ConfigError && err.message.includes('no such file'))) throw err;
    }
  }
  if (values.socket !== undefined) config.socket = values.socket as string;
  if (values.root !== undefined) config.root = values.root as string;
  if (values.state !== undefined) config.state = values.state as string;
  if (values['log-level'] !== undefined) {
    const level = values['log-level'] as string;
    if (!LOG_LEVELS.includes(level as LogLevel)) throw new UsageError(`--log-level: expected one of ${LOG_LEVELS.join(', ')}, got "${level}"`);
    config.logLevel = level as LogLevel;
  }
  return config;
}

/**
 * SIGHUP: re-reads the configuration (file, then command-line flags on top, as at start-up) and
 * applies its log level. Other settings need a restart; a broken file keeps the current level.
 */
function reloadLogLevel(log: Logger, reload: () => Config): void {
  try {
    const level = reload().logLevel;
    if (level === log.level) {
      log.info({ level }, 'configuration reloaded; log level unchanged');
      return;
    }
    const previous = log.level;
    log.level = level;
    log.info({ level, previous }, 'configuration reloaded; log level changed');
  } catch (err) {
    log.error({ err: (err as Error).message }, 'configuration reload failed; keeping the current log level');
  }
}

async function runDaemon(config: Config, reload: () => Config): Promise<void> {
  const log = createLogger(config.logLevel);
  // Installed first: SIGHUP's default action would kill a daemon still starting.
  process.on('SIGHUP', () => reloadLogLevel(log, reload));
  process.on('uncaughtException', (err) => log.error({ err }, 'uncaught exception'));
  process.on('unhandledRejection', (err) => log.error({ err }, 'unhandled promise rejection'));
  let daemon: Daemon;
  try {
    daemon = await Daemon.start(config, log);
  } catch (err) {
    log.fatal({ err }, 'crisp failed to start');
    log.flush();
    process.stderr.write(`crisp: ${(err as Error).message}\n`);
    process.exitCode = 1;
    return;
  }
  let signalled = false;
  const onSignal = (signal: NodeJS.Signals): void => {
    if (signalled) return;
    signalled = true;
    log.info({ signal }, 'shutting down');
    void daemon.stop().then(() => {
      log.flush();
      process.exit(0);
    });
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
}

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  try {
    switch (command) {
      case 'daemon': {
        const { values, positionals } = parseArgs({
          args: rest,
          strict: true,
          allowPositionals: true,
          options: {
            config: { type: 'string' },
            socket: { type: 'string' },
            root: { type: 'string' },
            state: { type: 'string' },
            'log-level': { type: 'string' },
          },
        });
        if (positionals.length > 0) throw new UsageError(`unexpected argument "${positionals[0]}"`);
        await runDaemon(resolveConfig(values), () => resolveConfig(values));
        return 0;
      }
      case 'version':
        if (rest.length > 0) throw new UsageError(`unexpected argument "${rest[0]}"`);
        process.stdout.write(`crisp ${packageVersion()}\n`);
        return 0;
      case 'config': {
        const { values, positionals } = parseArgs({ args: rest, strict: true, allowPositionals: true, options: { config: { type: 'string' } } });
        if (positionals[0] !== 'default' || positionals.length > 1) throw new UsageError('usage: crisp config default [--config FILE]');
        const config = values.config !== undefined ? loadConfigFile(values.config) : defaultConfig();
        process.stdout.write(renderConfig(config));
        return 0;
      }
      case undefined:
      case 'help':
      case '--help':
      case '-h':
        process.stdout.write(USAGE);
        return command === undefined ? 2 : 0;
      default:
        throw new UsageError(`unknown command "${command}"`);
    }
  } catch (err) {
    const parseError = (err as NodeJS.ErrnoException).code?.startsWith('ERR_PARSE_ARGS');
    if (err instanceof ConfigError || err instanceof UsageError || parseError) {
      process.stderr.write(`crisp: ${(err as Error).message}\n`);
      if (!(err instanceof ConfigError)) process.stderr.write(`run "crisp help" for usage\n`);
      return 2;
    }
    throw err;
  }
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => {
      if (code !== 0) process.exitCode = code;
    },
    (err: unknown) => {
      process.stderr.write(`crisp: ${(err as Error).stack ?? String(err)}\n`);
      process.exitCode = 1;
    },
  );
}
