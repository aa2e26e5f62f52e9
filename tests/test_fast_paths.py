"""`lpld --help`, `ls`, `show`, `rm`, `gc`, `verify` answer without importing torch."""

from __future__ import annotations

import json
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
    ["rm", "{id}", "--dry-run"], ["gc", "--dry-run"], ["verify"],
    *[[*c.split(), "--help"] for c in ("squeeze", "recover", "relabel", "prune", "train", "ls",
                                       "show", "export", "report", "report storage",
                                       "report accuracy", "report diversity", "report lineage")]])
def test_no_torch(store: Store, args: list[str]) -> None:
    teacher = store.list()[0]
    args = [a.replace("{id}", teacher.id[:10]) for a in args]
    command_help = args[-1] == "--help" and args[:-1] not in ([], ["report"])
    if "--help" not in args:
        args += ["--store", str(store.root)]
    heavy, code, out = probe(*args)
    assert code == 0, out
    if command_help:
        assert "--store" in out  # a command's own help, complete
    assert heavy == "", f"lpld {' '.join(args)} imported {heavy}"


def test_request_index_is_checked(store: Store) -> None:
    from lpld_cli.storage.requests import answered, remember, request_key

    teacher = store.list()[0]
    key = request_key("squeeze", {"width": 8, "seed": 0}, [])
    assert key != request_key("squeeze", {"width": 16, "seed": 0}, [])
    assert key != request_key("squeeze", {"width": 8, "seed": 0}, ["a" * 64])
    # another --device, or another set of GPUs in view: another request
    assert key != request_key("squeeze", {"width": 8, "seed": 0}, [], "cpu")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CUDA_VISIBLE_DEVICES", "7,3")
        assert key != request_key("squeeze", {"width": 8, "seed": 0}, [])
    assert answered(store, key) is None
    remember(store, key, teacher)
    hit = answered(store, key)
    assert hit is not None and hit.id == teacher.id and hit.cached
    weights = teacher.path / "weights.bin"
    weights.chmod(0o644)
    weights.write_bytes(b"w" * 99)  # a damaged artifact is never an answer
    assert answered(store, key) is None
    weights.write_bytes(b"w" * 100)


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="Fashion-MNIST not installed")
def test_cached_stages_answer_without_torch(tmp_path: Path) -> None:
    """A tiny real pipeline through the CLI, then each stage again in a fresh interpreter."""
    from typer.testing import CliRunner

    from lpld_cli.cli import app

    root = ["--store", str(tmp_path / "store")]
    steps = [["squeeze", "--train-subset", "300", "--teacher-epochs", "1", "--width", "8"],
             ["recover", "--ipc", "1", "--iterations", "2"],
             ["relabel", "--ipc", "1", "--epochs", "2", "--batch-size", "10"],
             ["prune", "--ipc", "1", "--ratio", "2x"],
             ["train", "--ipc", "1", "--epochs", "1", "--eval-every", "0"]]
    runner = CliRunner()
    made = {}
    for step in steps:
        result = runner.invoke(app, [*step, *root, "--json"])
        assert result.exit_code == 0, result.output
        made[step[0]] = json.loads(result.stdout)["artifact"]["id"]
    for step in steps:
        heavy, code, out = probe(*step, *root, "--json")
        assert code == 0 and heavy == "", (step, heavy)
        answer = json.loads(out)
        assert answer["artifact"]["id"] == made[step[0]] and answer["artifact"]["cached"]
    # --force never takes the shortcut
    heavy, code, _ = probe(*steps[0], *root, "--force")
    assert code == 0 and "torch" in heavy
