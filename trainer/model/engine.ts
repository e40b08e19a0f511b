/**
 * The tensor engine. Picks, in order: tfjs-node-gpu (CUDA) when it is installed and loads, else tfjs `wasm`
 * (XNNPACK), else tfjs `cpu`. The choice is logged and returned so that it can be exported as a metric label.
 * See ../shared/docs/engine-notes.md for why wasm is preferred over cpu (~40× on a Q-Former layer).
 */
import * as tf from '@tensorflow/tfjs-core';
import { createLogger } from '../../common';

export { tf };
export type EngineName = 'tensorflow' | 'wasm' | 'cpu';

export interface EngineOptions {
  /** Which engine to use; `auto` (default) tries tensorflow, then wasm, then cpu. Env: BLIP2_ENGINE. */
  engine?: EngineName | 'auto';
  /** Threads for the wasm engine; default: the number of CPU cores. */
  threads?: number;
}

const log = createLogger('engine');
let current: EngineName | undefined;

async function tryTensorflow(): Promise<boolean> {
  try {
    await import('@tensorflow/tfjs-node-gpu' as string);
    return await tf.setBackend('tensorflow');
  } catch {
    return false;
  }
}

async function tryWasm(): Promise<boolean> {
  try {
    await import('@tensorflow/tfjs-backend-wasm');
    return await tf.setBackend('wasm');
  } catch {
    return false;
  }
}

async function tryCpu(): Promise<boolean> {
  await import('@tensorflow/tfjs-backend-cpu');
  return tf.setBackend('cpu');
}

/** Initialise the engine once per process; later calls return the engine already chosen. */
export async function initEngine(options: EngineOptions = {}): Promise<EngineName> {
  if (current) return current;
  const wanted = options.engine ?? ((process.env.BLIP2_ENGINE as EngineName | undefined) || 'auto');
  const order: EngineName[] = wanted === 'auto' ? ['tensorflow', 'wasm', 'cpu'] : [wanted];
  const tries: Record<EngineName, () => Promise<boolean>> = { tensorflow: tryTensorflow, wasm: tryWasm, cpu: tryCpu };
  for (const name of order) {
    if (await tries[name]()) {
      await tf.ready();
      current = name;
      log.info('tensor engine selected', { engine: name });
      return name;
    }
  }
  throw new Error(`no tensor engine could be started (tried ${order.join(', ')})`);
}

export function engineName(): EngineName | undefined {
  return current;
}
