#!/usr/bin/env bash
# One visit to the GPU machine (the H200) does everything: configure and build (sm_90), the
# GPU tests, `rmsnorm check`, compute-sanitizer (memcheck, racecheck, initcheck, synccheck
# over the GPU tests and `rmsnorm check --quick`), the benchmark suites, and the Python
# package when torch is there. The records to commit under bench/results/ are written to
# OUTDIR/results/ with their final names, <date>-<gpu>-<commit>-<what>.txt; every log goes
# to OUTDIR/logs; both are bundled into OUTDIR/gpu-run.tar.gz (one file to bring back); a
# summary is printed last.
#
#   RMSNORM_COMMIT=<sha> [RMSNORM_CMAKE_ARGS=...] [RMSNORM_CARRIED_BUILD=FILE] tools/gpu-run.sh OUTDIR [stage ...]
#   RMSNORM_IF_GPU=H200 [RMSNORM_ELSE_STAGES="..."]: the stages only where the GPU's name has
#   H200 in it, the else-stages (default none) on any other card.
#   RMSNORM_CARRIED_BUILD: a build of this commit packed by tools/gpu-pack.sh (or its parts, in
#   order, space-separated), unpacked in place of the build stage (pytree takes the pack's
#   PyTorch extension, built against the torch of the machine that packed it:
#   carried-build.txt in the pack names it).
#   stages: build test check sanitize bench python (default: all of them, in that order),
#   sanitize_cluster (not by default: memcheck, racecheck and synccheck over the cluster rows'
#   tests), cluster (not by default: the cluster rows' shapes alone, forward, residual add and
#   backward, each beside the copy; RMSNORM_CLI=path times another build's CLI, and
#   RMSNORM_CLUSTER_CONFIGS="TxI ..." the plain store's cluster configurations forced),
#   slices (not by default: the forward's cluster rows with their slices in shared memory
#   against registers, bench --slices, bf16 and f16; RMSNORM_CLI as for cluster),
#   cluster_grids (not by default: the forward's cluster rows on other grids, bench --grid,
#   RMSNORM_CLUSTER_GRIDS="K|rows ..." beside the launcher's, RMSNORM_MAX_CLUSTER=16 adds
#   256x8 in clusters of 16 blocks; RMSNORM_CLI as for cluster),
#   backward_parts (not by default: the backward's train suite whole and leaving out dw, the
#   saved rstd and both: bench --leave-out; RMSNORM_CLI as for cluster),
#   ncu_cluster (not by default: Nsight Compute's full set, clocks as they run, on one launch
#   of the forward's cluster rows at 4096 x 65536 and 2048 x 131072 and of the backward at
#   16384 x 16384, bf16),
#   readme (not by default: the README's two commands, recorded as check and ctest), pytree
#   (not by default: the Python suite and bench against the build stage's extension), fused
#   (not by default: `rmsnorm bench --op add` and `--op quant` for the five kinds of 8-bit
#   output, bf16, each beside its unfused form and the copy), and
#   decode (not by default: the decode suite, forward and residual add, bf16 and f16, as the
#   launcher chooses and with every row on one SM: bench --no-split; RMSNORM_CLI as for cluster),
#   cluster_smem (not by default: tools/explore/cluster_smem_rows.cu, the forward's cluster
#   rows with their slices in registers or shared memory, one cluster a row or looping, beside
#   the copy and the library's figures; RMSNORM_CLI as for cluster),
#   decode_floor (not by default: tools/explore/decode_floor.cu, copies of the decode
#   suite's bytes one block a row, split over blocks and over clusters, and the block row's
#   norm itself, beside the copy),
#   tune / tune_bw (not by default): the forward's / backward's register configurations
#   and strategies timed against each other, bf16, on the shapes where the planner chooses,
#   compare (not by default: this build's CLI against another commit's, both on one
#   machine: RMSNORM_COMPARE_PACK=FILE, that commit's tools/gpu-pack.sh pack, unpacked aside;
#   RMSNORM_COMPARE="ARGS;ARGS;..." the `rmsnorm bench` arguments of each table, default the
#   backward's train suite, bf16; RMSNORM_COMPARE_ROUNDS rounds, default 2, the two CLIs
#   alternating in each; the record keeps every table's rows).
#
# The machine's copy of the tree has no .git: pass the commit in RMSNORM_COMMIT, and run a
# tree with nothing uncommitted in it, so that the record names exactly the tree that ran.
# On the device tool, RMSNORM_BUNDLE_TO=$OUT brings the bundle back even from a call cut at
# its time limit (it is refreshed after every step).
# Back here: `tar -xzf gpu-run.tar.gz -C bench/results --strip-components=1 results`, then
# commit them (the README's "Recording a GPU run"; tools/gpu-record-check.sh reads them).
set -u
out=$(realpath -m "${1:?usage: tools/gpu-run.sh OUTDIR [stage ...]}")
shift
stages=" ${*:-build test check sanitize bench python} "
logs="$out/logs"
results="$out/results"
mkdir -p "$logs" "$results"
build=build-gpu
commit=${RMSNORM_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
# "NVIDIA H200" -> h200, "NVIDIA H100 80GB HBM3" -> h100.
gpu=$(echo "$gpu_name" | grep -oiE '\b[A-Z][0-9]{2,4}\b' | head -1 | tr 'A-Z' 'a-z')
gpu=${gpu:-gpu}
# RMSNORM_IF_GPU (above): on another card than the one named, the else-stages instead.
if [ -n "${RMSNORM_IF_GPU:-}" ] && [[ "$gpu_name" != *"$RMSNORM_IF_GPU"* ]]; then
  stages=" ${RMSNORM_ELSE_STAGES:-} "
  swapped="not on $RMSNORM_IF_GPU but $gpu_name: stages$stages"
fi
prefix="$results/$(date -u +%Y-%m-%d)-$gpu-$commit"
summary="$prefix-summary.txt"
: >"$summary"
cli="$build/tools/rmsnorm"
# The cluster, cluster_grids, backward_parts and ncu_cluster stages time RMSNORM_CLI when
# set: a CLI built elsewhere and carried to the machine (their records name it).
bench_cli=${RMSNORM_CLI:-$cli}

note() { echo "$*" | tee -a "$summary"; }
# run NAME CMD...: runs CMD with its output in logs/NAME.log and notes its status and time.
run() {
  local name=$1 start rc
  shift
  start=$(date +%s)
  "$@" >"$logs/$name.log" 2>&1
  rc=$?
  note "$(printf '%-28s rc=%-3s %5ss' "$name" "$rc" "$(($(date +%s) - start))")"
  bundle
  return $rc
}
want() { [[ "$stages" == *" $1 "* ]]; }
# record LOG WHAT: logs/LOG.log as the record <date>-<gpu>-<commit>-WHAT.txt, under a line
# naming the device, the commit and the time.
record() { { echo "device: $gpu_name; commit $commit; $(date -u +%Y-%m-%dT%H:%MZ)"; cat "$logs/$1.log"; } >"$prefix-$2.txt"; }
# Bundles what there is so far: a run cut short by its time limit still brings back what it did.
# RMSNORM_BUNDLE_TO=DIR (the device tool's $OUT) gets a copy after every step, since a call
# killed at its limit returns only what is already in that folder.
bundle() {
  tar -czf "$out/gpu-run.tar.gz" -C "$out" logs results 2>/dev/null
  [ -z "${RMSNORM_BUNDLE_TO:-}" ] || cp "$out/gpu-run.tar.gz" "$RMSNORM_BUNDLE_TO/" 2>/dev/null
  return 0
}

{
  date -u
  echo "commit $commit"
  nvidia-smi
  nvcc --version
  cmake --version
} >"$logs/env.log" 2>&1
note "rmsnorm GPU run, commit $commit, $(date -u +%Y-%m-%dT%H:%MZ), stages:$stages"
[ -n "${swapped:-}" ] && note "$swapped"
note "$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null)"

# unpack_carried "FILE ...": a build packed elsewhere by tools/gpu-pack.sh (whole, or its parts
# in order), in place of the build stage, once it is seen to be of this commit; ctest's files
# get this checkout's paths, and this machine's python3 and cmake.
unpack_carried() {
  local from
  # shellcheck disable=SC2086  # a pack split into parts: their names, in order
  rm -rf "$build" && cat $1 | tar -xJf - || return
  [ "$(cat "$build/carried-commit" 2>/dev/null)" = "$commit" ] ||
    { echo "the pack is a build of $(cat "$build/carried-commit" 2>/dev/null), not of $commit"; rm -rf "$build"; return 1; }
  from=$(cat "$build/carried-root")
  grep -rlF --include='*.cmake' "$from" "$build" | xargs -r sed -i "s|$from|$PWD|g"
  from=$(cat "$build/carried-python" 2>/dev/null)
  [ -z "$from" ] || grep -rlF --include='*.cmake' "$from" "$build" | xargs -r sed -i "s|$from|$(command -v python3)|g"
  from=$(cat "$build/carried-cmake" 2>/dev/null)
  [ -z "$from" ] || find "$build" -name CTestTestfile.cmake -exec sed -i "s|\"$from\"|\"$(command -v cmake)\"|g" {} +
  sed -i -E "s|include\(\"[^\"]*/GoogleTestAddTests[.]cmake\"\)|include(\"$PWD/$build/GoogleTestAddTests.cmake\")|" \
    "$build"/tests/*_include.cmake
  cat "$build/carried-build.txt"
}
if [ -n "${RMSNORM_CARRIED_BUILD:-}" ]; then
  run unpack unpack_carried "$RMSNORM_CARRIED_BUILD" || note "unpack failed: see logs/unpack.log"
  note "build: carried, $(head -1 "$build/carried-build.txt" 2>/dev/null)"
elif want build; then
  run configure cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DRMSNORM_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90 -DRMSNORM_GIT_COMMIT="$commit" ${RMSNORM_CMAKE_ARGS:-}
  run build cmake --build "$build" -j 16 || { note "build failed: see logs/build.log"; tail -30 "$logs/build.log"; }
  # Each target's start and end (ms), to see what the build's minutes go to on that machine.
  cp "$build/.ninja_log" "$logs/ninja_log.txt" 2>/dev/null
fi

# ctest runs 8 entries at once; each CPU entry's OpenMP team gets its share of the cores.
# With the default (a thread a core in every entry) the 16-core machine ran 8 x 16 threads:
# 0a2bd59's ctest took 263 s on the H200's machine, cli.bench_quant_smoke alone 260 s and
# cli.bench_add_smoke 210 s (CPU benches), 19 s and 9 s on 2 cores with 2 threads.
ctest_jobs=8
omp_threads=$(($(nproc) / ctest_jobs))
((omp_threads >= 1)) || omp_threads=1

bundle
if want test; then
  # Every ctest entry but the Python suite, which runs in the python stage against the
  # installed package, and the landing-rule check, which asks for the record this run makes.
  run ctest env OMP_NUM_THREADS="$omp_threads" ctest --test-dir "$build" --output-on-failure -j "$ctest_jobs" \
    -E '^(python[.]pytest|gpu_record[.]covers_gpu_code)$'
  record ctest ctest
  grep -E "tests passed|tests failed" "$logs/ctest.log" | tail -3 | tee -a "$summary"
fi

bundle
if want check; then
  run check "$cli" check
  record check check
  tail -1 "$logs/check.log" | tee -a "$summary"
fi

bundle
if want readme; then
  # The README's two set-up commands as a new user runs them (default architectures, the
  # PyTorch extension built in the tree when torch imports), recorded like the test and
  # check stages: the main job verbatim, then the test command with -j 8 and without the
  # landing-rule entry (it asks for the record this run makes).
  run readme_main bash -c 'cmake -S . -B build && cmake --build build -j"$(nproc)" && build/tools/rmsnorm check && build/tools/rmsnorm bench'
  tail -25 "$logs/readme_main.log" | tee -a "$summary"
  { echo "device: $gpu_name; commit $commit; $(date -u +%Y-%m-%dT%H:%MZ); the README's main job"
    awk '/^device:/ && !seen {seen = 1} seen {print} /^Correctness check/ {exit}' "$logs/readme_main.log"; } >"$prefix-check.txt"
  run readme_tests env OMP_NUM_THREADS="$omp_threads" ctest --test-dir build --output-on-failure -j "$ctest_jobs" \
    -E '^gpu_record[.]covers_gpu_code$'
  { echo "device: $gpu_name; commit $commit; $(date -u +%Y-%m-%dT%H:%MZ); the README's test command"
    cat "$logs/readme_tests.log"; } >"$prefix-ctest.txt"
  grep -E "tests passed|tests failed|python.pytest" "$logs/readme_tests.log" | tail -4 | tee -a "$summary"
fi

bundle
# sanitize NAME TOOLS TARGET...: each compute-sanitizer tool of TOOLS over each TARGET (a
# binary under the build and its arguments), every pair its own process, all side by side on
# the GPU; the record is <prefix>-NAME.txt.
sanitize() {
  local name=$1 tools=$2 start tool i
  shift 2
  local targets=("$@")
  start=$(date +%s)
  for tool in $tools; do
    for i in "${!targets[@]}"; do
      (
        echo "=== $tool: ${targets[$i]}"
        # The cluster rows' raw mbarriers (two for the row sums, two for the backward's
        # staged rows) are not counted as cuda::barrier objects: synccheck tracks none of
        # them by default and warns of an overflow; with 64 a block the forward's cluster
        # tests still overflowed it (8d9c933), so the table is as large as others use.
        extra=()
        [ "$tool" = synccheck ] || [ "$tool" = racecheck ] && extra=(--num-cuda-barriers 65536)
        # The first 300 lines (a hazard's report names both accesses; the kernels' names are
        # long) and the summaries; awk reads to the end, so the tool is never cut off.
        # shellcheck disable=SC2086
        timeout "${RMSNORM_SANITIZE_TIMEOUT:-600}" compute-sanitizer --tool "$tool" "${extra[@]}" --error-exitcode 7 \
          "$build/"${targets[$i]} 2>&1 | grep -vE '^\[ *(RUN|OK) *\]' | awk 'NR <= 300 || /SUMMARY|PASSED|FAILED/'
        echo "=== $tool: ${targets[$i]}: exit ${PIPESTATUS[0]}"
      ) >"$logs/${name}_${tool}_$i.log" 2>&1 &
    done
  done
  wait
  note "$(printf '%-28s %5ss' "$name" "$(($(date +%s) - start))")"
  {
    echo "device: $gpu_name; commit $commit; $(date -u +%Y-%m-%dT%H:%MZ)"
    echo "compute-sanitizer ($tools) (exit 0: clean; 7: errors; 124: timed out)"
    grep -hE "^=== .*exit|ERROR SUMMARY|RACECHECK SUMMARY|tests? (ran|passed)|PASSED|FAILED|Invalid|Warning|Race reported|and (Read|Write) access" "$logs/${name}"_*.log
  } >"$prefix-$name.txt"
  grep -E "exit [0-9]+$" "$prefix-$name.txt" | awk '{print $NF}' | sort | uniq -c | sed "s/^/$name runs by exit status: /" | tee -a "$summary"
  # Each run that did not exit 0, by name, so that the printed summary alone says which.
  grep -E "^=== .*exit [1-9][0-9]*$" "$prefix-$name.txt" | cut -c1-160 | sed "s/^=== /$name not clean: /" | tee -a "$summary"
}
if want sanitize; then
  # The four tools over every GPU test binary and `check --quick` (20 processes on 16 cores).
  # The test of indexing past 2^31 elements is left out: it needs 8 GB shadowed byte by byte.
  # All four no longer fit one 10-minute call (an H100, 881899e: 7 of the 20 runs past 480 s),
  # so RMSNORM_SANITIZE_TOOLS picks some, a call each ("memcheck initcheck", then
  # "racecheck synccheck"), and RMSNORM_SANITIZE_TIMEOUT bounds each run; the record is then
  # ...-sanitizers-<tools>.txt.
  tools=${RMSNORM_SANITIZE_TOOLS:-memcheck racecheck initcheck synccheck}
  name=sanitizers${RMSNORM_SANITIZE_TOOLS:+-${RMSNORM_SANITIZE_TOOLS// /-}}
  sanitize "$name" "$tools" "tests/rmsnorm_launch_tests" \
    "tests/rmsnorm_cuda_tests --gtest_filter=-*IndexesPast*" "tests/rmsnorm_tests --gtest_filter=*cuda*:*Cuda*:*CUDA*" \
    "tests/rmsnorm_backward_tests --gtest_filter=*cuda*:*Cuda*:*CUDA*" "tools/rmsnorm check --quick --device cuda"
fi
if want sanitize_cluster; then
  # memcheck, racecheck and synccheck over the tests of the cluster rows alone (forced and
  # looping over many rows, slices in registers and in shared memory, forward, residual add,
  # 8-bit outputs and backward), and of the few rows split over clusters.
  sanitize sanitizers-cluster-rows "memcheck racecheck synccheck" \
    "tests/rmsnorm_cuda_tests --gtest_filter=Cuda.ClusterRows*:Cuda.ClusterRowSlices*:Cuda.SplitRows*" \
    "tests/rmsnorm_backward_tests --gtest_filter=Backward.ForcedStrategies/cuda*" \
    "tests/rmsnorm_tests --gtest_filter=Forward.ForcedStrategies/cuda*:Fused.ResidualAddClusterRows*/cuda*:Fused.QuantForcedStrategies/cuda*"
fi

bundle
if want bench; then
  for dt in ${RMSNORM_BENCH_DTYPES:-bf16 f16}; do
    run "bench_forward_$dt" "$cli" bench --suite seed,qk,decode,wide --dtype "$dt" \
      --json "$logs/bench_forward_$dt.json" --csv "$logs/bench_forward_$dt.csv" --plot "$logs/bench_forward_$dt.svg"
    run "bench_backward_$dt" "$cli" bench --op backward --suite train --dtype "$dt" \
      --json "$logs/bench_backward_$dt.json" --csv "$logs/bench_backward_$dt.csv" --plot "$logs/bench_backward_$dt.svg"
  done
  {
    echo "device: $gpu_name; commit $commit; $(date -u +%Y-%m-%dT%H:%MZ)"
    cat "$logs"/bench_forward_*.log "$logs"/bench_backward_*.log
  } >"$prefix-bench.txt"
  cp "$logs"/bench_*.json "$results/" 2>/dev/null
  for f in "$results"/bench_*.json; do [ -e "$f" ] && mv "$f" "$prefix-${f##*/bench_}"; done
fi

# bench_shapes OP DTYPE "ROWS:COLS ..." [ARGS...]: one bench of bench_cli a shape.
bench_shapes() {
  local op=$1 dt=$2 shapes=$3 shape
  shift 3
  for shape in $shapes; do
    "$bench_cli" bench --op "$op" --dtype "$dt" --rows "${shape%%:*}" --cols "${shape#*:}" "$@" || return
  done
}

bundle
if want decode; then
  # Decode in a CUDA graph and as plain calls (the decode suite), each implementation beside
  # the copy of the same bytes: as the launcher chooses (SplitFewRows::automatic) and with
  # every row on one SM (--no-split).
  decode_benches() {
    echo "cli: $bench_cli"
    local op dt
    for op in forward add; do
      for dt in bf16 f16; do
        "$bench_cli" bench --op "$op" --dtype "$dt" --suite decode || return
        "$bench_cli" bench --op "$op" --dtype "$dt" --suite decode --no-split || return
      done
    done
  }
  run bench_decode decode_benches
  record bench_decode bench-decode
fi

bundle
if want decode_floor; then
  # Where a decode call's time goes: copies of the decode suite's bytes in the shapes the
  # kernels take (one block a row, a block barrier, a row split over plain blocks and over
  # clusters with and without their barriers), beside cudaMemcpyAsync, in CUDA graphs
  # (tools/explore/decode_floor.cu, compiled here: not part of the build).
  run decode_floor_build nvcc -O3 -std=c++17 -arch=sm_90 -o "$out/decode_floor" tools/explore/decode_floor.cu &&
    run decode_floor "$out/decode_floor"
  record decode_floor explore-decode-floor
fi

bundle
if want cluster_smem; then
  # What QuACK's data path and grid give the forward's cluster rows: tools/explore/
  # cluster_smem_rows.cu (compiled here: not part of the build), a row's slices in
  # registers or in shared memory, one cluster a row or looping, beside the copy; then the
  # library's own figures on the same shapes (RMSNORM_CLI as for cluster).
  smem_rows() {
    nvcc -O3 -std=c++17 -arch=sm_90 -Isrc -Iinclude -o "$out/cluster_smem_rows" tools/explore/cluster_smem_rows.cu || return
    "$out/cluster_smem_rows" || return
    [ -x "$bench_cli" ] || { echo "no library CLI at $bench_cli"; return 0; }
    echo "library: $bench_cli ($(cat "$(dirname "$bench_cli")/../carried-commit" 2>/dev/null || echo "$commit"))"
    bench_shapes forward bf16 "16384:32768 4096:65536 2048:131072 1024:262144" || return
    # and its shared slices forced, in its 512 x 8, in QuACK's 256 x 8 and in FlashInfer's
    # 256 x 16 (a build whose cluster table lacks one says so and goes on)
    local c
    for c in 512x8 256x8 256x16; do
      bench_shapes forward bf16 "4096:65536 2048:131072 1024:262144" --strategy cluster_row --config "$c" \
        --slices shared || echo "(--config $c --slices shared: refused by this build)"
    done
  }
  run cluster_smem smem_rows
  record cluster_smem explore-cluster-smem-rows
fi

bundle
if want cluster; then
  # The shapes of the cluster rows (65536 columns and more, 8192 x 32768 and beyond for the
  # backward), bf16 and f16, and the rows past the largest cluster's registers (524288 and
  # 1048576 columns), in a few minutes.
  cluster_benches() {
    echo "cli: $bench_cli"
    local plain="4096:65536 2048:131072 1024:262144 1024:524288" c
    bench_shapes forward bf16 "$plain 16384:65536 4096:131072 2048:262144 1024:1048576" || return
    bench_shapes forward f16 "$plain 16384:65536 4096:131072 2048:262144 1024:1048576" || return
    bench_shapes add bf16 "$plain" || return
    bench_shapes backward bf16 "16384:16384 8192:32768 4096:65536" || return
    for c in ${RMSNORM_CLUSTER_CONFIGS:-}; do
      bench_shapes forward bf16 "$plain" --strategy cluster_row --config "$c" || return
    done
  }
  run bench_cluster cluster_benches
  record bench_cluster bench-cluster-rows
fi

bundle
if want slices; then
  # The forward's cluster rows with each block's slice in shared memory or in registers
  # (bench --slices, a CLI that has it), bf16 and f16, 1024 rows of 65536 / 131072 / 262144
  # columns (2, 4 and 8 blocks a row): the planner's choice; 512 x 8 and 1024 x 4 (the
  # registers' choice from 4 blocks) in registers on the launcher's grid; 512 x 8 in shared
  # memory a cluster a row and on twice the resident clusters; 256 x 8 in shared memory a
  # cluster a row (twice the blocks; 262144 columns in two pieces: n/a).
  slice_benches() {
    echo "cli: $bench_cli"
    local dt
    for dt in bf16 f16; do
      set -- --op forward --dtype "$dt" --rows 1024 --cols 65536,131072,262144
      "$bench_cli" bench "$@" || return
      "$bench_cli" bench "$@" --strategy cluster_row --config 512x8 --slices registers || return
      "$bench_cli" bench "$@" --strategy cluster_row --config 1024x4 || return
      "$bench_cli" bench "$@" --strategy cluster_row --config 512x8 --slices shared || return
      "$bench_cli" bench "$@" --strategy cluster_row --config 512x8 --slices shared --grid 2 || return
      "$bench_cli" bench "$@" --strategy cluster_row --config 256x8 --slices shared || return
    done
  }
  run bench_slices slice_benches
  record bench_slices bench-cluster-slices
fi

bundle
if want cluster_grids; then
  # The forward's cluster rows on other grids (bench --grid, a CLI that has it): the launcher's
  # twice the resident clusters, named (2), beside RMSNORM_CLUSTER_GRIDS (default: the resident
  # clusters once, and a cluster a row as QuACK launches them), in the plain store's cluster
  # configurations (512x8 and RMSNORM_CLUSTER_CONFIGS, default 1024x4 and 256x8) and the
  # residual add's (1024x4), bf16, in about five minutes.
  grid_benches() {
    echo "cli: $bench_cli"
    local shapes="4096:65536 2048:131072 1024:262144" c g
    for c in 512x8 ${RMSNORM_CLUSTER_CONFIGS:-1024x4 256x8}; do
      for g in 2 ${RMSNORM_CLUSTER_GRIDS:-1 rows}; do
        bench_shapes forward bf16 "$shapes" --strategy cluster_row --config "$c" --grid "$g" || return
      done
    done
    for g in 2 ${RMSNORM_CLUSTER_GRIDS:-1 rows}; do
      bench_shapes add bf16 "$shapes" --strategy cluster_row --config 1024x4 --grid "$g" || return
    done
    # RMSNORM_MAX_CLUSTER=16 (a CLI with bench --max-cluster): 256 x 8 in 16 blocks a cluster
    # on 262144 columns, as QuACK takes them, where 8 blocks take two pieces each.
    if [ -n "${RMSNORM_MAX_CLUSTER:-}" ]; then
      for g in 2 ${RMSNORM_CLUSTER_GRIDS:-1 rows}; do
        bench_shapes forward bf16 "1024:262144 2048:262144" --strategy cluster_row --config 256x8 \
          --max-cluster "$RMSNORM_MAX_CLUSTER" --grid "$g" || return
      done
    fi
  }
  run bench_cluster_grids grid_benches
  record bench_cluster_grids bench-cluster-grids
fi

bundle
if want ncu_cluster; then
  # One launch each (the bench's check of the fused call comes first), the kernel named by a
  # regular expression: where the cluster rows' time goes (stalls, eligible warps, bytes).
  for spec in forward:ClusterRowImpl:4096:65536 forward:ClusterRowImpl:2048:131072 backward:BackwardRowsImpl:16384:16384; do
    IFS=: read -r op kernel rows cols <<<"$spec"
    run "ncu_${op}_${cols}" ncu --clock-control none --set full -k "regex:$kernel" -c 1 \
      "$bench_cli" bench --op "$op" --dtype bf16 --rows "$rows" --cols "$cols" --reps 1
  done
  {
    echo "device: $gpu_name; commit $commit; $(date -u +%Y-%m-%dT%H:%MZ)"
    for f in "$logs"/ncu_*.log; do
      echo "===== ${f##*/}"
      grep -vE '^(==PROF==|rmsnorm bench|device:)' "$f"
    done
  } >"$prefix-ncu-cluster-rows.txt"
fi

bundle
if want fused; then
  # The residual add (seed, wide and decode suites) and the 8-bit outputs (seed and wide):
  # static, per-row and group-128 fp8, static and per-row int8.
  fused_benches() {
    "$cli" bench --op add --suite seed,wide,decode --dtype bf16 || return
    for kind in "static fp8" "row fp8" "group fp8" "static int8" "row int8"; do
      # shellcheck disable=SC2086
      set -- $kind
      "$cli" bench --op quant --quant "$1" --qdtype "$2" --suite seed,wide --dtype bf16 || return
    done
  }
  run bench_fused fused_benches
  record bench_fused bench-fused
fi

bundle
if want tune; then
  wide=2048,3072,4096,5120,6144,7168,8192,12288,16384,24576,32768
  run tune_auto "$cli" bench --dtype bf16 --rows 16384 --cols "$wide" --json "$logs/tune_auto.json"
  # Each block_row configuration on the rows it holds with few idle lanes, against the
  # planner's choice above; then single rows (decode latency) per configuration.
  for c in 128x2:2048 96x4:2048,3072 128x4:3072,4096 192x4:5120,6144 256x4:6144,7168,8192 \
    192x8:12288 448x4:12288,14336 512x4:12288,16384 288x8:16384,18432 512x6:24576 512x8:24576,32768; do
    run "tune_${c%%:*}" "$cli" bench --dtype bf16 --rows 16384 --cols "${c#*:}" --config "${c%%:*}" \
      --json "$logs/tune_${c%%:*}.json"
  done
  for c in 128x4 256x4 512x4; do
    run "tune_decode_$c" "$cli" bench --dtype bf16 --suite decode --config "$c"
  done
  for s in long_row cluster_row; do
    run "tune_$s" "$cli" bench --dtype bf16 --rows 16384 --cols 8192,16384,32768 --strategy "$s" \
      --json "$logs/tune_$s.json"
    run "tune_wide_$s" "$cli" bench --dtype bf16 --suite wide --strategy "$s" --json "$logs/tune_wide_$s.json"
  done
  grep -hE "^ +[0-9]+ +[0-9]+ " "$logs"/tune_*.log | sort -n -k2 -k1 >"$logs/tune_table.txt"
  cat "$logs"/tune_*.log >"$prefix-tune.txt"
fi

bundle
if want tune_bw; then
  # The backward's cluster configurations (kBackwardClusterRowConfigs) on the rows that need
  # a cluster, and on 16384 elements against the planner's one-block row.
  run tune_bw_auto "$cli" bench --op backward --dtype bf16 --rows 16384 --cols 16384
  for c in 512x4 256x4 512x2; do
    for shape in 16384:16384 8192:32768 4096:65536; do
      run "tune_bw_${c}_${shape#*:}" "$cli" bench --op backward --dtype bf16 --rows "${shape%%:*}" \
        --cols "${shape#*:}" --strategy cluster_row --config "$c"
    done
  done
  run tune_train_long_row "$cli" bench --op backward --dtype bf16 --suite train --strategy long_row
  cat "$logs"/tune_bw_*.log "$logs"/tune_train*.log >"$prefix-tune-bw.txt"
fi

bundle
if want backward_parts; then
  # Where the backward's time goes (issue: the backward at 92 % of the copy): the train suite,
  # bf16, whole and leaving out dw (dx alone), the saved rstd (recomputed from x) and both,
  # each beside the copy of the same bytes (bench --leave-out, a CLI that has it).
  parts_benches() {
    echo "cli: $bench_cli"
    local lo
    for lo in "" dw rstd dw,rstd; do
      "$bench_cli" bench --op backward --dtype bf16 --suite train ${lo:+--leave-out "$lo"} || return
    done
  }
  run bench_backward_parts parts_benches
  record bench_backward_parts bench-backward-parts
fi

bundle
if want compare; then
  # Two trees side by side on one machine (a ratio between runs on different machines is
  # not one): each bench of RMSNORM_COMPARE by this build's CLI, then by the other's, for
  # RMSNORM_COMPARE_ROUNDS rounds. Time it: on an H100 the three cluster-row tables of
  # 1024 x 65536..262144 took 85 s for one round of both CLIs, the backward's train suite and
  # the decode suite 133 s; six such tables in two rounds ran past a 10-minute call.
  compare_benches() {
    local other=/tmp/rmsnorm-compare args round c table
    [ -n "${RMSNORM_COMPARE_PACK:-}" ] || { echo "compare: RMSNORM_COMPARE_PACK names no pack"; return 2; }
    rm -rf "$other" && mkdir -p "$other" && tar -xJf "$RMSNORM_COMPARE_PACK" -C "$other" || return
    echo "this build: $cli ($commit); the other: $(cat "$other/$build/carried-commit") ($RMSNORM_COMPARE_PACK)"
    for round in $(seq 1 "${RMSNORM_COMPARE_ROUNDS:-2}"); do
      while IFS= read -r args; do
        [ -n "$args" ] || continue
        for c in "$cli" "$other/$build/tools/rmsnorm"; do
          echo "== round $round: $c bench $args"
          # shellcheck disable=SC2086  # the arguments of one bench, word by word
          table=$("$c" bench $args) || { echo "$table"; return 1; }  # a failed check fails the stage
          grep -E '^ *[0-9]+ +[0-9]+ |^ +M +N ' <<<"$table"
          bundle  # a call cut at its limit still brings back the tables done (logs/compare.log)
        done
      done < <(tr ';' '\n' <<<"${RMSNORM_COMPARE:---op backward --dtype bf16 --suite train}")
    done
  }
  run compare compare_benches
  record compare compare
fi

bundle
if want pytree; then
  # The Python suite and bench against the extension the build stage made in the tree (no
  # second compile, as the python stage's pip install does). The suite's output is kept (-V);
  # a PYTHONPATH set by the caller (peers' wheels unpacked there: QuACK, Liger) is kept too.
  run pytest_tree ctest --test-dir "$build" -V -R '^python[.]pytest$'
  record pytest_tree pytest
  grep -E "passed|failed" "$logs/pytest_tree.log" | tail -2 | tee -a "$summary"
  lib=$(find "$build" -name 'librmsnorm_torch*.so' | head -1)
  run python_bench timeout "${RMSNORM_PYBENCH_TIMEOUT:-300}" env PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}" \
    RMSNORM_TORCH_LIBRARY="$lib" python3 -m rmsnorm.bench ${RMSNORM_PYBENCH_ARGS:-} --out "$logs/python-bench"
  cp "$logs/python_bench.log" "$prefix-python-bench.txt"
fi

bundle
if want python && python3 -c "import torch" 2>/dev/null; then
  run pip_install python3 -m pip install --no-build-isolation --no-deps -v . \
    -C cmake.define.CMAKE_CUDA_ARCHITECTURES=90
  run pytest python3 -m pytest -q -rs python/tests
  record pytest pytest
  tail -3 "$logs/pytest.log" | tee -a "$summary"
  run python_bench timeout 300 env PYTHONUNBUFFERED=1 python3 -m rmsnorm.bench --out "$logs/python-bench"
  cp "$logs/python_bench.log" "$prefix-python-bench.txt"
fi

bundle
echo "----- summary -----"
cat "$summary"
bundle
