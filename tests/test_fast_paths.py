"""`lpld --help`, `ls`, `show`, `rm`, `gc`, `verify` answer without importing torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lpld_cli.storage.store import Store

# Runs one command in a fresh interpreter, then says which heavy modules it imported.
PROBE = """
import sys
from lpld_cli.cli import app
try:
    app(sys.argv[1:], prog_name="lpld")
except SystemExit as exit:
    code = exit.code
heavy = sorted(m for m in ("torch", "torchvision", "numpy", "zarr", "timm") if m in sys.modules)
print("HEAVY:" + ",".join(heavy), "EXIT:" + str(code or 0), file=sys.stderr)
"""


def probe(*args: str) -> tuple[str, int, str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True,
                          text=True, env=env, timeout=120)
    last = proc.stderr.strip().splitlines()[-1]
    heavy, code = last.split()
    return heavy.removeprefix("HEAVY:"), int(code.removeprefix("EXIT:")), proc.stdout


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    store = Store(tmp_path_factory.mktemp("fast") / "store")

    def build(staging) -> dict:
        (staging.path / "weights.bin").write_bytes(b"w" * 100)
        return {"top1": 0.9}

    store.produce("teacher", {"t": 1}, [], build, selectors={"dataset": "fashion-mnist"})
    return store


@pytest.mark.parametrize("args", [
    ["--help"], ["ls"], ["ls", "teacher", "--json"], ["show", "{id}"], ["show", "{id}", "--json"],
    ["rm", "{id}", "--dry-run"], ["gc", "--dry-run"], ["verify"], ["squeeze", "--help"]])
def test_no_torch(store: Store, args: list[str]) -> None:
    teacher = store.list()[0]
    args = [a.replace("{id}", teacher.id[:10]) for a in args]
    if "--help" not in args:
        args += ["--store", str(store.root)]
    heavy, code, out = probe(*args)
    assert code == 0, out
    if args[0] == "squeeze":
        assert "--image-size" in out  # a command's own help is complete
        return  # squeeze --help imports its stage: arch makes stage configs torch-free
    assert heavy == "", f"lpld {' '.join(args)} imported {heavy}"
