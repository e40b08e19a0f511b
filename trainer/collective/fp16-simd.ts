/**
 * WebAssembly SIMD versions of the fp16 conversions (source: fp16-simd.wat). Eight elements per step; vectors with
 * a subnormal, infinite or NaN element (or a sum that rounds to one) are redone element by element with the same
 * rules as fp16.ts, so the results are the same bits as the JavaScript loops (except which NaN an addition
 * produces, which never matters: every NaN encodes to a NaN half). Data goes through the module's memory in blocks.
 *
 * Regenerate the bytes after editing the .wat (wabt 1.0.37):
 *   npx -y -p wabt@1.0.37 wat2wasm trainer/collective/fp16-simd.wat -o /tmp/fp16-simd.wasm
 *   base64 -w0 /tmp/fp16-simd.wasm   # into WASM_BASE64 below
 */

const WASM_BASE64 = 'AGFzbQEAAAABFQRgAX8Bf2ABfwBgAn9/AGADf39/AAMJCAAAAQIBAgIDBQMBAAgHJgQGbWVtb3J5AgAGZW5jb2RlAAIGZGVjb2RlAAQHYWRkSGFsZgAGCuUZCNoBAQl/IABBEHZBgIACcSECIABB/////wdxIQEgAUGAgIDEA2tBgICA+ABJBEAgAiABQYCAgMADa0H/H2ogAUENdkEBcWpBDXZyDwsgAUEXdiEDIABB////A3EhBCADQY8BTwRAIAJBgPwBQYD4ASADQf8BRiAEQQBHcRtyDwsgA0HmAE8EQCAEQYCAgARyIQVB/gAgA2shBiAFIAZ2IQcgBUEBIAZ0QQFrcSEIQQEgBkEBa3QhCSAIIAlLIAggCUYgB0EBcXFyBEAgB0EBaiEHCyACIAdyDwsgAgtkAQN/IABBgPgBcSEBIABB/wdxIQIgAEGAgAJxQRB0IQMgAUUEQCADIAKzQwAAgDOUvHIPCyABQYD4AUYEQEGAgID+ByADQYCAgPwHciACGw8LIAMgAEH//wFxQYCAB2pBDXRyC9YEAgJ/B3sgAEF4cSECAkADQCABIAJPDQEgAUECdP0ABAAhAyABQQJ0/QAEECEEIAP9DP///3////9/////f////3/9TiEJIANBEP2tAf0MAIAAAACAAAAAgAAAAIAAAP1OIAn9DAAAADgAAAA4AAAAOAAAADj9sQH9DP8PAAD/DwAA/w8AAP8PAAD9rgEgCUEN/a0B/QwBAAAAAQAAAAEAAAABAAAA/U79rgFBDf2tAf1QIQUgCf0MAACAOAAAgDgAAIA4AACAOP2xAf0MAAAADwAAAA8AAAAPAAAAD/06IQcgCf0MAAAAAAAAAAAAAAAAAAAAAP03IQkgA0EQ/a0B/QwAgAAAAIAAAACAAAAAgAAA/U4gBSAJ/VIhBSAHIAn9UCEHIAT9DP///3////9/////f////3/9TiEJIARBEP2tAf0MAIAAAACAAAAAgAAAAIAAAP1OIAn9DAAAADgAAAA4AAAAOAAAADj9sQH9DP8PAAD/DwAA/w8AAP8PAAD9rgEgCUEN/a0B/QwBAAAAAQAAAAEAAAABAAAA/U79rgFBDf2tAf1QIQYgCf0MAACAOAAAgDgAAIA4AACAOP2xAf0MAAAADwAAAA8AAAAPAAAAD/06IQggCf0MAAAAAAAAAAAAAAAAAAAAAP03IQkgBEEQ/a0B/QwAgAAAAIAAAACAAAAAgAAA/U4gBiAJ/VIhBiAIIAn9UCEIIAcgCP1O/aMBBEBBgIAQIAFBAXRqIAUgBv2GAf0LBAAFIAEgAUEIahADCyABQQhqIQEMAAsLIAIgABADCy8AAkADQCAAIAFPDQFBgIAQIABBAXRqIABBAnQoAgAQADsBACAAQQFqIQAMAAsLC78EAgJ/CHsgAEF4cSECAkADQCABIAJPDQFBgIAQIAFBAXRq/QAEACEDIAP9qQEhBCAD/aoBIQUgBP0MAHwAAAB8AAAAfAAAAHwAAP1OIQogCv0MAAAAAAAAAAAAAAAAAAAAAP04IAr9DAB8AAAAfAAAAHwAAAB8AAD9OP1OIQggBP0MAIAAAACAAAAAgAAAAIAAAP1OQRD9qwEgBP0M/38AAP9/AAD/fwAA/38AAP1O/QwAwAEAAMABAADAAQAAwAEA/a4BQQ39qwH9UCAE/QwAgAAAAIAAAACAAAAAgAAA/U5BEP2rASAI/VIhBiAIIAT9DP9/AAD/fwAA/38AAP9/AAD9Tv0MAAAAAAAAAAAAAAAAAAAAAP03/VAhCCAF/QwAfAAAAHwAAAB8AAAAfAAA/U4hCiAK/QwAAAAAAAAAAAAAAAAAAAAA/TggCv0MAHwAAAB8AAAAfAAAAHwAAP04/U4hCSAF/QwAgAAAAIAAAACAAAAAgAAA/U5BEP2rASAF/Qz/fwAA/38AAP9/AAD/fwAA/U79DADAAQAAwAEAAMABAADAAQD9rgFBDf2rAf1QIAX9DACAAAAAgAAAAIAAAACAAAD9TkEQ/asBIAn9UiEHIAkgBf0M/38AAP9/AAD/fwAA/38AAP1O/QwAAAAAAAAAAAAAAAAAAAAA/Tf9UCEJIAggCf1O/aMBBEAgAUECdCAG/QsEACABQQJ0IAf9CwQQBSABIAFBCGoQBQsgAUEIaiEBDAALCyACIAAQBQsvAAJAA0AgACABTw0BIABBAnRBgIAQIABBAXRqLwEAEAE2AgAgAEEBaiEADAALCwvPDAMCfwx7AX8gAEF4cSEDAkADQCACIANPDQEgAkECdCEQQYCAECACQQF0av0ABAAhBCAE/akBIQUgBP2qASEGIAX9DAB8AAAAfAAAAHwAAAB8AAD9TiENIA39DAAAAAAAAAAAAAAAAAAAAAD9OCAN/QwAfAAAAHwAAAB8AAAAfAAA/Tj9TiEJIAX9DACAAAAAgAAAAIAAAACAAAD9TkEQ/asBIAX9DP9/AAD/fwAA/38AAP9/AAD9Tv0MAMABAADAAQAAwAEAAMABAP2uAUEN/asB/VAgBf0MAIAAAACAAAAAgAAAAIAAAP1OQRD9qwEgCf1SIQcgCSAF/Qz/fwAA/38AAP9/AAD/fwAA/U79DAAAAAAAAAAAAAAAAAAAAAD9N/1QIQkgBv0MAHwAAAB8AAAAfAAAAHwAAP1OIQ0gDf0MAAAAAAAAAAAAAAAAAAAAAP04IA39DAB8AAAAfAAAAHwAAAB8AAD9OP1OIQogBv0MAIAAAACAAAAAgAAAAIAAAP1OQRD9qwEgBv0M/38AAP9/AAD/fwAA/38AAP1O/QwAwAEAAMABAADAAQAAwAEA/a4BQQ39qwH9UCAG/QwAgAAAAIAAAACAAAAAgAAA/U5BEP2rASAK/VIhCCAKIAb9DP9/AAD/fwAA/38AAP9/AAD9Tv0MAAAAAAAAAAAAAAAAAAAAAP03/VAhCiAHIBD9AAQA/eQBIQcgCCAQ/QAEEP3kASEIIAf9DP///3////9/////f////3/9TiENIAdBEP2tAf0MAIAAAACAAAAAgAAAAIAAAP1OIA39DAAAADgAAAA4AAAAOAAAADj9sQH9DP8PAAD/DwAA/w8AAP8PAAD9rgEgDUEN/a0B/QwBAAAAAQAAAAEAAAABAAAA/U79rgFBDf2tAf1QIQ4gDf0MAACAOAAAgDgAAIA4AACAOP2xAf0MAAAADwAAAA8AAAAPAAAAD/06IQsgDf0MAAAAAAAAAAAAAAAAAAAAAP03IQ0gB0EQ/a0B/QwAgAAAAIAAAACAAAAAgAAA/U4gDiAN/VIhDiALIA39UCELIAj9DP///3////9/////f////3/9TiENIAhBEP2tAf0MAIAAAACAAAAAgAAAAIAAAP1OIA39DAAAADgAAAA4AAAAOAAAADj9sQH9DP8PAAD/DwAA/w8AAP8PAAD9rgEgDUEN/a0B/QwBAAAAAQAAAAEAAAABAAAA/U79rgFBDf2tAf1QIQ8gDf0MAACAOAAAgDgAAIA4AACAOP2xAf0MAAAADwAAAA8AAAAPAAAAD/06IQwgDf0MAAAAAAAAAAAAAAAAAAAAAP03IQ0gCEEQ/a0B/QwAgAAAAIAAAACAAAAAgAAA/U4gDyAN/VIhDyAMIA39UCEMIAkgCv1OIAsgDP1O/U4hCSABBEAgDv0MAHwAAAB8AAAAfAAAAHwAAP1OIQ0gDf0MAAAAAAAAAAAAAAAAAAAAAP04IA39DAB8AAAAfAAAAHwAAAB8AAD9OP1OIQsgDv0MAIAAAACAAAAAgAAAAIAAAP1OQRD9qwEgDv0M/38AAP9/AAD/fwAA/38AAP1O/QwAwAEAAMABAADAAQAAwAEA/a4BQQ39qwH9UCAO/QwAgAAAAIAAAACAAAAAgAAA/U5BEP2rASAL/VIhByALIA79DP9/AAD/fwAA/38AAP9/AAD9Tv0MAAAAAAAAAAAAAAAAAAAAAP03/VAhCyAP/QwAfAAAAHwAAAB8AAAAfAAA/U4hDSAN/QwAAAAAAAAAAAAAAAAAAAAA/TggDf0MAHwAAAB8AAAAfAAAAHwAAP04/U4hDCAP/QwAgAAAAIAAAACAAAAAgAAA/U5BEP2rASAP/Qz/fwAA/38AAP9/AAD/fwAA/U79DADAAQAAwAEAAMABAADAAQD9rgFBDf2rAf1QIA/9DACAAAAAgAAAAIAAAACAAAD9TkEQ/asBIAz9UiEIIAwgD/0M/38AAP9/AAD/fwAA/38AAP1O/QwAAAAAAAAAAAAAAAAAAAAA/Tf9UCEMIAkgCyAM/U79TiEJCyAJ/aMBBEBBgIAQIAJBAXRqIA4gD/2GAf0LBAAgAQRAIBAgB/0LBAAgECAI/QsEEAsFIAIgAkEIaiABEAcLIAJBCGohAgwACwsgAyAAIAEQBwtYAQF/AkADQCAAIAFPDQFBgIAQIABBAXRqLwEAEAG+IABBAnQqAgCSvBAAIQNBgIAQIABBAXRqIAM7AQAgAgRAIABBAnQgAxABNgIACyAAQQFqIQAMAAsLCw==';

