"""Readable byte units in `report storage` and plain tick labels on the accuracy plot."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from lpld_cli.cli import app
from lpld_cli.reports.accuracy import _plain
from lpld_cli.reports.units import check_unit, in_unit, pick_unit, readable

runner = CliRunner()


@pytest.mark.parametrize(("values", "unit"), [
    ([0, None], "B"), ([1023], "B"), ([1024, 5], "KB"), ([11_800], "KB"),
    ([3 * 2**20 + 1, 10], "MB"), ([2**30], "GB"), ([30_400_000_000, 1], "GB")])
def test_pick_unit_is_the_largest_the_biggest_value_fills(values, unit) -> None:
    assert pick_unit(values) == unit


def test_in_unit_hand_values() -> None:
    assert in_unit(11_800, "KB") == "11.52"         # 11800 / 1024 = 11.523
    assert in_unit(1536, "KB") == "1.50"
    assert in_unit(123_456, "B") == "123,456"
    assert in_unit(30_400_000_000, "GB") == "28.31"  # 30.4e9 / 2^30
    assert in_unit(512, "GB") == "4.8e-07"          # tiny beside the table's largest value
    assert readable(2_500_000) == "2.38 MB"
    assert readable(None) == "-"


def test_check_unit() -> None:
    assert check_unit("auto") is None and check_unit("mb") == "MB"
    with pytest.raises(Exception, match="unknown unit 'XB'"):
        check_unit("XB")


def test_report_storage_units(tmp_path) -> None:
    store = ["--store", str(tmp_path / "s")]
    plan = ["report", "storage", "--plan", "fashion-mnist", "--ipc", "10", *store]
    auto = runner.invoke(app, plan)
    assert auto.exit_code == 0, auto.output
    exact = json.loads(runner.invoke(app, [*plan, "--json"]).stdout)["rows"][0]
    # 600 rows of 50 x 10 float16 logits: 600,000 logical bytes of logits; the table's
    # largest number (the torch.save layout, 2.7 MB) puts it in MB
    assert exact["components"]["logits"]["logical_bytes"] == 600 * 50 * 10 * 2
    assert exact["torch_save_bytes"] > 2**21
    logits = next(line for line in auto.stdout.splitlines() if "logits  " in line)
    assert "logical MB" in auto.stdout and logits.split()[1] == f"{600_000 / 2**20:.2f}"
    forced = runner.invoke(app, [*plan, "--unit", "B"])
    assert "logical B" in forced.stdout and "600,000" in forced.stdout
    bad = runner.invoke(app, [*plan, "--unit", "XB"])
    assert bad.exit_code == 2 and bad.output.splitlines()[0] == "Error: unknown unit 'XB'"


@pytest.mark.parametrize(("value", "text"), [(0.01, "0.01"), (0.5, "0.5"), (20.0, "20"),
                                             (1000.0, "1,000"), (2e-05, "0.00002")])
def test_plot_tick_labels_are_plain(value, text) -> None:
    assert _plain(value) == text
