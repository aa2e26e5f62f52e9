"""benchmarks/reproduce.py's plan (issue 18): the headline rows at the preset's settings, the
stated cuts, and the time estimate against a hand computation. No stage runs here."""

from __future__ import annotations

import pytest

from benchmarks.mechanism import sweep_settings, sweep_tasks
from benchmarks.reproduce import Plan, Settings, _wall, estimate, settings
from lpld_cli.data.presets import get_preset

P = get_preset("fashion-mnist")


def _full() -> Plan:
    plan = Plan(settings(quick=False))
    plan.build()
    return plan


def test_headline_rows_at_preset_settings() -> None:
    plan = _full()
    tasks = plan.train_tasks({"exact": "T", "ema": "E"},
                             {k: f"img{k}" for k in plan.images},
                             {k: f"lab{k}" for k in plan.labels},
                             {k: f"pr{k}" for k in plan.pruned})
    for m in ("sre2l", "cda", "lpld", "real"):
        for ipc, ratios in ((10, (1.0, 10.0, 40.0, 100.0)), (50, (1.0, 40.0))):
            for r in ratios:
                for seed in (0, 1, 2):
                    if r == 1.0:
                        key = ("train", m, ipc, seed, "stored", 1.0, None, None, None)
                    else:
                        g = "epoch" if m in ("sre2l", "cda") else "batch"
                        key = ("train", m, ipc, seed, "stored", r, g, "random", None)
                    assert key in tasks, key
                    # both IPCs at the preset's 300 epochs (IPC10's convergence: see below)
                    assert tasks[key]["config"]["epochs"] == P.train_epochs == 300
    # an IPC50 student: 500 images / batch 50 × 300 epochs = 3,000 steps
    assert 500 // P.train_batch_size * P.train_epochs == 3000
    recovers = plan.recover_tasks({"exact": "T", "ema": "E"})
    for key, task in recovers.items():
        if key[1] != "real":
            assert task["config"]["iterations"] == P.recover_iterations == 500
    relabels = plan.relabel_tasks(dict.fromkeys(plan.images, "img"))
    assert {(k[2], t["config"]["epochs"]) for k, t in relabels.items()} == {(10, 300), (50, 300)}


def test_cuts_are_stated_and_convergence_planned() -> None:
    s = settings(quick=False)
    assert s.cuts and all(isinstance(v, str) and v for v in s.cuts.values())
    plan = _full()
    conv = [k for k in plan.students if len(k) == 10]
    # the plan's own budget is the headline student; the other points are extra students
    assert {(k[2], k[9]) for k in conv} == {(10, 50), (10, 100), (10, 200), (10, 600),
                                            (10, 1200), (50, 600)}
    # the plateau check: every headline image set at 1× and 40× trained 1200 epochs, seed 0
    assert {(k[1], k[3], k[5]) for k in conv if k[9] == 1200} == {
        (m, 0, r) for m in ("sre2l", "cda", "lpld", "real") for r in (1.0, 40.0)}


def test_lpt_wall_by_hand() -> None:
    # 3, 3 to the two workers, then 2 → 5 / 5, 2 → 7: the longest worker carries 7
    assert _wall([2, 3, 2, 3, 2], 2) == 7
    assert _wall([5], 4) == 5 and _wall([], 2) == 0


def test_estimate_by_hand() -> None:
    s = Settings(quick=False, seeds=[0], ipcs=[10], ratios={10: [1.0]}, ablation_ratios=[],
                 epochs={10: 10}, recover_iterations={10: 20}, teacher={}, side_seeds=[],
                 selections=[], online_ipcs=[], hard_ipcs=[], convergence={})
    plan = Plan(s)
    plan.build()
    # sre2l, cda, lpld, real at 1×, and real at 40× (epoch pool: IOR of the epoch methods)
    assert len(plan.students) == 5 and len(plan.images) == 4 and len(plan.pruned) == 1
    rates = {"recover_per_image_iteration": {10: 0.01}, "relabel_per_row": 0.5,
             "prune": 3.0, "train_per_step": {"stored": 0.1}, "train_overhead": 4.0,
             "measured": "hand"}
    est = estimate(plan, rates, 2, {"extra": 7.0})
    ph = est["phases"]
    # recover: three syntheses of 100 images × 20 iterations × 0.01 s = 20 s, real 1 s;
    # LPT on 2 workers: 20 | 20, then 20 → 40, 1 → 21
    assert ph["recover"] == {"tasks": 4, "worker_seconds": 61, "wall_seconds": 40}
    # relabel: 10 epochs × 2 rows × 0.5 s = 10 s per store, 4 stores
    assert ph["relabel"] == {"tasks": 4, "worker_seconds": 40, "wall_seconds": 20}
    assert ph["prune"] == {"tasks": 1, "worker_seconds": 3, "wall_seconds": 3}
    # train: 4 s + 20 steps × 0.1 s = 6 s per student, 5 students: 6+6 | 6+6, then 6
    assert ph["train"] == {"tasks": 5, "worker_seconds": 30, "wall_seconds": 18}
    assert est["wall_seconds"] == 40 + 20 + 3 + 18 + 7


