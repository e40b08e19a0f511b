/**
 * A minimal structured logger: one JSON object a line on stderr when BLIP2_LOG_FORMAT=json (what a cluster's log
 * collector wants), readable text otherwise. Level from `setLogLevel` (the job config's `log.level`).
 */
export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
const order: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };
let threshold: LogLevel = 'info';
let json = false;

export function setLogLevel(level: LogLevel): void {
  threshold = level;
}
export function setLogFormat(format: 'text' | 'json'): void {
  json = format === 'json';
}

export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
  child(fields: Record<string, unknown>): Logger;
}

/** A record is one line: newlines inside a value (a decoder's message, a stack) are written as a backslash and n. */
const oneLine = (text: string) => text.replace(/\r?\n|\r/g, '\\n');

export function createLogger(component: string, base: Record<string, unknown> = {}): Logger {
  const emit = (level: LogLevel, msg: string, fields?: Record<string, unknown>) => {
    if (order[level] < order[threshold]) return;
    const all = { ...base, ...fields };
    if (json) {
      process.stderr.write(JSON.stringify({ time: new Date().toISOString(), level, component, msg, ...all }) + '\n');
    } else {
      const kv = Object.entries(all)
        .map(([k, v]) => `${k}=${typeof v === 'string' ? oneLine(v) : JSON.stringify(v)}`)
        .join(' ');
      process.stderr.write(`${new Date().toISOString()} ${level.padEnd(5)} [${component}] ${oneLine(msg)}${kv ? ' ' + kv : ''}\n`);
    }
  };
  return {
    debug: (m, f) => emit('debug', m, f),
    info: (m, f) => emit('info', m, f),
    warn: (m, f) => emit('warn', m, f),
    error: (m, f) => emit('error', m, f),
    child: (f) => createLogger(component, { ...base, ...f }),
  };
}
