#!/usr/bin/env bash
# Installs what meshdit builds and tests with, from Debian 12's own packages.
# libdnnl-dev (oneDNN) is the CPU backend's GEMM; ocl-icd-opencl-dev because its CMake config requires
# OpenCL (Debian builds it with an OpenCL GPU runtime) and fails configure without it. libopenblas-dev is
# only bench/gemm_bench's point of comparison.
# libcpp-httplib-dev is `meshdit serve`'s HTTP server. With --tests (tools/test.sh) also chromium, nodejs and
# npm, for the serve page's browser test (tests/app/serve_browser_test.cpp; playwright-core comes from
# `npm ci` in tools/browser), which users who only build and generate do not need.
set -euo pipefail
PKGS=(cmake ninja-build g++ pkg-config clang libclang-rt-14-dev
      libopenblas-dev nlohmann-json3-dev libcli11-dev libgtest-dev libgmock-dev libbenchmark-dev libdnnl-dev
      ocl-icd-opencl-dev
      libopenmpi-dev openmpi-bin libsentencepiece-dev libpng-dev libutf8proc-dev
      libavcodec-dev libavformat-dev libswscale-dev libavutil-dev
      libcpp-httplib-dev)
if [ "${1:-}" = "--tests" ]; then
  # By command, not package: a Node.js from elsewhere (NodeSource's bundles npm and conflicts with Debian's
  # npm package) serves as well as Debian's.
  command -v chromium >/dev/null || PKGS+=(chromium)
  command -v node >/dev/null || PKGS+=(nodejs)
  command -v npm >/dev/null || PKGS+=(npm)
fi
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing: ${missing[*]}" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
