// The command's exit statuses and the error that carries one: 0 done, 1 failed (including a service that cannot be
// reached), 2 bad input (usage, config, a missing file). main.ts turns every error that reaches it into one of them.
import { Blip2Error } from '../common';

export const EXIT_OK = 0;
export const EXIT_FAILED = 1;
export const EXIT_USAGE = 2;

/** The command could not do its work for a reason other than its input (a server that does not answer): exit 1. */
export class CommandFailedError extends Blip2Error {
  readonly exitCode = EXIT_FAILED;
}

/** Node's error for a file or folder that is missing or cannot be used (ENOENT, EACCES, …): bad input, not a bug. */
export function isPathError(err: unknown): err is NodeJS.ErrnoException & { path: string } {
  const e = err as NodeJS.ErrnoException;
  return e instanceof Error && typeof e.path === 'string' &&
    ['ENOENT', 'ENOTDIR', 'EISDIR', 'EACCES', 'EPERM', 'EEXIST', 'EROFS'].includes(e.code ?? '');
}

/** One line for a path error: "<path>: no such file or directory" (Node's message less its code and syscall). */
export function describePathError(err: NodeJS.ErrnoException & { path: string }): string {
  const reason = err.message.replace(/^[A-Z]+: /, '').replace(/, \w+ '.*'$/, '');
  return `${err.path}: ${reason}`;
}
