#!/usr/bin/env bash
# Set everything up (idempotent), then run the test suite. Extra arguments go to pytest,
# e.g. `bash scripts/test.sh -m slow` for the end-to-end runs on real Fashion-MNIST.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check lpld_cli tests benchmarks
.venv/bin/python -m pytest "$@"
