"""The student's row split under torchrun (models/row_split.py), in one process: the
slices, the pixels of a slice, the identity's world size, the pass-through on one rank.
The multi-process equality with a one-process reference is in test_dist.py (mark dist)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lpld_cli import dist
from lpld_cli.data import augment
from lpld_cli.errors import ConfigError
from lpld_cli.models.row_split import RowSplit, check_sync_bn, slices
from lpld_cli.train import TrainConfig


def test_slices_are_contiguous_and_the_first_ones_a_slot_larger() -> None:
    assert [s.tolist() for s in slices(19, 2)] == [list(range(10)), list(range(10, 19))]
    assert [s.tolist() for s in slices(10, 3)] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert [s.tolist() for s in slices(1, 2)] == [[0], []]  # rank 0 always has a slot


def test_a_slices_pixels_are_those_slots_of_the_whole_row() -> None:
    """v2 replay of a subset (with CutMix partners outside it) equals the whole row's
    replay at those slots, bit for bit: what each rank feeds the student."""
    pixels = torch.randint(0, 256, (12, 1, 28, 28), dtype=torch.uint8)
    bank = augment.ImageBank(pixels, [0.5], [0.25])
    row = augment.draw_row(torch.tensor([3, 0, 7, 11, 5, 2, 9, 1, 4, -1]), 28, "cutmix",
                           torch.Generator().manual_seed(4))
    assert row.mix_lambda < 1.0 and row.valid == 9
    whole = augment.replay(bank, row, 28, 2)
    for mine in slices(row.valid, 2):
        split = RowSplit(nn.Identity(), torch.device("cpu"))  # one process: no DDP
        split.w = dist.World(rank=0 if mine[0] == 0 else 1, size=2)  # … as rank r of 2
        got = split.pixels(bank, row, 28, 2)
        assert torch.equal(got, whole[mine])


def test_sync_bn_needs_cuda() -> None:
    with pytest.raises(ConfigError, match="--sync-bn needs CUDA"):
        check_sync_bn(True, torch.device("cpu"))
    check_sync_bn(False, torch.device("cpu"))


def test_the_world_size_names_the_student_only_beyond_one_process() -> None:
    one = TrainConfig(width=8, depth=2).identity()
    assert "world_size" not in one and "sync_bn" not in one  # one process: ids as before
    two = TrainConfig(width=8, depth=2, world_size=2).identity()
    assert two == {**one, "world_size": 2}  # sync_bn at its default (False) stays out


def test_one_process_is_a_pass_through() -> None:
    model = nn.Linear(3, 2)
    split = RowSplit(model, torch.device("cpu"))
    assert split.net is model and not split.w.distributed
    out = model(torch.ones(4, 3))
    assert split.whole(out, 4) is out
    split.backward(out.sum())
    assert torch.equal(model.weight.grad, torch.ones(2, 3) * 4)


def test_warnings_come_from_rank_0_only(monkeypatch, capsys) -> None:
    from lpld_cli.errors import warn

    monkeypatch.setenv("RANK", "1")
    warn("stored epochs differ")
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    warn("stored epochs differ")
    assert capsys.readouterr().err == "Warning: stored epochs differ\n"
    monkeypatch.delenv("RANK")
    warn("one process", "Note")
    assert capsys.readouterr().err == "Note: one process\n"