@pytest.mark.parametrize("quick", [True, False])
def test_mechanism_sweep_points(quick: bool) -> None:
    sw = sweep_settings(quick)
    tasks = sweep_tasks(sw, "T")
    points = {(k[0], k[1], k[2]) for k in tasks}
    for m in ("lpld", "sre2l"):
        for it in sw["iterations"]:
            assert (m, it, sw["r_bn_default"]) in points
        for r in sw["r_bn"]:
            assert (m, sw["at_iterations"], r) in points
    # the preset point leaves r_bn implicit: the same artifact as the reproduction's images
    preset = tasks[("lpld", sw["at_iterations"], sw["r_bn_default"], 0)]["config"]
    assert "r_bn" not in preset
    if not quick:
        assert sw["iterations"] == [100, 200, 500, 1000] and sw["r_bn"] == [0.01, 0.05, 0.2]


@pytest.mark.parametrize("quick", [True, False])
def test_tables_verdicts_and_markdown_from_synthetic_results(quick: bool) -> None:
    """Every table, the findings, RESULTS.md's reproduction section and the verdicts render
    from a plan's results in the JSON layout main() writes (no stage runs). The full plan's
    side seeds (Table 4 rows 2-3 and the ema teacher on seed 0 only) leave out keys the quick
    plan has: the full run once crashed here after 4,000 s of training."""
    import json

    from benchmarks._render import measured_line, render_reproduce
    from benchmarks.reproduce import Tables, findings
    from benchmarks.verdicts import claims, render

    s = settings(quick=quick)
    plan = Plan(s)
    plan.build()

    class FakeRunner:
        results = {k: {"id": "x", "cached": False, "seconds": 1.0,
                       "metrics": {"top1": 0.5 + 0.01 * k[3] + 0.001 * i, "top5": 0.9,
                                   "label_pool_bytes": 1000, "steps": 40}}
                   for i, k in enumerate(sorted(plan.students, key=str))}

    div = {k: {"cosine": 0.8 + 0.01 * k[2], "mmd2": 0.1} for k in plan.images}
    metrics = {k: {"self_top1": 1.0} for k in plan.images}
    t = Tables(s, FakeRunner(), 0.9, div)
    tables = {"table3": t.table3(), "table4": t.table4(), "table5a": t.table5a(),
              "bn_stats": t.bn_stats(metrics), "baselines": t.baselines(),
              "robustness": t.robustness(), "diversity": t.diversity(metrics),
              "convergence": t.convergence()}
    assert all(r["top1"] is not None for r in tables["convergence"]["rows"])
    plateau = tables["convergence"]["plateau"]  # 4 image sets × (1×, 40×), both budgets
    assert len(plateau) == 8 and all(None not in r["top1"].values() for r in plateau)
    bn = tables["bn_stats"]  # the ema/exact pair on the same seeds
    assert bn["seeds"] == (s.seeds if s.side_seeds is None else s.side_seeds)
    assert len(bn["rows"]) == 4 and all(r["top1"]["n"] == len(bn["seeds"]) for r in bn["rows"])
    meta = {"quick": True, "device": {"name": "CPU", "type": "cpu", "torch": "x"}, "jobs": 2,
            "threads": 1, "command": "python benchmarks/reproduce.py --quick",
            "finished": "now", "seconds": 60.0, "cached_runs": 3, "runs": 10,
            "seeds": s.seeds, "ipcs": s.ipcs,
            "epochs": {"10": 20}, "recover_iterations": {"10": 30}, "plan": "issue-18",
            "cuts": {"a": "b"}, "estimate": {"jobs": 2, "wall_hours": 0.1, "rates_from": "r",
                                             "phases": {"train": {"wall_seconds": 60}}},
            "scaled_down": s.scaled_down}
    res = json.loads(json.dumps({
        "meta": meta, "teacher": {"model": "convnet", "top1": 0.9}, "tables": tables,
        "findings": findings(tables, s),
        "runs": [{"key": [*k], "metrics": r["metrics"]} for k, r in FakeRunner.results.items()]}))
    assert any(f.startswith("Plateau check IPC10 (seed 0): ") for f in res["findings"])
    text = render_reproduce(res)
    assert "Convergence check" in text and "Cut to fit" in text and "| real |" in text
    assert f"comparisons keep their sign from {s.epochs[10]} to {s.plateau[10]} epochs" in text
    assert ("in 1.0 min (this invocation: 3 of its 10 runs were already in the store, made by "
            "an earlier run: their time is not in it)") in text
    assert "0.02 h in this invocation, which found 3 of its runs in the store" in text
    # the mechanism script's time, run after the plan, is added to the plan's
    meta.update({"seconds": 6480.0, "mechanism_seconds": 540.0, "cached_runs": 0})
    assert measured_line(meta) == "1.95 h (the plan 1.80 h + the mechanism 9.0 min)"
    assert "An earlier plan" not in text  # the plan is issue 18's
    by = {c["id"]: c for c in claims(res)}
    assert set(by) == {"a", "b", "c", "d", "e"}
    assert all(by[c]["cells"] for c in by)  # every claim found its rows in the new layout
    assert by["a"]["cells"][0]["test"].startswith(f"paired t ({len(s.seeds)} seeds)")
    assert "## Verdicts" in render(res)



