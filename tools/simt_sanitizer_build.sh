# Sourced by tools/simt_sanitized_tests.sh and tools/simt_tsan_check.sh: fastar._simt built with one sanitizer option
# in its own build dir, build/DIR (compiled through ccache); the regular build is untouched. Sets ROOT, PY (env
# PYTHON, default .venv/bin/python), BUILD, SO (the built module) and start; MAX_JOBS build jobs, default 2.
#   source tools/simt_sanitizer_build.sh DIR CMAKE_OPTION NAME     (NAME: the caller, for its messages)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
BUILD=$ROOT/build/$1
start=$SECONDS
source "$ROOT/scripts/ccache_env.sh"

mkdir -p "$BUILD"
cmake -S "$ROOT" -B "$BUILD" -G Ninja -DPython_EXECUTABLE="$PY" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DFASTAR_CUDA=off -DFASTAR_SIMT=ON "-D$2=ON" -DFASTAR_OUTPUT_DIR="$BUILD/fastar" \
  ${CMAKE_CXX_COMPILER_LAUNCHER:+-DCMAKE_CXX_COMPILER_LAUNCHER=$CMAKE_CXX_COMPILER_LAUNCHER} > "$BUILD.log"
cmake --build "$BUILD" --target _simt -j "${MAX_JOBS:-2}" >> "$BUILD.log"
SO=$(ls "$BUILD"/fastar/_simt*.so)
echo "$3: built $SO in $((SECONDS - start)) s"
