#!/usr/bin/env bash
# Instructions the mesh executes per no-op task, counted by valgrind, for
# one or more builds, alternately:
#
#     scripts/bench-instructions.sh [--trials N] BIN [BIN ...]
#
# Time-based figures (tasks/s, CPU per task) move by 10-30% between runs on
# a shared VM; an instruction count moves by a few percent, so it can show
# a change of 5% that `bench-compare.py` cannot. It counts work, not time:
# cache misses, lock waits and system calls are not in it, so a change is
# judged by both. Each trial runs `devcycle bench` twice under
# `valgrind --tool=cachegrind` (bursts of 2,000 and 6,000 tasks); the
# difference over 4,000 tasks leaves out start-up and warm-up.
set -euo pipefail

trials=3
if [[ "${1:-}" == "--trials" ]]; then
    trials=$2
    shift 2
fi
if [[ $# -eq 0 ]]; then
    echo "usage: $0 [--trials N] BIN [BIN ...]" >&2
    exit 2
fi
if ! command -v valgrind >/dev/null; then
    echo "valgrind is not installed (Debian: apt-get install valgrind)" >&2
    exit 1
fi

# The mesh's instruction count for one bench: the process that ran most.
mesh_instructions() {
    local bin=$1 burst=$2 dir
    dir=$(mktemp -d)
    if ! valgrind --tool=cachegrind --cache-sim=no --trace-children=yes \
        --cachegrind-out-file="$dir/cg.%p" \
        "$bin" bench --burst "$burst" --sequential 200 --json >"$dir/out.json" 2>"$dir/err"; then
        echo "bench failed under valgrind: $bin (see $dir/err)" >&2
        exit 1
    fi
    grep 'I *refs:' "$dir/err" | awk '{gsub(",", "", $NF); print $NF}' | sort -n | tail -1
    rm -rf "$dir"
}

declare -A per_task
for ((t = 1; t <= trials; t++)); do
    for bin in "$@"; do
        small=$(mesh_instructions "$bin" 2000)
        large=$(mesh_instructions "$bin" 6000)
        n=$(((large - small) / 4000))
        per_task[$bin]="${per_task[$bin]:-} $n"
        echo "trial $t $bin: $n instructions per task"
    done
done
echo "| build | instructions per task: median (all trials) |"
echo "|---|---|"
for bin in "$@"; do
    read -ra xs <<<"${per_task[$bin]}"
    median=$(printf '%s\n' "${xs[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    echo "| $bin | $median (${xs[*]}) |"
done
