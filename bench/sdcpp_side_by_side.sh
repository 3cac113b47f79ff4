#!/usr/bin/env bash
# meshdit and stable-diffusion.cpp on the same checkpoint files, alternating per configuration, ROUNDS rounds (issue
# 16's GGUF table and issue 8's tables in bench/README.md). Needs ../shared/cpu-peer's build of sd-cli under $PEERS
# (build_sdcpp.sh) and the files below in $PEERS/ckpt, made with
#   meshdit bench random-checkpoint --arch flux-dev --double 2 --single 4 -o $PEERS/ckpt/flux1-dev_d2s4_bf16.safetensors
#   meshdit bench random-checkpoint --arch sd35-large --double 4 -o $PEERS/ckpt/sd3.5-large_d4_bf16.safetensors
#   meshdit convert <each> -o <each with _q8_0.gguf / _q4_k.gguf> --type q8_0|q4_k
# Prints one line per engine and configuration: steady s/step (sd.cpp: mean of steps 2-3 and the step times;
# meshdit: the median of steps 2-4, its GFLOP/s) and the process's peak RSS (/usr/bin/time).
#
# env (defaults in brackets):
#   ROUNDS [2]  FILES ["bf16.safetensors q8_0.gguf q4_k.gguf"]  RESOLUTIONS [256]  PRECISIONS [default]
#     PRECISIONS: meshdit's --precision per run ("default" = none given: bf16 where the CPU has bf16 dot products);
#     sd.cpp runs once per file and resolution whatever the list.
#   SD_CLI [$PEERS/sdcpp/build/bin/sd-cli]  another sd.cpp build, e.g. one configured with GGML_NATIVE=OFF (AVX2 only)
#   MESHDIT_ENV  environment for meshdit's runs, e.g. "ONEDNN_MAX_CPU_ISA=AVX2" (its AVX2 kernels on any x86 CPU)
set -euo pipefail
: "${PEERS:?set PEERS to the folder holding sdcpp/ and ckpt/}"
HERE=$(cd "$(dirname "$0")/.." && pwd)
MESHDIT=${MESHDIT:-$HERE/build/meshdit}
SHARED=${SHARED:-$HERE/../shared}
ROUNDS=${ROUNDS:-2}
FILES=${FILES:-"bf16.safetensors q8_0.gguf q4_k.gguf"}
RESOLUTIONS=${RESOLUTIONS:-256}
PRECISIONS=${PRECISIONS:-default}
SD_CLI=${SD_CLI:-$PEERS/sdcpp/build/bin/sd-cli}
MESHDIT_ENV=${MESHDIT_ENV:-}
RSS_LOG=$PEERS/sdcpp_rss.log
WRAP=$PEERS/sdcpp_timed.sh
# sd-cli under /usr/bin/time, so run_sdcpp.sh's runs report their peak RSS too
printf '#!/bin/sh\n/usr/bin/time -a -o %s -f "%%M" %s "$@"\n' "$RSS_LOG" "$SD_CLI" > "$WRAP"
chmod +x "$WRAP"
for round in $(seq 1 "$ROUNDS"); do
  for res in $RESOLUTIONS; do
    for m in "flux-dev flux1-dev_d2s4 256" "sd35 sd3.5-large_d4 154"; do
      set -- $m
      for q in $FILES; do
        tag=r${round}_$1_${q%%.*}_$res
        SD_CLI=$WRAP PEERS=$PEERS RUNS=1 STEPS=3 THREADS=2 RESOLUTIONS=$res MODELS=$1 TAG=$tag \
          DIFFUSION_MODEL=$PEERS/ckpt/$2_$q bash "$SHARED/cpu-peer/run_sdcpp.sh" >/dev/null 2>&1
        echo "sd.cpp  round $round $1 $q ${res}x$res: s/step,step times $(tail -1 "$PEERS/results/sdcpp_runs_$tag.csv" | cut -d, -f10,11), peak RSS $(tail -1 "$RSS_LOG") KB"
        for p in $PRECISIONS; do
          args=()
          [ "$p" = default ] || args=(--precision "$p")
          out=$(env $MESHDIT_ENV /usr/bin/time -f "peak_rss_kb %M" "$MESHDIT" bench transformer "$PEERS/ckpt/$2_$q" \
                  --width "$res" --height "$res" --text-tokens "$3" --steps 4 "${args[@]}" 2>&1)
          echo "meshdit round $round $1 $q ${res}x$res $p: $(echo "$out" | grep -E '^(precision|s_per_step|GFLOP/s|peak_rss_kb) ' | tr '\n' ' ')"
        done
      done
    done
  done
done
