#!/usr/bin/env bash
# Idempotent setup: Fashion-MNIST from Debian, a virtualenv, lpld installed into it.
# Fast the second time: every step checks before it works.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${LPLD_VENV:-.venv}
PY=${PYTHON:-python3}

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && [ -z "${LPLD_DATA:-}" ]; then
  echo "setup: installing Debian package dataset-fashion-mnist" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >&2
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating virtualenv $VENV" >&2
  "$PY" -m venv "$VENV"
fi

stamp="$VENV/.lpld-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing lpld and its dependencies (torch first; about a minute)" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  # torch 2.14.1 + torchvision 0.29.1 lie on this machine's disk (no big download);
  # pinned together because PyPI's torchvision does not import beside other torch builds.
  "$VENV/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1" >&2
  "$VENV/bin/python" -m pip install -q -e ".[dev]" >&2
  touch "$stamp"
fi
