#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine: Debian's nats-server (JetStream), promtool (from
# Debian's prometheus package: the alert rules' checks and unit tests, the scrape lint), a font (fonts-dejavu-core, for `blip2 report`), OpenBLAS and a C++ compiler (the tensor engine's native matmul), the npm packages from the lockfile, and builds the native
# matmul addon. Idempotent: skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v nats-server >/dev/null 2>&1; then
  echo "installing nats-server (Debian package)" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nats-server iproute2 >/dev/null
fi

# promtool: deploy/prometheus/prometheus.test.ts and the metrics lint of test/observability.test.ts.
if ! command -v promtool >/dev/null 2>&1; then
  echo "installing promtool (Debian package prometheus)" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

# A font for `blip2 report`'s PNGs (resvg draws no text without one; a bare Debian image has none).
if ! ls /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf >/dev/null 2>&1; then
  echo "installing fonts-dejavu-core (Debian package)" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq fonts-dejavu-core >/dev/null
fi

# openssl (the mutual-TLS collective test generates certificates) and iproute2 (`bench:allreduce --link`).
if ! command -v openssl >/dev/null 2>&1 || ! command -v tc >/dev/null 2>&1; then
  echo "installing openssl, iproute2 (Debian packages)" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq openssl iproute2 >/dev/null
fi

if [ ! -f /usr/include/x86_64-linux-gnu/cblas.h ] && [ ! -f /usr/include/cblas.h ] || ! command -v g++ >/dev/null 2>&1; then
  echo "installing OpenBLAS and g++ (Debian packages)" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libopenblas-dev g++ >/dev/null
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "installing npm packages (npm ci)" >&2
  npm ci --no-audit --no-fund
fi

# The tensor engine's OpenBLAS matmul addon (skips itself, with a message, when OpenBLAS is missing).
bash trainer/engine/native/build.sh
