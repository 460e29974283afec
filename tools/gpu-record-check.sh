#!/usr/bin/env bash
# The landing rule for GPU code, as a test: the newest GPU run recorded under bench/results/
# must have passed `rmsnorm check` and its GPU tests, on a tree that contains the last
# commit that changed GPU code (the CUDA backend, the planner, the configuration tables and
# the CUDA build flags). Kernel changes that only compiled fail here.
#
#   tools/gpu-record-check.sh [REPO]        (default: the repository this script is in)
#
# Records are the files tools/gpu-run.sh writes, committed under bench/results/:
#   <date>-<gpu>-<commit>-check.txt    the `rmsnorm check` output
#   <date>-<gpu>-<commit>-ctest.txt    the ctest summary
# "Newest" is the recorded commit closest to HEAD in its history. Exit 0: covered; 1: not
# covered (the reason is printed); 0 with "SKIPPED: ..." where there is no git history.
set -u
repo=${1:-$(cd "$(dirname "$0")/.." && pwd)}
cd "$repo" || { echo "FAILED: no such directory: $repo"; exit 1; }

# What counts as GPU code (kept in step with docs/ and the README's "Recording a GPU run").
gpu_paths=(src/cuda src/plan.cpp src/kernel_configs.h src/CMakeLists.txt cmake/cuda.cmake)

if ! git rev-parse --verify -q HEAD >/dev/null 2>&1; then
  echo "SKIPPED: $repo has no git history, so the last change to GPU code cannot be found"
  exit 0
fi
if [ "$(git rev-parse --is-shallow-repository 2>/dev/null)" = true ]; then
  echo "SKIPPED: $repo is a shallow clone: the history that says when GPU code last changed is cut"
  exit 0
fi

last=$(git log -1 --format=%H -- "${gpu_paths[@]}")
if [ -z "$last" ]; then
  echo "PASSED: no commit touches GPU code (${gpu_paths[*]})"
  exit 0
fi

# Every recorded check whose commit is in HEAD's history, closest to HEAD first.
best="" best_dist=""
for f in bench/results/*-check.txt; do
  [ -e "$f" ] || continue
  name=$(basename "$f")
  commit=$(echo "$name" | sed -nE 's/^[0-9]{4}-[0-9]{2}-[0-9]{2}-[a-z0-9]+-([0-9a-f]{7,40})-check\.txt$/\1/p')
  [ -n "$commit" ] || continue
  full=$(git rev-parse -q --verify "$commit^{commit}" 2>/dev/null) || continue
  git merge-base --is-ancestor "$full" HEAD 2>/dev/null || continue
  dist=$(git rev-list --count "$full..HEAD")
  if [ -z "$best" ] || [ "$dist" -lt "$best_dist" ]; then
    best=$f best_dist=$dist best_commit=$full
  fi
done

short_last=$(git rev-parse --short "$last")
if [ -z "$best" ]; then
  echo "FAILED: GPU code last changed in $short_last ($(git log -1 --format=%s "$last" | cut -c1-80)),"
  echo "and no recorded GPU check (bench/results/*-<commit>-check.txt) ran a commit of this history."
  echo "Record one: tools/gpu-run.sh on the GPU machine (see the README, 'Recording a GPU run')."
  exit 1
fi
# passed FILE: the recorded check FILE says PASSED and its ctest summary says 100 %.
passed() {
  local ctest=${1%-check.txt}-ctest.txt
  grep -q 'Correctness check PASSED' "$1" && [ -f "$ctest" ] && grep -qE '(^|[^0-9])100% tests passed' "$ctest"
}
# A commit that puts GPU code back as a recorded run had it (a revert of an unverified
# landing) is covered by that run: the rule is about the tree that ran, and HEAD's GPU code
# is that tree's, file for file.
if ! git merge-base --is-ancestor "$last" "$best_commit"; then
  for f in bench/results/*-check.txt; do
    commit=$(basename "$f" | sed -nE 's/^[0-9]{4}-[0-9]{2}-[0-9]{2}-[a-z0-9]+-([0-9a-f]{7,40})-check\.txt$/\1/p')
    [ -n "$commit" ] || continue
    full=$(git rev-parse -q --verify "$commit^{commit}" 2>/dev/null) || continue
    git merge-base --is-ancestor "$full" HEAD 2>/dev/null || continue
    if git diff --quiet "$full" HEAD -- "${gpu_paths[@]}" && passed "$f"; then
      echo "recorded GPU check of the same GPU code: $f (commit $(git rev-parse --short "$full"))"
      echo "PASSED: HEAD's GPU code (last changed in $short_last) is $(git rev-parse --short "$full")'s, file for file"
      exit 0
    fi
  done
fi
echo "newest recorded GPU check: $best (commit $(git rev-parse --short "$best_commit"))"
status=0
if ! git merge-base --is-ancestor "$last" "$best_commit"; then
  echo "FAILED: it ran a tree older than $short_last, the last change to GPU code"
  echo "  ($(git log -1 --format=%s "$last" | cut -c1-100))"
  status=1
fi
if ! grep -q 'Correctness check PASSED' "$best"; then
  echo "FAILED: $best does not say 'Correctness check PASSED'"
  status=1
fi
ctest_file=${best%-check.txt}-ctest.txt
if [ ! -f "$ctest_file" ]; then
  echo "FAILED: no ctest summary $ctest_file beside it"
  status=1
elif ! grep -qE '(^|[^0-9])100% tests passed' "$ctest_file"; then
  echo "FAILED: $ctest_file does not say '100% tests passed'"
  status=1
fi
[ $status -eq 0 ] && echo "PASSED: the GPU check and tests of $(git rev-parse --short "$best_commit") cover $short_last"
exit $status
