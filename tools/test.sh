#!/usr/bin/env bash
# The whole test suite: release build + unit and fixture tests, the same under ASan+UBSan, then the
# fuzzers for FUZZ_SECONDS (default 60) each. Exit status non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup-debian.sh
JOBS=${JOBS:-$(nproc)}

echo "== release build and tests"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$JOBS"
ctest --test-dir build --output-on-failure -j "$JOBS"

echo "== ASan + UBSan build and tests"
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMESHDIT_SANITIZE=ON -DMESHDIT_BENCH=OFF >/dev/null
cmake --build build-asan -j "$JOBS"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ctest --test-dir build-asan --output-on-failure -j "$JOBS"

if [ -x fuzz/run.sh ]; then
  echo "== fuzzing (${FUZZ_SECONDS:-60} s per target)"
  fuzz/run.sh "${FUZZ_SECONDS:-60}"
fi
echo "all tests passed"
