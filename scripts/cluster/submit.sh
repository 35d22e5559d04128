#!/bin/bash
# Submit the search array and the final evaluation that waits for all of it.
#   BENCH_STORAGE=postgresql://me@db-host/bench DATASET=gi8 STUDY=gi8-main TRIALS=200 \
#       scripts/cluster/submit.sh [--array=0-15]
# Extra arguments go to the search array's sbatch (e.g. more tasks, another partition).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
search=$(sbatch --parsable --export=ALL "$@" "$here/search.sbatch")
final=$(sbatch --parsable --export=ALL --dependency=afterany:"${search%%;*}" "$here/final.sbatch")
echo "search array: job $search; final evaluation and report: job $final (runs when the array has ended)"
echo "progress from anywhere: bench status --storage \"\$BENCH_STORAGE\""
