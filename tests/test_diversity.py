"""`lpld report diversity`: Eq. 4 cosine, Eq. 5 MMD², the grid, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from lpld_cli.cli import app
from lpld_cli.recover import RecoverConfig, recover
from lpld_cli.reports.diversity import median_bandwidth, mmd2, within_class_cosine
from lpld_cli.storage.store import Store
from tests.conftest import needs_fmnist


def test_within_class_cosine_by_hand() -> None:
    feats = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0],  # class 0: all parallel
                          [1.0, 0.0], [0.0, 5.0]])  # class 1: orthogonal pair
    labels = torch.tensor([0, 0, 0, 1, 1])
    mean, std = within_class_cosine(feats, labels)
    assert mean == pytest.approx(0.5) and std == pytest.approx(0.5)
    # a class of one image has no pairs: skipped
    mean, _ = within_class_cosine(feats[:4], labels[:4])
    assert mean == pytest.approx(1.0)


def test_mmd2_matches_the_definition() -> None:
    g = torch.Generator().manual_seed(0)
    real = torch.randn(30, 5, generator=g)
    near = torch.randn(20, 5, generator=g)
    far = near + 3.0
    h = median_bandwidth(real)
    d2 = [float(((a - b) ** 2).sum()) for i, a in enumerate(real) for j, b in enumerate(real)
          if i != j]
    assert h == pytest.approx(sorted(d2)[len(d2) // 2 - 1], rel=1e-6) or h == pytest.approx(
        sorted(d2)[len(d2) // 2], rel=1e-6)

    def k(a, b):
        return sum(math.exp(-float(((x - y) ** 2).sum()) / h) for x in a for y in b) / (
            len(a) * len(b))

    brute = k(real, real) + k(near, near) - 2 * k(real, near)
    assert mmd2(real, near, h) == pytest.approx(brute, rel=1e-9)
    assert mmd2(real, real, h) == pytest.approx(0.0, abs=1e-12)
    assert 0 < mmd2(real, near, h) < mmd2(real, far, h)


def _cli(store: Store, *args: str):
    return CliRunner().invoke(app, ["report", "diversity", "--store", str(store.root), *args])


@needs_fmnist
def test_report_rows_grid_and_real_beats_noise(store_with_teacher: Store,
                                               tmp_path: Path) -> None:
    store = store_with_teacher
    teacher = store.newest("teacher")
    noise = recover(store, RecoverConfig(ipc=4, iterations=2), teacher)
    real = recover(store, RecoverConfig(ipc=4, method="real"), teacher)
    grid = tmp_path / "grid.png"
    result = _cli(store, "--json", "--real-per-class", "20", "--grid", str(grid))
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["report"] == "diversity"
    rows = {row["method"]: row for row in payload["rows"]}
    assert set(rows) == {"real-sample", "lpld", "real"}
    assert rows["lpld"]["artifact"] == noise.id and rows["real"]["artifact"] == real.id
    assert rows["real-sample"]["images"] == 200 and rows["lpld"]["images"] == 40
    for row in payload["rows"]:
        assert -1 <= row["cosine"] <= 1 and row["bandwidth"] > 0
    # 2 iterations leave near-noise: real images sit much closer to the real distribution
    assert 0 <= rows["real"]["mmd2"] < rows["lpld"]["mmd2"]
    with Image.open(grid) as img:
        assert img.size[0] > 300 and img.size[1] > 300
    # one set only, human table
    one = _cli(store, "--from", real.id[:12], "--real-per-class", "5")
    assert one.exit_code == 0, one.stderr
    assert real.id[:12] in one.stdout and noise.id[:12] not in one.stdout
    assert "MMD²" in one.stdout


def test_report_errors(store_with_teacher: Store, tmp_path: Path) -> None:
    empty = _cli(Store(tmp_path / "empty"))
    assert empty.exit_code == 2 and "lpld recover" in empty.stderr
    teacher = store_with_teacher.newest("teacher")
    wrong = _cli(store_with_teacher, "--from", teacher.id[:12])
    assert wrong.exit_code == 2
    assert f"{teacher.short} is a teacher, not a images" in wrong.stderr
