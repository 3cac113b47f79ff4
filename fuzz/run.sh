#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (AddressSanitizer + UndefinedBehaviorSanitizer) into build-fuzz
# and runs each for N seconds (argument 1, default 60), starting from fuzz/corpus/<target>/. New inputs go
# to build-fuzz/corpus/<target>/, crashing inputs to build-fuzz/artifacts/. Exit status non-zero on any
# finding (crash, sanitizer report, leak, timeout, out-of-memory) or build failure.
#   fuzz/run.sh [seconds]        env: BUILD_DIR (default build-fuzz), JOBS (default 2), CXX (default clang++)
set -euo pipefail
seconds="${1:-60}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${BUILD_DIR:-$root/build-fuzz}"
jobs="${JOBS:-2}"
targets=(safetensors torch_checkpoint config gguf)

cmake -S "$root" -B "$build" -G Ninja -DCMAKE_CXX_COMPILER="${CXX:-clang++}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DMESHDIT_FUZZ=ON -DMESHDIT_SANITIZE=ON -DMESHDIT_BENCH=OFF >/dev/null
cmake --build "$build" -j "$jobs" --target "${targets[@]/%/_fuzz}"

export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"
failed=()
for t in "${targets[@]}"; do
  mkdir -p "$build/corpus/$t" "$build/artifacts"
  echo "== ${t}_fuzz for ${seconds} s"
  if ! "$build/fuzz/${t}_fuzz" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -dict="$root/fuzz/$t.dict" -artifact_prefix="$build/artifacts/$t-" \
      "$build/corpus/$t" "$root/fuzz/corpus/$t" 2>"$build/$t.log"; then
    tail -n 60 "$build/$t.log"
    failed+=("$t")
    continue
  fi
  grep -E "^#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb" "$build/$t.log" || true
done
if [ ${#failed[@]} -ne 0 ]; then
  echo "fuzz: findings in ${failed[*]} (inputs under $build/artifacts/)" >&2
  exit 1
fi
echo "fuzz: no findings"
