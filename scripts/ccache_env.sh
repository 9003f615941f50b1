# Sourced by the build scripts (scripts/setup.sh, tools/simt_sanitized_tests.sh, tools/cuda_build_check.sh): every
# C++ and CUDA compile goes through ccache, cache under ~/.cache/ccache (outside the clone), so CI in a fresh clone
# on the machine a session just built on recompiles nothing. Installs Debian's ccache when missing (root, apt-get).
# Expects ROOT (the repository root).
if ! command -v ccache > /dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
    echo "ccache: installing Debian's ccache"
    (apt-get install -y -q ccache || { apt-get update -q && apt-get install -y -q ccache; }) > /dev/null
  else
    echo "ccache: not installed and cannot install it here (needs root and apt-get): builds are not cached" >&2
  fi
fi
if command -v ccache > /dev/null; then
  # CMake reads these when it configures a build dir; CUDA compiles (nvcc) are cached too.
  export CMAKE_CXX_COMPILER_LAUNCHER=ccache CMAKE_CUDA_COMPILER_LAUNCHER=ccache
  export CCACHE_DIR=${CCACHE_DIR:-$HOME/.cache/ccache}
  # Paths inside the clone hash as relative ones and the build dir is left out of the hash: another clone's
  # objects are hits. (A BASEDIR above the clone, e.g. /work, would leave /tmp/<clone> paths absolute.)
  export CCACHE_BASEDIR=$ROOT CCACHE_NOHASHDIR=1
fi
