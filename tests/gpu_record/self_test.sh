#!/usr/bin/env bash
# A test of tools/gpu-record-check.sh: small repositories with made-up histories and
# records, and what the check must say about each. Shows it failing where the landing rule
# is broken, so that the check cannot pass vacuously.
set -u
check=$(cd "$(dirname "$0")/../.." && pwd)/tools/gpu-record-check.sh
if ! command -v git >/dev/null; then
  echo "SKIPPED: git is not installed"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0
expect() {  # expect WANT_RC WANT_WORD DESCRIPTION
  local out rc
  out=$("$check" "$repo" 2>&1)
  rc=$?
  if [ "$rc" -ne "$1" ] || ! grep -q "$2" <<<"$out"; then
    echo "FAIL: $3: expected rc $1 and '$2', got rc $rc:"
    sed 's/^/    /' <<<"$out"
    failures=$((failures + 1))
  else
    echo "ok: $3"
  fi
}
commit() { git -C "$repo" add -A && git -C "$repo" -c user.name=t -c user.email=t@t commit -qm "$1"; }
short() { git -C "$repo" rev-parse --short HEAD; }
record() {  # record COMMIT CHECK_WORD [ctest]
  mkdir -p "$repo/bench/results"
  echo "Correctness check $2 (1 cases)" >"$repo/bench/results/2026-12-01-h200-$1-check.txt"
  [ "${3:-}" = ctest ] && echo "100% tests passed, 0 tests failed out of 9" >"$repo/bench/results/2026-12-01-h200-$1-ctest.txt"
  commit "results of $1"
}

repo=$work/plain
mkdir -p "$repo"
expect 0 "SKIPPED" "no git history: skipped with the reason"

repo=$work/repo
mkdir -p "$repo/src/cuda" && git -C "$repo" init -q
echo a >"$repo/README.md" && commit "docs only"
expect 0 "PASSED" "no GPU code yet"
echo k1 >"$repo/src/cuda/kernel.cu" && commit "kernel"
a=$(short)
expect 1 "FAILED" "GPU code changed and nothing recorded"
record "$a" PASSED ctest
expect 0 "PASSED" "the recorded run covers the kernel"
echo k2 >"$repo/src/cuda/kernel.cu" && commit "kernel changed after the record"
b=$(short)
expect 1 "older than" "a kernel change after the newest record fails (the landing rule)"
echo planner >"$repo/README.md" && commit "docs after the kernel change"
expect 1 "older than" "still failing after unrelated commits"
record "$b" FAILED ctest
expect 1 "does not say 'Correctness check PASSED'" "a recorded check that FAILED"
record "$b" PASSED
rm -f "$repo/bench/results/"*"-$b-ctest.txt" && commit "no ctest summary"
expect 1 "no ctest summary" "a check without its ctest summary"
record "$b" PASSED ctest
expect 0 "PASSED" "a passing record of the newest kernel"
echo k3 >"$repo/src/cuda/kernel.cu" && commit "a kernel landed without a run"
expect 1 "older than" "an unrecorded kernel change"
echo k2 >"$repo/src/cuda/kernel.cu" && commit "reverted to the recorded kernel"
expect 0 "file for file" "a revert to GPU code a passing run had is covered by that run"
echo k1 >"$repo/src/cuda/kernel.cu" && commit "back to the first kernel"
expect 0 "file for file" "the first record covers its own kernel again"
echo k3 >"$repo/src/cuda/kernel.cu" && commit "the unrecorded kernel again"
expect 1 "older than" "GPU code no passing run had is not covered"
mkdir -p "$repo/cmake" && echo flags >"$repo/cmake/cuda.cmake" && commit "CUDA build flags"
expect 1 "older than" "a change of the CUDA build flags needs a GPU run too"

[ "$failures" -eq 0 ] && echo "all cases passed" || echo "$failures case(s) failed"
exit $((failures > 0))
