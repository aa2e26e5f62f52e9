"""The benchmark scripts' --quick runs write every table with finite numbers in range.

Runs `benchmarks/speed.py --quick` and `benchmarks/reproduce.py --quick` (as CI does)
into a temporary store and results folder, then checks the JSON and the generated
RESULTS.md. Slow: several minutes on a 2-core CPU.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks._env import results_md_path
from tests.conftest import needs_fmnist

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, needs_fmnist]


def _finite(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _acc(stat, allow_missing: bool = False) -> None:
    """A mean ± std of top-1 fractions: finite and in [0, 1]."""
    if allow_missing and (stat is None or stat["mean"] is None):
        return
    assert stat["n"] >= 1, stat
    assert _finite(stat["mean"]) and 0.0 <= stat["mean"] <= 1.0, stat
    assert _finite(stat["std"]) and stat["std"] >= 0, stat


def _diff(stat) -> None:
    """A difference of two fractions: finite and in [-1, 1]."""
    assert stat["n"] >= 1 and _finite(stat["mean"]) and -1 <= stat["mean"] <= 1, stat


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Results of both quick scripts; LPLD_BENCH_RESULTS=DIR checks a folder they already
    wrote (e.g. right after CI ran them) instead of running them again."""
    if os.environ.get("LPLD_BENCH_RESULTS"):
        return Path(os.environ["LPLD_BENCH_RESULTS"])
    root = tmp_path_factory.mktemp("bench")
    out, store = root / "results", root / "store"
    for script in ("speed.py", "reproduce.py"):
        proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick",
                               "--device", "cpu", "--store", str(store), "--out", str(out)],
                              capture_output=True, text=True, timeout=3000, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def test_reproduce_quick_tables(quick_results: Path) -> None:
    res = json.loads((quick_results / "reproduce-quick.json").read_text())
    assert res["meta"]["quick"] is True and res["meta"]["device"]["type"] in ("cpu", "cuda")
    assert 0.5 < res["teacher"]["top1"] <= 1.0  # a real teacher, not chance (0.1)
    t = res["tables"]
    assert set(t) == {"table3", "table4", "table5a", "bn_stats", "baselines", "robustness",
                      "diversity", "convergence"}
    est = res["meta"]["estimate"]  # the plan's time, from the committed run's stage times
    assert est["jobs"] >= 1 and 0 < est["wall_hours"] < 10
    assert set(est["phases"]) >= {"recover", "relabel", "prune", "train", "mechanism"}

    t3 = t["table3"]
    assert len(t3["rows"]) == sum(len(t3["methods"]) * len(t3["ratios_by_ipc"][str(ipc)])
                                  for ipc in t3["ipcs"])
    assert {r["method"] for r in t3["rows"]} == {"sre2l", "cda", "lpld", "real"}
    for r in t3["rows"]:
        _acc(r["top1"])
        assert r["ratio"] >= 1 and r["label_bytes"] > 0
    # pruning shrinks the pool on disk
    for ipc in t3["ipcs"]:
        for m in t3["methods"]:
            size = {r["ratio"]: r["label_bytes"] for r in t3["rows"]
                    if r["ipc"] == ipc and r["method"] == m}
            assert size[max(size)] < size[1.0], (ipc, m, size)

    t4 = t["table4"]
    assert {r["row"] for r in t4["rows"]} == {1, 2, 3, 4}
    for r in t4["rows"]:
        _acc(r["top1"])

    t5 = t["table5a"]
    assert len(t5["rows"]) == 5 * 3 + 1 and t5["ratio"] == 40
    for r in t5["rows"]:
        _acc(r["top1"])
    assert t5["best"] is not None and _finite(t5["best_minus_random"])

    for r in t["bn_stats"]["rows"]:
        _acc(r["top1"])
        _acc(r["self_top1"])
    assert {r["bn_stats"] for r in t["bn_stats"]["rows"]} == {"exact", "ema"}

    assert {r["method"] for r in t["baselines"]["rows"]} == {"sre2l", "cda", "lpld", "real"}
    for r in t["baselines"]["rows"]:
        for k in ("stored_1x", "stored_pruned", "hard"):
            _acc(r[k])
        _acc(r["online"], allow_missing=r["method"] not in ("lpld", "real"))
    for r in t["robustness"]["rows"]:
        for k in ("ior_1x", "ior_pruned", "hlr"):
            _diff(r[k])

    div = t["diversity"]["rows"]
    assert {r["method"] for r in div} >= {"sre2l", "cda", "lpld", "real", "sre2l+C", "lpld-ema"}
    for r in div:
        assert _finite(r["cosine"]["mean"]) and -1 <= r["cosine"]["mean"] <= 1
        assert _finite(r["mmd2"]["mean"]) and r["mmd2"]["mean"] >= -1e-6
    assert res["findings"] and (quick_results / "reproduce-quick.png").stat().st_size > 1000

    conv = t["convergence"]["rows"]
    assert [r["epochs"] for r in conv] == [5, 10, 20, 40]
    for r in conv:
        _acc({"mean": r["top1"], "std": 0.0, "n": 1})
    # the plan's own epoch count is the headline LPLD 1× student of the same seed
    head = next(x for x in t["table3"]["rows"] if x["method"] == "lpld" and x["ratio"] == 1.0)
    assert next(r for r in conv if r["epochs"] == 20)["top1"] == head["per_seed"]["0"]


