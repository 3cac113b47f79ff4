#!/usr/bin/env bash
# The whole test suite: release build + unit and fixture tests, the same under ASan+UBSan, then the
# fuzzers for FUZZ_SECONDS (default 60) each. Exit status non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup-debian.sh --tests
# The serve page's browser test drives Debian's Chromium through playwright-core, pinned in tools/browser.
(cd tools/browser && npm ci --no-audit --no-fund --loglevel=error)
JOBS=${JOBS:-$(nproc)}

echo "== release build and tests"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$JOBS"
ctest --test-dir build --output-on-failure -j "$JOBS"

# One clang build serves the sanitized unit tests and the libFuzzer targets (a second sanitized build of
# the library would double the suite's time).
echo "== ASan + UBSan build (clang) and tests"
cmake -S . -B build-asan -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DMESHDIT_SANITIZE=ON -DMESHDIT_FUZZ=ON -DMESHDIT_BENCH=OFF >/dev/null
cmake --build build-asan -j "$JOBS"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ctest --test-dir build-asan --output-on-failure -j "$JOBS"

echo "== fuzzing (${FUZZ_SECONDS:-60} s per target)"
BUILD_DIR="$PWD/build-asan" fuzz/run.sh "${FUZZ_SECONDS:-60}"
echo "all tests passed"
