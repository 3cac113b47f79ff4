#!/usr/bin/env bash
# The GPU check, as one command, for whoever holds a GPU machine (CUDA toolkit, cmake, ninja, python3; none of
# our Debian packages, no network). It builds core/ and backend/ with the CUDA backend and their tests
# (-DMESHDIT_BACKEND_ONLY=ON: the rest of meshdit needs FFmpeg, MPI, ... which such a machine lacks), runs every
# backend test (each backend-parameterised suite runs on CUDA when a device is present, plus
# tests/backend/cuda_test.cpp) and writes one JSON of results:
#   $OUT/device-check.json   summary: machine, GPU, build, test counts, failures
#   $OUT/gtest.json          GoogleTest's own report
#   $OUT/build.log, $OUT/tests.log
# OUT defaults to ./device-check-out. Exit status: 0 when the build and every test pass.
#
# The packages the build needs beyond the toolkit (nlohmann-json, oneDNN and its OpenCL headers, GoogleTest)
# travel as Debian .deb files in tools/device-debs/ (git-ignored, ~8 MB), fetched on a Debian 12 machine with
#   tools/device-check.sh --fetch-debs
# and unpacked here with dpkg-deb -x into tools/device-debs/root (never into /), which CMake is pointed at.
# Packages the machine already has are found first.
#
# Without a GPU the script still builds and runs the tests (the CUDA ones skip) and says so: that is its
# CPU-side check, the one CI can run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEBS=$ROOT/tools/device-debs
PKGS=(nlohmann-json3-dev libdnnl-dev libdnnl2 ocl-icd-opencl-dev ocl-icd-libopencl1 opencl-c-headers
      opencl-clhpp-headers libgtest-dev)

if [[ "${1:-}" == "--fetch-debs" ]]; then
  mkdir -p "$DEBS"
  (cd "$DEBS" && apt-get download "${PKGS[@]}")
  du -sh "$DEBS"
  exit 0
fi

OUT=${OUT:-$ROOT/device-check-out}
mkdir -p "$OUT"
BUILD=${BUILD_DIR:-$ROOT/build-device}
JOBS=${JOBS:-$(nproc)}
START=$(date +%s)
export PATH=$PATH:/usr/local/cuda/bin

# The .deb files, unpacked into a private prefix.
PREFIX=$DEBS/root
if compgen -G "$DEBS/*.deb" >/dev/null; then
  mkdir -p "$PREFIX"
  for d in "$DEBS"/*.deb; do
    if command -v dpkg-deb >/dev/null; then
      dpkg-deb -x "$d" "$PREFIX"
    else  # a .deb is an ar archive holding data.tar.*: python reads both without dpkg
      python3 - "$d" "$PREFIX" <<'PY'
import io, sys, tarfile
data = open(sys.argv[1], 'rb').read()
assert data[:8] == b'!<arch>\n'
pos = 8
while pos < len(data):
    name = data[pos:pos + 16].decode().strip().rstrip('/')
    size = int(data[pos + 48:pos + 58].decode().strip())
    body = data[pos + 60:pos + 60 + size]
    pos += 60 + size + (size & 1)
    if name.startswith('data.tar'):
        tarfile.open(fileobj=io.BytesIO(body)).extractall(sys.argv[2])
PY
    fi
  done
fi
LIBDIR=$PREFIX/usr/lib/x86_64-linux-gnu
export LD_LIBRARY_PATH=$LIBDIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# dnnl's CMake files and the libraries' symlinks name absolute /usr paths in some packages: CMake is given the
# prefix's own folders.
CMAKE_ARGS=(-DCMAKE_PREFIX_PATH="$PREFIX/usr;$LIBDIR/cmake" -DGTest_DIR="$LIBDIR/cmake/GTest"
            -Dnlohmann_json_DIR="$PREFIX/usr/share/cmake/nlohmann_json" -Ddnnl_DIR="$LIBDIR/cmake/dnnl"
            -DOpenCL_INCLUDE_DIR="$PREFIX/usr/include" -DOpenCL_LIBRARY="$LIBDIR/libOpenCL.so.1")
[[ -e $LIBDIR/cmake/GTest ]] || CMAKE_ARGS=(-DCMAKE_PREFIX_PATH="$PREFIX/usr")
if command -v ccache >/dev/null; then
  CMAKE_ARGS+=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
fi

status=0
build_ok=false
echo "== configure and build ($JOBS jobs) into $BUILD" | tee "$OUT/build.log"
if cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMESHDIT_BACKEND_ONLY=ON -DMESHDIT_CUDA=ON \
     -DMESHDIT_BENCH=OFF "${CMAKE_ARGS[@]}" >>"$OUT/build.log" 2>&1 &&
   cmake --build "$BUILD" -j "$JOBS" >>"$OUT/build.log" 2>&1; then
  build_ok=true
else
  status=1
  tail -40 "$OUT/build.log"
fi
BUILD_S=$(( $(date +%s) - START ))

tests_rc=-1
if $build_ok; then
  echo "== backend tests"
  set +e
  "$BUILD/meshdit_backend_tests" --gtest_output="json:$OUT/gtest.json" >"$OUT/tests.log" 2>&1
  tests_rc=$?
  set -e
  tail -5 "$OUT/tests.log"
  [[ $tests_rc -eq 0 ]] || status=1
fi

GPU_LINE=$(nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader 2>/dev/null || true)
python3 - "$OUT" "$build_ok" "$tests_rc" "$BUILD_S" "$(( $(date +%s) - START ))" "$GPU_LINE" \
  "$(nvcc --version 2>/dev/null | tail -1)" "$(git rev-parse HEAD 2>/dev/null || echo unknown)" <<'PY'
import json, os, sys, platform
out, build_ok, rc, build_s, total_s, gpu, nvcc, commit = sys.argv[1:9]
res = {"commit": commit, "host": platform.node(), "cpus": os.cpu_count(), "gpu": gpu or None,
       "gpu_present": bool(gpu), "nvcc": nvcc, "build_ok": build_ok == "true", "build_s": int(build_s),
       "total_s": int(total_s), "tests_exit": int(rc)}
g = os.path.join(out, "gtest.json")
if os.path.exists(g):
    rep = json.load(open(g))
    counts = {"run": 0, "passed": 0, "failed": 0, "skipped": 0}
    failures, cuda_run = [], 0
    for suite in rep.get("testsuites", []):
        for t in suite.get("testsuite", []):
            name = suite["name"] + "." + t["name"]
            if t.get("result") == "SKIPPED" or t.get("status") == "NOTRUN":
                counts["skipped"] += 1
                continue
            counts["run"] += 1
            if t.get("failures"):
                counts["failed"] += 1
                failures.append({"test": name, "message": t["failures"][0].get("failure", "")[:2000]})
            else:
                counts["passed"] += 1
            if name.endswith("/cuda") or suite["name"].startswith("Cuda"):
                cuda_run += 1
    res.update(tests=counts, cuda_tests_run=cuda_run, failures=failures)
json.dump(res, open(os.path.join(out, "device-check.json"), "w"), indent=2)
print(json.dumps({k: v for k, v in res.items() if k != "failures"}, indent=2))
if not res["gpu_present"]:
    print("no GPU present: built, and the CUDA tests skipped (this is the CPU-side check)")
PY
exit $status
