"""Parents without --from: one match is taken, several that differ are listed, never guessed."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lpld_cli.cli import app
from lpld_cli.storage.selection import AmbiguousParentError, select
from lpld_cli.storage.store import Store

runner = CliRunner()


def _make(store: Store, kind: str, config: dict, parents: list[str], selectors: dict) -> str:
    def build(staging) -> dict:
        (staging.path / "payload.bin").write_bytes(b"x")
        return {}

    time.sleep(0.01)
    return store.produce(kind, config, parents, build, selectors=selectors).id


@pytest.fixture
def two_image_sets(tmp_path: Path) -> dict:
    """One teacher; a preset image set (500 iterations) and a newer manual one (100)."""
    store = Store(tmp_path / "store")
    t = _make(store, "teacher", {"t": 1}, [], {"dataset": "fashion-mnist"})
    sel = {"dataset": "fashion-mnist", "ipc": 10, "method": "lpld", "teacher": t}
    preset = _make(store, "images", {"ipc": 10, "iterations": 500, "seed": 0}, [t],
                   {**sel, "iterations": 500})
    manual = _make(store, "images", {"ipc": 10, "iterations": 100, "seed": 0}, [t],
                   {**sel, "iterations": 100})
    other = _make(store, "images", {"ipc": 50, "iterations": 500, "seed": 0}, [t],
                  {**sel, "ipc": 50, "iterations": 500})
    return {"store": store, "teacher": t, "preset": preset, "manual": manual, "ipc50": other}


def test_one_match_is_taken(two_image_sets: dict) -> None:
    store = two_image_sets["store"]
    assert select(store, "images", ipc=50).id == two_image_sets["ipc50"]
    assert select(store, "images", ipc=10, iterations=500).id == two_image_sets["preset"]


def test_several_matches_are_listed_with_what_differs(two_image_sets: dict) -> None:
    store = two_image_sets["store"]
    with pytest.raises(AmbiguousParentError) as caught:
        select(store, "images", ipc=10)
    error = caught.value
    assert error.message == "2 images artifacts match ipc=10; they differ in iterations"
    lines = error.hint.splitlines()
    assert "--from ID" in lines[0] and "--newest" in lines[0]
    assert lines[1].split() == [two_image_sets["manual"][:12], "iterations=100", "(newest)"]
    assert lines[2].split() == [two_image_sets["preset"][:12], "iterations=500"]
    assert select(store, "images", newest=True, ipc=10).id == two_image_sets["manual"]


def test_relabel_stops_and_lists_candidates(two_image_sets: dict) -> None:
    store = two_image_sets["store"]
    result = runner.invoke(app, ["relabel", "--ipc", "10", "--store", str(store.root)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: 2 images artifacts match ipc=10")
    assert two_image_sets["preset"][:12] in result.output
    assert two_image_sets["manual"][:12] in result.output
    assert "Traceback" not in result.output


def test_recover_with_two_teachers_asks_which(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    a = _make(store, "teacher", {"dataset": "fashion-mnist"}, [], {"dataset": "fashion-mnist"})
    b = _make(store, "teacher", {"dataset": "mnist"}, [], {"dataset": "mnist"})
    result = runner.invoke(app, ["recover", "--ipc", "1", "--store", str(store.root)])
    assert result.exit_code == 2, result.output
    assert "they differ in dataset" in result.output
    assert a[:12] in result.output and b[:12] in result.output