def test_mechanism_quick(quick_results: Path) -> None:
    res = json.loads((quick_results / "mechanism-quick.json").read_text())
    rows = res["sweep"]["rows"]
    assert {(r["method"], r["iterations"]) for r in rows} >= {
        (m, it) for m in ("lpld", "sre2l") for it in res["meta"]["settings"]["iterations"]}
    for r in rows:
        assert -1 <= r["cosine"]["mean"] <= 1 and r["mmd2"]["mean"] >= -1e-6
    layers = res["layers"]
    for method in ("lpld", "sre2l"):
        tr = res["trace"][method]
        assert tr["objective"] and tr["class_wise"][-1]["iteration"] == tr["iterations"]
        for point in tr["objective"] + tr["class_wise"]:
            assert len(point["mean"]) == len(point["var"]) == len(layers)
            assert all(_finite(v) and v >= 0 for v in point["mean"] + point["var"])
    assert len(res["real_floor"]["var"]) == len(layers) and res["findings"]

def test_speed_quick_figures(quick_results: Path) -> None:
    files = sorted(quick_results.glob("speed-*-quick.json"))
    assert files, "no speed-<device>-quick.json written"
    res = json.loads(files[0].read_text())
    f = res["figures"]
    assert set(f) == {"recover", "relabel", "train_stored_vs_hard", "train_online_vs_hard",
                      "train_stored_vs_online", "label_wait", "storage", "storage_blocks",
                      "rss_relabel", "rss_train", "startup_help", "startup_ls", "startup_show",
                      "startup_cached"} | (
                          {"dist_recover"} | ({"dist_relabel", "dist_relabel_sharded"}
                                               if "dist_relabel" in f else set())
                          if res["meta"]["device"]["type"] == "cpu" else set())
    for key, fig in f.items():
        assert _finite(fig["a"]) and _finite(fig["b"]) and fig["b"] > 0, key
        assert _finite(fig["ratio"]) and fig["ratio"] > 0, key
    assert f["storage"]["a"] > 0 and f["storage"]["b"] > 0
    assert 0 < f["label_wait"]["a"] < 1  # a share of step time
    profile = f["relabel"]["ms_per_row"]  # the measured profile behind a missed target
    assert set(profile) == {"relabel", "draw", "replay", "forward"}
    assert all(_finite(v) and v > 0 for v in profile.values())
    assert 100 < f["rss_train"]["b"] < 16_000  # MB: a real process, not a unit slip


def test_results_md_generated(quick_results: Path) -> None:
    text = results_md_path(quick_results).read_text()
    assert text.startswith("# lpld benchmark results") and "GENERATED" in text
    assert text.index("## Verdicts on the paper's claims") < text.index("## Reproduction")
    for heading in ("Convergence check", "Table 3 analogue", "Table 4 analogue",
                    "Table 5a analogue",
                    "--bn-stats ema", "Label baselines", "IOR and HLR", "Diversity",
                    "Speed ratios"):
        assert heading in text, heading
    assert "n/a" not in text.split("## Speed ratios")[0].split("### Table 3")[1]
    assert "device: **CPU" in text or "device: **NVIDIA" in text


def test_relabel_speed_quick(tmp_path: Path) -> None:
    """benchmarks/relabel_speed.py --quick: both shapes, relabel beside the pure forward
    measured in the same round, the --keep 40x figure, and the uint8 set beside the RSS."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "relabel_speed.py"),
                           "--quick", "--device", "cpu", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=1200, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    f = json.loads((tmp_path / "speed-relabel-cpu-quick.json").read_text())["figures"]
    assert set(f) == {"relabel_resnet18-224", "relabel_convnet-28", "keep_40x"}
    for name in ("relabel_resnet18-224", "relabel_convnet-28"):
        fig = f[name]
        assert _finite(fig["a"]) and _finite(fig["b"]) and fig["a"] > 0 and fig["b"] > 0
        assert len(fig["round_ratios"]) == 1 and all(r > 0 for r in fig["round_ratios"])
        assert fig["peak_rss_mb"] > 100  # a real process (torch alone is ~300 MB)
    assert f["relabel_resnet18-224"]["uint8_set_mb"] == 2000 * 3 * 224 * 224 / 2**20
    assert 0 < f["keep_40x"]["a"] < f["keep_40x"]["b"]  # a fortieth of the rows is faster