/** Elements per block (the module's regions hold 65536 float32 and 65536 halves). */
const BLOCK = 65536;
const HALVES_AT = 262144;

interface Kernels {
  encode(n: number): void;
  decode(n: number): void;
  addHalf(n: number, keep: number): void;
  f32: Float32Array;
  u32: Uint32Array;
  u16: Uint16Array;
}

interface WasmApi {
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object) => { exports: unknown };
}

let kernels: Kernels | null | undefined;

/** The SIMD kernels, or null where WebAssembly SIMD is not available (the JavaScript loops are used then). */
export function simdKernels(): Kernels | null {
  if (kernels !== undefined) return kernels;
  try {
    // (The project's TypeScript libs do not declare the WebAssembly JS API; this is the part used.)
    const wasm = (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly;
    const instance = new wasm.Instance(new wasm.Module(Buffer.from(WASM_BASE64, 'base64')));
    const e = instance.exports as { memory: { buffer: ArrayBuffer }; encode(n: number): void; decode(n: number): void; addHalf(n: number, keep: number): void };
    const buf = e.memory.buffer;
    kernels = {
      encode: e.encode,
      decode: e.decode,
      addHalf: e.addHalf,
      f32: new Float32Array(buf, 0, BLOCK),
      u32: new Uint32Array(buf, 0, BLOCK),
      u16: new Uint16Array(buf, HALVES_AT, BLOCK),
    };
  } catch {
    kernels = null;
  }
  return kernels;
}

/** dst[i] = half(float with bits src[i]) for i < src.length. */
export function floatToHalfSimd(k: Kernels, src: Uint32Array, dst: Uint16Array): void {
  const n = src.length;
  for (let off = 0; off < n; off += BLOCK) {
    const m = Math.min(BLOCK, n - off);
    k.u32.set(src.subarray(off, off + m));
    k.encode(m);
    dst.set(k.u16.subarray(0, m), off);
  }
}

/** dst[i] = bits of float(src[i]) for i < n. */
export function halfToFloatBitsSimd(k: Kernels, src: Uint16Array, dst: Uint32Array, n: number): void {
  for (let off = 0; off < n; off += BLOCK) {
    const m = Math.min(BLOCK, n - off);
    k.u16.set(src.subarray(off, off + m));
    k.decode(m);
    dst.set(k.u32.subarray(0, m), off);
  }
}

/** io[i] = half(fp32(float(io[i]) + acc[i])); with accBits (a Uint32Array view of acc), also acc[i] = float(io[i]). */
export function addHalfSimd(k: Kernels, io: Uint16Array, acc: Float32Array, accBits: Uint32Array | null, n: number): void {
  for (let off = 0; off < n; off += BLOCK) {
    const m = Math.min(BLOCK, n - off);
    k.u16.set(io.subarray(off, off + m));
    k.f32.set(acc.subarray(off, off + m));
    k.addHalf(m, accBits ? 1 : 0);
    io.set(k.u16.subarray(0, m), off);
    if (accBits) accBits.set(k.u32.subarray(0, m), off);
  }
}
