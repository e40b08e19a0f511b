/**
 * The project's error hierarchy. Subclass only where a caller recovers differently, and say how.
 */
export class Blip2Error extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** Bad input from a user (flag, config key, file): print the message and exit non-zero; nothing is retried. */
export class UsageError extends Blip2Error {}
