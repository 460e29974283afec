#!/usr/bin/env bash
# One visit to the GPU machine does everything: configure and build (sm_90), the GPU tests,
# compute-sanitizer (memcheck over every CUDA test, racecheck over forward and backward), `rmsnorm
# check`, the benchmark suites, and the Python package when torch is there. Every log and
# JSON goes under OUTDIR/logs and is bundled into OUTDIR/gpu-run.tar.gz; a summary is
# printed last.
#
#   tools/gpu-run.sh OUTDIR [stage ...]
#   stages: build test check bench sanitize python (default: all of them, in that order),
#   and tune / tune_bw (not by default): the forward's / backward's register configurations
#   and strategies timed against each other, bf16, on the shapes where the planner chooses.
#   RMSNORM_COMMIT=<sha> tags the benchmark records when the tree has no .git.
set -u
out=$(realpath -m "${1:?usage: tools/gpu-run.sh OUTDIR [stage ...]}")
shift
stages=" ${*:-build test check bench sanitize python} "
logs="$out/logs"
mkdir -p "$logs"
summary="$out/summary.txt"
: >"$summary"
build=build-gpu
commit=${RMSNORM_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}

note() { echo "$*" | tee -a "$summary"; }
# run NAME CMD...: runs CMD with its output in logs/NAME.log and notes its status and time.
run() {
  local name=$1 start rc
  shift
  start=$(date +%s)
  "$@" >"$logs/$name.log" 2>&1
  rc=$?
  note "$(printf '%-26s rc=%-3s %5ss' "$name" "$rc" "$(($(date +%s) - start))")"
  return $rc
}
want() { [[ "$stages" == *" $1 "* ]]; }
# Bundles the logs so far: a run cut short by its time limit still brings back what it did.
bundle() { tar -czf "$out/gpu-run.tar.gz" -C "$out" logs 2>/dev/null; }

{
  date -u
  echo "commit $commit"
  nvidia-smi
  nvcc --version
  cmake --version
} >"$logs/env.log" 2>&1
note "rmsnorm GPU run, commit $commit, $(date -u +%Y-%m-%dT%H:%MZ)"
note "$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null)"

if want build; then
  run configure cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DRMSNORM_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90 -DRMSNORM_GIT_COMMIT="$commit"
  run build cmake --build "$build" -j 16 || { note "build failed: see logs/build.log"; tail -30 "$logs/build.log"; }
fi

bundle
if want test; then
  # The Python suite runs in the python stage, against the installed package.
  run ctest ctest --test-dir "$build" --output-on-failure -j 4 -E '^python[.]pytest$'
  grep -E "tests passed|tests failed|Skipped|Failed|\*\*\*" "$logs/ctest.log" | tail -15 | tee -a "$summary"
fi

bundle
if want check; then
  run check "$build/tools/rmsnorm" check
  tail -3 "$logs/check.log" | tee -a "$summary"
fi

bundle
if want bench; then
  for dt in ${RMSNORM_BENCH_DTYPES:-bf16 f16}; do
    run "bench_forward_$dt" "$build/tools/rmsnorm" bench --suite seed,qk,decode,wide --dtype "$dt" \
      --json "$logs/bench_forward_$dt.json" --csv "$logs/bench_forward_$dt.csv" --plot "$logs/bench_forward_$dt.svg"
    run "bench_backward_$dt" "$build/tools/rmsnorm" bench --op backward --suite train --dtype "$dt" \
      --json "$logs/bench_backward_$dt.json" --csv "$logs/bench_backward_$dt.csv" --plot "$logs/bench_backward_$dt.svg"
  done
  # What programmatic dependent launch (Params::pdl) saves: the same kernels launched plainly.
  run bench_forward_bf16_nopdl "$build/tools/rmsnorm" bench --suite seed,qk,decode --dtype bf16 --no-pdl \
    --json "$logs/bench_forward_bf16_nopdl.json"
  run bench_backward_bf16_nopdl "$build/tools/rmsnorm" bench --op backward --suite train --dtype bf16 --no-pdl \
    --json "$logs/bench_backward_bf16_nopdl.json"
  cat "$logs"/bench_*.log >>"$summary"
fi

