#!/usr/bin/env bash
# Set everything up (idempotent), then run the whole LPLD pipeline on Fashion-MNIST with the
# preset and draw the paper's Fig. 1 trade-off: squeeze → recover IPC10 → relabel → prune
# 10x / 40x / 100x → a student from each pool (1x, 10x, 40x, 100x) and one on hard labels →
# reports, ending in lpld-accuracy.png (top-1 against label storage).
# Every stage is cached in the store (default ./lpld-store, or $LPLD_STORE): a second run
# returns at once, an interrupted one resumes. LPLD_SKIP_SETUP=1 skips scripts/setup.sh;
# LPLD_PLOT names the plot (default lpld-accuracy.png).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${LPLD_SKIP_SETUP:-0}" = 1 ] || bash scripts/setup.sh
export LPLD_STORE=${LPLD_STORE:-$PWD/lpld-store}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
py=${LPLD_PYTHON:-.venv/bin/python}
IPC=${IPC:-10}
plot=${LPLD_PLOT:-lpld-accuracy.png}
step() { echo; echo "== lpld $*" >&2; SECONDS=0; "$py" -m lpld_cli "$@"; echo "   ($SECONDS s)" >&2; }
start=$(date +%s)

step squeeze --dataset fashion-mnist
step recover --ipc "$IPC"
step relabel --ipc "$IPC"
for ratio in 10x 40x 100x; do
  step prune --ipc "$IPC" --ratio "$ratio"
done
for ratio in 1x 10x 40x 100x; do
  step train --ipc "$IPC" --ratio "$ratio"
done
step train --ipc "$IPC" --labels hard
step report storage
step report accuracy --plot "$plot"
echo >&2
echo "store: $LPLD_STORE   plot: $plot   ($(( $(date +%s) - start )) s in all)" >&2
