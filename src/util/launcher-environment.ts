/**
 * The environment for starting Ferry's own daemons through the `ferry` launcher (bin/ferry), which runs
 * the first `node` on PATH: this process's node goes first, so the daemons run the same node (and the
 * same native modules) as whatever starts them, whatever PATH it was given.
 */
import path from 'node:path';

/** `environment` with the directory of this process's node first on PATH. */
export function withThisNodeFirst(environment: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  return { ...environment, PATH: [path.dirname(process.execPath), environment.PATH].filter(Boolean).join(path.delimiter) };
}