bundle
if want tune; then
  cli="$build/tools/rmsnorm"
  wide=2048,3072,4096,5120,6144,7168,8192,12288,16384,24576,32768
  run tune_auto "$cli" bench --dtype bf16 --rows 16384 --cols "$wide" --json "$logs/tune_auto.json"
  # Each block_row configuration on the rows it holds with few idle lanes, against the
  # planner's choice above; then single rows (decode latency) per configuration.
  for c in 128x2:2048 96x4:2048,3072 128x4:3072,4096 192x4:5120,6144 256x4:6144,7168,8192 \
    512x4:12288,16384 768x4:16384,24576 1024x4:24576,32768; do
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
  run tune_seed "$cli" bench --dtype bf16 --suite seed,decode --json "$logs/tune_seed.json"
  # Decode: the kernel's own duration, to set against the per-call time in a graph.
  run tune_ncu_decode timeout 90 ncu --clock-control none -k regex:RegisterRowsImpl -c 8 \
    --metrics gpu__time_duration.sum,sm__cycles_elapsed.max,dram__bytes_read.sum \
    "$cli" bench --dtype bf16 --rows 1 --cols 4096,8192 --reps 3
  grep -hE "^ +[0-9]+ +[0-9]+ " "$logs"/tune_*.log | sort -n -k2 -k1 >"$logs/tune_table.txt"
  cat "$logs"/tune_*.log >>"$summary"
fi

bundle
if want tune_bw; then
  cli="$build/tools/rmsnorm"
  # The backward's cluster configurations (kBackwardClusterRowConfigs) on the rows that need
  # a cluster, and on 16384 elements against the planner's one-block row.
  run tune_bw_auto "$cli" bench --op backward --dtype bf16 --rows 16384 --cols 16384
  for c in 512x4 256x4; do
    for shape in 16384:16384 8192:32768 4096:65536; do
      run "tune_bw_${c}_${shape#*:}" "$cli" bench --op backward --dtype bf16 --rows "${shape%%:*}" \
        --cols "${shape#*:}" --strategy cluster_row --config "$c"
    done
  done
  # Rows beyond one block: the cluster against streaming (the planner's choice is in the bench stage).
  run tune_train_long_row "$cli" bench --op backward --dtype bf16 --suite train --strategy long_row \
    --json "$logs/tune_train_long_row.json"
  grep -hE "^ +[0-9]+ +[0-9]+ " "$logs"/tune_bw_*.log "$logs"/tune_train*.log | sort -n -k2 -k1 >"$logs/tune_bw_table.txt"
  cat "$logs"/tune_bw_*.log "$logs"/tune_train*.log >>"$summary"
fi

bundle
if want sanitize; then
  # Large-memory tests are left out: memcheck shadows every byte and runs 10-100x slower.
  run memcheck_cuda timeout 150 compute-sanitizer --tool memcheck --error-exitcode 7 \
    "$build/tests/rmsnorm_cuda_tests" --gtest_filter='-*IndexesPast*'
  run memcheck_forward timeout 150 compute-sanitizer --tool memcheck --error-exitcode 7 \
    "$build/tests/rmsnorm_tests" --gtest_filter='*Cuda*:*CUDA*:*cuda*'
  if [ -x "$build/tests/rmsnorm_backward_tests" ]; then
    run memcheck_backward timeout 150 compute-sanitizer --tool memcheck --error-exitcode 7 \
      "$build/tests/rmsnorm_backward_tests" --gtest_filter='*Cuda*:*CUDA*:*cuda*'
    run racecheck_backward timeout 240 compute-sanitizer --tool racecheck --error-exitcode 7 \
      "$build/tests/rmsnorm_backward_tests" --gtest_filter='*Cuda*:*CUDA*:*cuda*'
  fi
  run racecheck_forward timeout 240 compute-sanitizer --tool racecheck --error-exitcode 7 \
    "$build/tests/rmsnorm_cuda_tests" --gtest_filter='-*IndexesPast*'
  grep -hE "ERROR SUMMARY|RACECHECK SUMMARY" "$logs"/memcheck_*.log "$logs"/racecheck_*.log 2>/dev/null | sort | uniq -c | tee -a "$summary"
fi

bundle
if want python && python3 -c "import torch" 2>/dev/null; then
  run pip_install python3 -m pip install --no-build-isolation --no-deps -v .
  run pytest python3 -m pytest -q python/tests
  tail -3 "$logs/pytest.log" | tee -a "$summary"
  run python_bench timeout 300 env PYTHONUNBUFFERED=1 python3 -m rmsnorm.bench --out "$logs/python-bench"
  tail -40 "$logs/python_bench.log" >>"$summary"
fi

bundle
rm -rf "$logs"
echo "----- summary -----"
cat "$summary"
