#!/usr/bin/env bash
# Builds the engine's native addon (blas.cc: OpenBLAS sgemm; kernels.cc: fused element-wise kernels, OpenMP →
# build/blas.node) with the system compiler for this machine's CPU (-march=native: it is built where it runs), Node's
# headers and Debian's OpenBLAS (libopenblas-dev). Prints why and exits 0 when something is missing: the engine then runs
# its wasm matmul instead. Idempotent: rebuilds only when a source (or this script, or the CPU asked for) changed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/build/blas.node"
stamp="$here/build/march"
if [ -f "$out" ] && [ "$out" -nt "$here/blas.cc" ] && [ "$out" -nt "$here/kernels.cc" ] && [ "$out" -nt "$here/typed-arrays.h" ] && [ "$out" -nt "$0" ] &&
  [ "$(cat "$stamp" 2>/dev/null)" = "${BLIP2_NATIVE_MARCH:-native}" ]; then exit 0; fi
node_include="$(node -p "require('path').resolve(process.execPath, '../../include/node')")"
if [ ! -f "$node_include/node_api.h" ]; then
  echo "native BLAS addon not built: no $node_include/node_api.h (Node's headers)" >&2
  exit 0
fi
if [ ! -f /usr/include/x86_64-linux-gnu/cblas.h ] && [ ! -f /usr/include/cblas.h ]; then
  echo "native BLAS addon not built: no cblas.h (apt-get install libopenblas-dev)" >&2
  exit 0
fi
if ! command -v g++ >/dev/null 2>&1; then
  echo "native BLAS addon not built: no g++" >&2
  exit 0
fi
mkdir -p "$here/build"
# The CPU to build for: this machine's by default; set BLIP2_NATIVE_MARCH (e.g. x86-64-v3) when the addon is
# built into an image that runs on other machines.
march="${BLIP2_NATIVE_MARCH:-native}"
g++ -O3 -march="$march" -fopenmp -shared -fPIC -DNODE_GYP_MODULE_NAME=blas -I"$node_include" "$here/blas.cc" "$here/kernels.cc" \
  -lopenblas -o "$out.tmp"
mv "$out.tmp" "$out"
echo "$march" >"$stamp"
echo "built $out" >&2
