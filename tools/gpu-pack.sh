#!/usr/bin/env bash
# Builds the committed tree here for the GPU machine (sm_90 code only, shared libraries, the
# PyTorch extension where this machine's torch has CUDA) and packs what its tests, `rmsnorm
# check` and the benchmarks need, so that a visit to the machine spends its minutes running
# rather than compiling (the CUDA build takes about 6 of the visit's 30). tools/gpu-run.sh
# unpacks it in place of its build stage (RMSNORM_CARRIED_BUILD=FILE), after checking that
# it names the commit it is told.
#
#   tools/gpu-pack.sh [OUTFILE]      (default: build-carry/rmsnorm-<commit>-sm90-build.tar.xz;
#                                     over 54 MiB: OUTFILE.part-00, -01, ...)
#
# Then carry OUTFILE to the machine (the device tool's `carry`; it counts towards the tree's
# 64 MiB) and run there, from the same commit:
#   RMSNORM_CARRIED_BUILD=OUTFILE RMSNORM_COMMIT=<commit> tools/gpu-run.sh OUT test check ...
#
# The build is configured as gpu-run.sh's build stage configures it, plus shared libraries
# (one copy of the kernels for every test binary), run paths relative to each binary
# ($ORIGIN), so the build folder may move, and sm_90 machine code alone in uncompressed
# fat binaries: the PTX that "90" adds is only for GPUs newer than the H200, which runs the
# same sm_90 code either way, and xz packs machine code 3-4 times smaller than nvcc's own
# compression leaves it (the bf16 plain unit: 229 KB against 775 KB). With the PTX and
# nvcc's compression, tree af7b0ea packed to 85 MiB; too much for one call. A pack over
# the limit all the same is split into parts to carry in successive calls of a warm
# machine (the first ones stashed outside the checkout), joined by gpu-run.sh.
# ctest's files name this checkout's paths and this CMake's GoogleTest discovery script: the
# pack keeps the script and the root they name, and gpu-run.sh rewrites both where it
# unpacks. The test lists are discovered there, on the GPU (PRE_TEST), not here, where the
# CUDA tests would not be the same.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -z "$(git status --porcelain --untracked-files=no)" ] ||
  { echo "gpu-pack.sh: commit the tree first: the pack must be exactly one commit" >&2; exit 1; }
commit=$(git rev-parse --short HEAD)
out=$(realpath -m "${1:-build-carry/rmsnorm-$commit-sm90-build.tar.xz}")
build=build-gpu
# The GoogleTest discovery script of this CMake, which the generated test files include.
discover=$(cmake --system-information 2>/dev/null | sed -nE 's/^CMAKE_ROOT "(.*)"$/\1/p')/Modules/GoogleTestAddTests.cmake
[ -f "$discover" ] || { echo "gpu-pack.sh: no GoogleTestAddTests.cmake at $discover" >&2; exit 1; }

# The PyTorch extension (for gpu-run.sh's pytree stage) where torch here has CUDA: it links
# torch's libraries by name, which the machine's `import torch` has loaded, so it serves a
# torch of the same version there (the record names both).
python=OFF
python3 -c "import torch, pytest; assert torch.version.cuda" 2>/dev/null && python=ON

cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DRMSNORM_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90-real \
  -DCMAKE_CUDA_FLAGS=-Xfatbin=-compress=false -DRMSNORM_GIT_COMMIT="$commit" -DBUILD_SHARED_LIBS=ON \
  -DCMAKE_BUILD_RPATH_USE_ORIGIN=ON -DRMSNORM_BUILD_PYTHON=$python
cmake --build "$build" -j "$(nproc)"

# What gpu-run.sh reads back: the commit, the paths to rewrite, the discovery script.
echo "$commit" >"$build/carried-commit"
echo "$PWD" >"$build/carried-root"
# The interpreter the Python suite's ctest entry names, rewritten there as the machine's python3.
sed -nE 's/^_?Python_EXECUTABLE:[A-Z]+=(.*)$/\1/p' "$build/CMakeCache.txt" | head -1 >"$build/carried-python"
# The cmake that ctest's package test runs, rewritten there as the machine's cmake.
sed -nE 's/^CMAKE_COMMAND:INTERNAL=(.*)$/\1/p' "$build/CMakeCache.txt" | head -1 >"$build/carried-cmake"
cp "$discover" "$build/GoogleTestAddTests.cmake"
{
  echo "built $(date -u +%Y-%m-%dT%H:%MZ) on $(uname -n) ($(. /etc/os-release && echo "$PRETTY_NAME"))"
  nvcc --version | tail -2
  c++ --version | head -1
  cmake --version | head -1
  echo "CUDA: sm_90 machine code, uncompressed fat binaries (90-real, -Xfatbin=-compress=false)"
  [ "$python" = OFF ] || python3 -c "import sys, torch; print('PyTorch extension: torch', torch.__version__, 'python', sys.version.split()[0])"
} >"$build/carried-build.txt"

mkdir -p "$(dirname "$out")"
# Everything but the objects and ninja's state: the binaries, the shared libraries, ctest's
# files. XZ_OPT: every core, and the default level (level 9 takes minutes for a few MB less).
# A test list discovered here (a ctest run in this folder) is left out: it is the GPU's to make.
# package-test/ is what a local ctest installed (another copy of the library: twice the
# pack); the package test installs its own there.
XZ_OPT="-T0" tar -cJf "$out" --exclude='*.o' --exclude='*.o.d' --exclude='.ninja_*' --exclude='*.ninja' \
  --exclude='CMakeFiles/*.dir' --exclude='*_tests.cmake' --exclude="$build/package-test" "$build"
size=$(stat -c %s "$out")
echo "packed $build of $commit into $out: $((size / 1048576)) MiB"
# The device tool carries at most 64 MiB with the tree (about 8 MiB tracked).
if [ "$size" -ge $((54 * 1048576)) ]; then
  split -b 50M -d "$out" "$out.part-"
  rm "$out"
  echo "over 54 MiB: split into $(ls "$out".part-* | wc -l) parts, one a call on a warm machine:"
  ls "$out".part-*
  echo "stash each part but the last outside the checkout (cp PART /root/carried/), then, with the last,"
  echo "RMSNORM_CARRIED_BUILD=\"/root/carried/<parts> <last part>\" (in order) tools/gpu-run.sh ..."
fi
