#!/usr/bin/env bash
# Set everything up (idempotent), then run the whole LPLD pipeline on Fashion-MNIST with the
# preset: squeeze → recover IPC10 → relabel → prune 40x → train (40x) → reports.
# Every stage is cached in the store (default ./lpld-store, or $LPLD_STORE): a second run
# returns at once, an interrupted one resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export LPLD_STORE=${LPLD_STORE:-$PWD/lpld-store}
lpld=.venv/bin/lpld
IPC=${IPC:-10}
step() { echo; echo "== lpld $*" >&2; SECONDS=0; "$lpld" "$@"; echo "   ($SECONDS s)" >&2; }

step squeeze --dataset fashion-mnist
step recover --ipc "$IPC"
step relabel --ipc "$IPC"
step prune --ipc "$IPC" --ratio 40x
step train --ipc "$IPC" --ratio 40x
step report storage
step report accuracy --plot lpld-accuracy.png
echo >&2
echo "store: $LPLD_STORE   plot: lpld-accuracy.png" >&2
