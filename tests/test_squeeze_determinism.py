"""Issue 16: the same squeeze twice (two stores) gives byte-identical payload files."""

from __future__ import annotations

from pathlib import Path

from lpld_cli.squeeze import SqueezeConfig, squeeze
from lpld_cli.storage.store import Store
from tests.conftest import needs_fmnist


@needs_fmnist
def test_two_identical_squeeze_runs_give_identical_payloads(tmp_path: Path) -> None:
    # Before the fix the network's initialisation was drawn from the unseeded global RNG.
    import torch

    config = SqueezeConfig(width=8, depth=2, teacher_epochs=1, batch_size=64,
                           train_subset=600)
    made = []
    for name in ("a", "b"):
        torch.manual_seed(1234 if name == "a" else 9876)  # global RNG state must not matter
        made.append(squeeze(Store(tmp_path / name), config))
    a, b = made
    assert a.id == b.id
    files = sorted(p.relative_to(a.path) for p in a.path.rglob("*") if p.is_file()
                   and p.name != "manifest.json")
    assert {f.as_posix() for f in files} >= {"weights.safetensors", "bn_stats.safetensors"}
    for rel in files:
        assert (a.path / rel).read_bytes() == (b.path / rel).read_bytes(), rel
    assert a.metrics["top1"] == b.metrics["top1"]