def test_rates_from_a_reference_that_found_every_run_in_the_store() -> None:
    """A resumed reference run timed nothing itself: recover, relabel and train rates come
    from the artifacts' own timings; prune and the per-student overhead fall back."""
    from benchmarks.reproduce import stage_rates

    meta = {"recover_iterations": {"10": 500}, "command": "c", "finished": "f",
            "device": {"name": "CPU"}, "jobs": 2, "threads": 1}
    runs = [{"key": ["recover", "lpld", 10, 0], "cached": True, "seconds": 0.01,
             "metrics": {"seconds_per_class": 10.0, "classes": 10, "images": 100}},
            {"key": ["relabel", "lpld", 10, 0, None], "cached": True, "seconds": 0.01,
             "metrics": {"rows": 600, "seconds": 24.0}},
            {"key": ["prune", "lpld", 10, 0, 40.0, "batch", "random", None], "cached": True,
             "seconds": 0.01, "metrics": {"rows": 15}},
            {"key": ["train", "lpld", 10, 0, "stored", 1.0, None, None, None], "cached": True,
             "seconds": 0.02, "metrics": {"steps": 600, "train_seconds": 36.0}}]
    rates = stage_rates({"meta": meta, "runs": runs})
    assert rates["recover_per_image_iteration"] == {10: 100.0 / (100 * 500)}
    assert rates["relabel_per_row"] == 24.0 / 600
    assert rates["train_per_step"] == {"stored": 36.0 / 600}
    assert rates["prune"] == 0.07 and rates["train_overhead"] == 8.7


def test_plateau_check_signs_by_hand() -> None:
    """A comparison whose sign flips between the budgets is marked; the count is by hand."""
    from benchmarks._render import _plateau_check

    top = {("lpld", 1.0): (0.86, 0.87), ("sre2l", 1.0): (0.85, 0.88),  # +1.0 → -1.0: flips
           ("cda", 1.0): (0.84, 0.85), ("real", 1.0): (0.80, 0.81)}
    rows = [{"ipc": 10, "method": m, "ratio": r, "seed": 0,
             "top1": {"600": a, "1200": b}} for (m, r), (a, b) in top.items()]
    text = "\n".join(_plateau_check(rows, {"10": 600}))
    assert "| 1×: lpld − sre2l | +1.0 | -1.0 | **no** |" in text
    assert "| 1×: lpld − cda | +2.0 | +2.0 | yes |" in text
    assert "| sre2l | 1× | 85.0 | 88.0 | +3.0 |" in text
    # lpld − {sre2l, cda}, {sre2l, cda, lpld} − real (no pruned ratio: no claim (b))
    assert "lpld 1× − 1×" not in text
    assert "IPC10: 4 of 5 comparisons keep their sign from 600 to 1200 epochs" in text
    rows[0]["top1"]["1200"] = None  # a missing run: no section rather than a wrong one
    assert _plateau_check(rows, {"10": 600}) == []
