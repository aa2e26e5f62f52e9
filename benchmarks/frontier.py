"""Frontier: student top-1 against label bytes, for pruning × bit-width × top-k × temperature.

Two datasets: Fashion-MNIST (10 classes: augmentations weigh as much as the labels) and
Fashion-MNIST pairs (100 classes, `lpld_cli.data.fashion_pairs`: label vectors dominate, as
on ImageNet). Per dataset one teacher, one LPLD image set and one unpruned float16 label
store; every point is a `prune` of that store (random rows, the seed's) that may re-encode
it, and a student trained on it, for each seed:

- LPLD pruning alone: float16 at 1/10/40/100×;
- at the bytes of float16 40× (logits only): q8 and q4 keep more rows (fewer bits per
  logit), top-k keeps more rows still (K fp16 values + K uint8 indices per slot, LPQLD's
  MR-k, fill none);
- temperature: constant T = 20 (every point above) vs LPQLD's step schedule
  (T₀ 20, γ 0.7 every tenth of the run, floor 2) vs step + auto student temperature (CA),
  on one top-k point and float16 40x; the step schedule also on q8 and q4.

Bytes are the label store's logical bytes (exact, independent of compression; the disk
bytes are in the JSON too): "logits" = the label arrays only, "total" = with the
augmentation and sampler arrays. Every encoding keeps as many whole rows as fit in the
bytes of float16 at 40x (never more). The goal (issue 15) is judged against the best
float16 pruning at equal bytes (±25%, a win only within +5%) under ANY schedule: an encoded
point beats it when its mean top-1 is higher by more than the larger seed spread. The
table's Δ (the float16 curve interpolated in log bytes, or float16 under the same schedule)
is a secondary comparison.

The CPU run is scaled down (small teacher, fewer relabel/train epochs than the paper's 300;
see `meta`), so compare points within one run. `--quick` runs the same code paths smaller.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python benchmarks/...`

from benchmarks._env import (  # noqa: E402
    base_parser,
    default_jobs,
    device_info,
    log,
    results_md_path,
    write_json,
)
from benchmarks._render import regenerate_results  # noqa: E402
from benchmarks._runner import Runner  # noqa: E402
from benchmarks._stats import fmt_bytes, mean_std  # noqa: E402
from lpld_cli.data.label_pool import keep_count  # noqa: E402

FP16_RATIOS = (1.0, 10.0, 40.0, 100.0)
BUDGET_RATIO = 40.0  # the other encodings sit at the logits bytes of float16 at this ratio
SCHEDULES = {"constant": {},
             "step": {"temperature_schedule": "step", "temperature_min": 2.0,
                      "temperature_gamma": 0.7},
             "step+auto": {"temperature_schedule": "step", "temperature_min": 2.0,
                           "temperature_gamma": 0.7, "student_temperature": "auto"}}


@dataclass
class DatasetPlan:
    name: str
    classes: int
    ipc: int
    ks: tuple[int, ...]
    schedule_k: int  # the top-k point that also gets the temperature variants
    teacher: dict[str, Any]
    recover_iterations: int
    relabel_epochs: int
    train_epochs: int
    batch_size: int = 50
    student_width: int = 16
    points: list[dict[str, Any]] = field(default_factory=list)


def slot_bytes(encoding: dict[str, Any], classes: int) -> int:
    """Label bytes per slot (lpld_cli.storage.encoding's layout)."""
    from lpld_cli.storage.encoding import Encoding

    return Encoding(**encoding).row_bytes(1, classes)


def plans(quick: bool) -> list[DatasetPlan]:
    # Sized for a 2-core CPU shared by several jobs (see meta): small teachers and students
    # trained a sixth of the paper's epochs; 200 relabel epochs (400 rows), so that float16
    # at 40x keeps 10 rows and every encoding's whole rows meet its bytes within a few
    # percent. --quick (the test's end-to-end run): 50 relabel epochs, the first two K, a
    # teacher on a tenth of the images, a tenth of the recover and student budgets.
    scale = 10 if quick else 1
    relabel_epochs = 50 if quick else 200
    fashion = DatasetPlan(
        "fashion-mnist", 10, ipc=10, ks=(1, 2, 3, 5)[:2 if quick else None], schedule_k=2,
        teacher={"width": 16, "teacher_epochs": 1, "train_subset": 10000 // scale},
        recover_iterations=200 // scale, relabel_epochs=relabel_epochs,
        train_epochs=50 // scale)
    pairs = DatasetPlan(
        "fashion-mnist-pairs", 100, ipc=1, ks=(5, 10, 20, 50)[:2 if quick else None],
        schedule_k=10,
        teacher={"width": 32, "teacher_epochs": 2, "train_subset": 20000 // scale},
        recover_iterations=200 // scale, relabel_epochs=relabel_epochs,
        train_epochs=50 // scale)
    for p in (fashion, pairs):
        fp16 = slot_bytes({}, p.classes)
        for r in FP16_RATIOS:
            p.points.append({"family": "float16", "label": f"float16 {r:g}x", "ratio": r,
                             "encoding": {}, "schedule": "constant"})
        # every encoding at as many whole rows as fit in the bytes float16 40x keeps (never
        # more: a win at equal bytes is a win with at most the control's bytes)
        total = p.relabel_epochs * math.ceil(p.ipc * p.classes / p.batch_size)
        budget_slots = keep_count(total, BUDGET_RATIO) * fp16
        budget = [("q8", {"logits_dtype": "q8"}), ("q4", {"logits_dtype": "q4"})]
        budget += [(f"top-{k}", {"topk": k}) for k in p.ks]
        for label, enc in budget:
            rows = max(1, budget_slots // slot_bytes(enc, p.classes))
            r = math.floor(1000 * total / rows) / 1000  # ⌊total / r⌋ = rows exactly
            assert keep_count(total, r) == rows, (label, total, rows, r)
            p.points.append({"family": label.split("-")[0] if "top" in label else label,
                             "label": f"{label} {r:.3g}x", "ratio": max(1.0, r),
                             "encoding": enc, "schedule": "constant"})
        # the schedules on one top-k point, and on float16 at the same bytes (the control:
        # a schedule's gain is compared with what it gives LPLD pruning alone)
        # and the step schedule on the low-bit points (more batches at fewer bits vs fewer
        # batches at float16, both under the schedule that helps float16 most)
        for sched, bases in (("step", (f"top-{p.schedule_k} ", f"float16 {BUDGET_RATIO:g}x",
                                       "q8 ", "q4 ")),
                             ("step+auto", (f"top-{p.schedule_k} ",
                                            f"float16 {BUDGET_RATIO:g}x"))):
            for base in bases:
                src = next(q for q in p.points if q["label"].startswith(base)
                           and q["schedule"] == "constant")
                p.points.append({**src, "label": f"{src['label']} {sched}", "schedule": sched})
    return [fashion, pairs]


def _prune_config(point: dict[str, Any], seed: int) -> dict[str, Any]:
    return {"ratio": point["ratio"], "metric": "random", "seed": seed, **point["encoding"]}


def plateau_epochs(p: DatasetPlan) -> tuple[int, ...]:
    """The budget check's student epochs besides the plan's: twice and four times them."""
    return (2 * p.train_epochs, 4 * p.train_epochs)


def plateau_points(p: DatasetPlan) -> list[int]:
    """The points the budget check retrains longer: float16 at the budget's bytes (constant
    and step T) and the scheduled top-k point (constant and step+auto)."""
    return [i for i, q in enumerate(p.points)
            if (q["family"] == "float16" and q["ratio"] == BUDGET_RATIO
                and q["schedule"] in ("constant", "step"))
            or (q["label"].startswith(f"top-{p.schedule_k} ")
                and q["schedule"] in ("constant", "step+auto"))]


def _train_config(p: DatasetPlan, point: dict[str, Any], seed: int,
                  epochs: int | None = None) -> dict[str, Any]:
    from lpld_cli.data.presets import get_preset

    preset = get_preset(p.name)
    epochs = epochs or p.train_epochs
    extra = dict(SCHEDULES[point["schedule"]])
    if "temperature_schedule" in extra:  # LPQLD: 10 steps over the run
        extra["temperature_step"] = max(1, epochs // 10)
    return {"dataset": p.name, "model": "convnet", "width": p.student_width, "depth": 3,
            "labels": "stored", "epochs": epochs, "batch_size": p.batch_size,
            "temperature": preset.temperature, "optimizer": preset.optimizer, "lr": preset.lr,
            "weight_decay": preset.weight_decay, "warmup_epochs": 0, "seed": seed, **extra}


def interpolate(curve: list[tuple[float, float]], x: float) -> float | None:
    """The float16 curve (bytes, top-1) at `x` bytes, linear in log bytes; None outside."""
    pts = sorted(curve)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
        if x0 <= x <= x1:
            if x1 == x0:
                return max(y0, y1)
            t = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
            return y0 + t * (y1 - y0)
    return None


def tail_temperatures(dataset: str) -> dict[str, float]:
    """Where prune measures the mass top-k drops: the students' T₀ (the preset's) and the
    step schedule's floor T_min."""
    from lpld_cli.data.presets import get_preset

    return {"tail_mass_t0": get_preset(dataset).temperature,
            "tail_mass_tmin": SCHEDULES["step"]["temperature_min"]}


def add_deltas(rows: list[dict[str, Any]]) -> None:
    """`vs_lpld_<axis>` per row: top-1 minus float16 pruning alone at the same bytes (the
    constant-T float16 curve, interpolated), or, under a schedule, minus float16 at the
    budget's bytes under that same schedule; None where there is no such reference."""
    controls = {r["schedule"]: r for r in rows if r["family"] == "float16"
                and r["schedule"] != "constant"}
    for axis in ("logits_bytes", "total_bytes"):
        curve = [(r[axis], r["top1"]["mean"]) for r in rows
                 if r["family"] == "float16" and r["schedule"] == "constant"]
        for r in rows:
            if r["schedule"] == "constant":  # against the float16 curve at the same bytes
                ref = interpolate(curve, r[axis])
            else:  # against float16 at the budget's bytes under the same schedule
                control = controls.get(r["schedule"])
                ref = None if control is None or control is r else control["top1"]["mean"]
            r[f"vs_lpld_{axis}"] = None if ref is None else r["top1"]["mean"] - ref


def summarise(p: DatasetPlan, runner: Runner, pruned: dict, seeds: list[int],
              store: Any) -> dict[str, Any]:
    from lpld_cli.reports.storage import label_row

    rows = []
    missing = []
    for i, point in enumerate(p.points):
        runs = [runner.results[k] for s in seeds if (k := ("train", p.name, i, s))
                in runner.results]
        missing += [f"{point['label']} seed {s}" for s in seeds
                    if ("train", p.name, i, s) not in runner.results]
        if not runs:
            continue
        first = store.get(pruned[(p.name, i, seeds[0])], kind="labels")
        lr = label_row(store, first)
        prune_m = runner.results[("prune", p.name, i, seeds[0])]["metrics"]
        temps = [r["metrics"].get("student_temperature_last") for r in runs]
        rows.append({
            "label": point["label"], "family": point["family"], "ratio": point["ratio"],
            "encoding": lr["encoding"], "schedule": point["schedule"], "rows": lr["rows"],
            "logits_bytes": lr["components"]["logits"]["logical_bytes"],
            "total_bytes": lr["logical_bytes"],
            "logits_disk_bytes": lr["components"]["logits"]["disk_bytes"],
            "total_disk_bytes": lr["disk_bytes"],
            "tail_mass_t0": prune_m.get("tail_mass_t0"),
            "tail_mass_tmin": prune_m.get("tail_mass_tmin"),
            "top1": mean_std(r["metrics"]["top1"] for r in runs),
            "top1_runs": [r["metrics"]["top1"] for r in runs],
            "student_temperature_last": [t for t in temps if t is not None]})
    add_deltas(rows)
    return {"dataset": p.name, "classes": p.classes, "ipc": p.ipc, "rows": rows,
            "missing": missing, "tail_temperatures": tail_temperatures(p.name),
            "teacher_top1": runner.results.get(("teacher", p.name), {}).get("top1"),
            "settings": {"recover_iterations": p.recover_iterations,
                         "relabel_epochs": p.relabel_epochs, "train_epochs": p.train_epochs,
                         "batch_size": p.batch_size, "student_width": p.student_width,
                         "teacher": p.teacher}}


def plateau(p: DatasetPlan, runner: Runner, pruned: dict, seeds: list[int],
            images: str) -> list[dict[str, Any]]:
    """Top-1 vs student epochs for `plateau_points`: is the plan's budget on the plateau?"""
    points = plateau_points(p)
    runner.phase(f"budget check {p.name}", {
        ("plateau", p.name, i, e, s): {"stage": "train", "images": images,
                                       "labels": pruned[(p.name, i, s)],
                                       "config": _train_config(p, p.points[i], s, e)}
        for e in plateau_epochs(p) for s in seeds for i in points},
        lambda k, r: f"top-1 {r['metrics']['top1']:.4f}")
    rows = []
    for i in points:
        by_epochs = {p.train_epochs: [runner.results[("train", p.name, i, s)] for s in seeds]}
        by_epochs |= {e: [runner.results[("plateau", p.name, i, e, s)] for s in seeds]
                      for e in plateau_epochs(p)}
        rows.append({"label": p.points[i]["label"],
                     "top1": {str(e): mean_std(r["metrics"]["top1"] for r in runs)
                              for e, runs in sorted(by_epochs.items())}})
    return rows


def plateau_findings(d: dict[str, Any]) -> list[str]:
    """Whether the encodings' verdict holds at every budget of the check."""
    if not d.get("plateau"):
        return []
    out = []
    budgets = list(d["plateau"][0]["top1"])
    for e in budgets:
        f = max((r for r in d["plateau"] if r["label"].startswith("float16")),
                key=lambda r: r["top1"][e]["mean"])
        k = max((r for r in d["plateau"] if not r["label"].startswith("float16")),
                key=lambda r: r["top1"][e]["mean"])
        gain = 100 * (k["top1"][e]["mean"] - f["top1"][e]["mean"])
        spread = 100 * max(k["top1"][e]["std"] or 0, f["top1"][e]["std"] or 0)
        out.append(f"{d['dataset']} budget check, students of {e} epochs: the best top-k "
                   f"point, {k['label']}, {100 * k['top1'][e]['mean']:.1f}% vs the best float16 "
                   f"point, {f['label']}, {100 * f['top1'][e]['mean']:.1f}% ({gain:+.1f} points, "
                   f"seed spread ±{spread:.1f})")
    return out


EQUAL_BYTES = 0.25  # "equal bytes": within ±25% of float16 at the budget ratio
SAME_BYTES = 0.05  # a win counts for the goal only with at most 5% more bytes than its control
AXES = {"logits_bytes": "label arrays only", "total_bytes": "total, with the augmentation "
        "and sampler arrays"}
GOAL = {"beats": "goal met", "is within the seed spread of": "goal not met (within the seed "
        "spread)", "does not beat": "goal not met", "is above": "goal not judged (one seed, "
        "no spread)", "is not above": "goal not judged (one seed, no spread)"}


def _pct(r: dict[str, Any]) -> str:
    return f"{100 * r['top1']['mean']:.1f}%"


def _spread(*rows: dict[str, Any]) -> float:
    """The larger seed standard deviation of `rows`, in points."""
    return 100 * max(r["top1"]["std"] or 0 for r in rows)


def verdict(gain: float, spread: float, seeds: int = 2) -> str:
    """A difference in points against the seed spread: beats / within / does not beat
    (with fewer than two seeds there is no spread: only above / not above)."""
    if seeds < 2:
        return "is above" if gain > 0 else "is not above"
    return ("beats" if gain > spread else "does not beat" if gain < -spread
            else "is within the seed spread of")


def _seeds(*rows: dict[str, Any]) -> int:
    return min(r["top1"]["n"] for r in rows)


def budget_rows(d: dict[str, Any], axis: str = "logits_bytes"
                ) -> tuple[dict[str, Any] | None, list[dict[str, Any]], list[dict[str, Any]]]:
    """float16 at the budget ratio (constant T), and the float16 and encoded points within
    ±EQUAL_BYTES of its `axis` bytes, under any schedule."""
    base = next((r for r in d["rows"] if r["family"] == "float16"
                 and r["schedule"] == "constant" and r["ratio"] == BUDGET_RATIO), None)
    if base is None:
        return None, [], []
    near = [r for r in d["rows"] if abs(r[axis] / base[axis] - 1) < EQUAL_BYTES]
    return (base, [r for r in near if r["family"] == "float16"],
            [r for r in near if r["family"] != "float16"])


def best(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return max(rows, key=lambda r: r["top1"]["mean"])


def headline(d: dict[str, Any], axis: str = "logits_bytes") -> str | None:
    """The issue's goal on one dataset: the best encoded point against the best float16
    pruning at equal `axis` bytes under any schedule (the fair control)."""
    base, fp16, enc = budget_rows(d, axis)
    if base is None:
        return None
    where = (f"at the bytes of float16 {BUDGET_RATIO:g}x ({AXES[axis]}, ±{EQUAL_BYTES:.0%}), "
             "under any T schedule")
    if not enc:
        _, _, encoded = budget_rows(d)  # the points at the budget's logits bytes
        rows = sorted({r["rows"] for r in encoded})
        span = f"{rows[0]}" if rows[:1] == rows[-1:] else f"{rows[0]}–{rows[-1]}"
        kept = (f"the encoded points keep {span} rows against float16 {BUDGET_RATIO:g}x's "
                f"{base['rows']}, and every row stores its augmentation arrays too"
                if rows else "")
        return f"{d['dataset']} — no encoded point {where}" + (f": {kept}" if kept else "")
    f, e = best(fp16), best(enc)
    gain = 100 * (e["top1"]["mean"] - f["top1"]["mean"])
    spread = _spread(e, f)
    v = verdict(gain, spread, _seeds(e, f))
    more = e[axis] / f[axis] - 1  # whole rows: the byte budgets only match within ±25%
    goal = GOAL[v] if v != "beats" or more <= SAME_BYTES else (
        f"goal not met at equal bytes (a win with {more:+.0%} of the bytes)")
    lead = f"{d['dataset']} — {goal}" if axis == "logits_bytes" else (
        f"{d['dataset']} — on total bytes")
    return (f"{lead}: {where}, the best encoded point {e['label']} ({_pct(e)}, "
            f"{fmt_bytes(e[axis])}) {v} the best LPLD pruning alone, {f['label']} ({_pct(f)}, "
            f"{fmt_bytes(f[axis])}): {gain:+.1f} points, seed spread ±{spread:.1f}"
            + (f"; the encoded point has {more:+.0%} of the bytes" if abs(more) >= 0.05 else ""))


def why_topk(d: dict[str, Any]) -> str | None:
    """Where top-k does not win at equal bytes: the mass it drops at T₀ and T_min (measured
    by prune on the teacher's labels) beside what it reaches under each schedule."""
    base, fp16, enc = budget_rows(d)
    topk = [r for r in enc if r["family"] == "top" and r.get("tail_mass_t0") is not None]
    if base is None or not topk or not fp16:
        return None
    f, k = best(fp16), best(topk)
    if verdict(100 * (k["top1"]["mean"] - f["top1"]["mean"]), _spread(k, f),
               _seeds(k, f)) in ("beats", "is above"):
        return None
    t = d.get("tail_temperatures") or tail_temperatures(d["dataset"])
    t0, tmin = t["tail_mass_t0"], t["tail_mass_tmin"]
    flat = [r for r in topk if r["schedule"] == "constant"]
    same = [r for r in topk if r["encoding"] == k["encoding"] and r["ratio"] == k["ratio"]]
    out = (f"{d['dataset']} — why top-k does not win: {k['encoding']} drops "
           f"{100 * k['tail_mass_t0']:.1f}% of the teacher's probability mass at T₀ = {t0:g} "
           f"({100 * k['tail_mass_tmin']:.1f}% at T_min = {tmin:g}); renormalised top-k keeps "
           f"too little of a {d['classes']}-class distribution at high T")
    if flat:
        lo, hi = (min(r["tail_mass_t0"] for r in flat), max(r["tail_mass_t0"] for r in flat))
        out += (f". At constant T = {t0:g} the top-k points drop {100 * lo:.1f}–{100 * hi:.1f}% "
                f"and reach {100 * min(r['top1']['mean'] for r in flat):.1f}–"
                f"{100 * max(r['top1']['mean'] for r in flat):.1f}% against float16 "
                f"{BUDGET_RATIO:g}x's {_pct(base)}")
    if len(same) > 1:
        out += (f"; under the schedules (T falling towards T_min; +auto: the student's T "
                f"calibrated) {k['label'].split()[0]} reaches "
                + ", ".join(f"{_pct(r)} ({r['schedule']})" for r in same)
                + f", against the best float16's {_pct(f)}")
    return out


def secondary(d: dict[str, Any]) -> list[str]:
    """The largest same-schedule Δ (`vs_lpld_<axis>`) per axis (one line when both axes
    name the same point and Δ), labelled as the weaker comparison it is and set beside the
    best float16 at the budget's bytes under any schedule."""
    picks: dict[tuple[str, float] | None, list[str]] = {}
    for axis, what in (("logits_bytes", "logits only"), ("total_bytes", "total")):
        cands = [r for r in d["rows"] if r["family"] != "float16"
                 and r.get(f"vs_lpld_{axis}") is not None]
        r = max(cands, key=lambda c: c[f"vs_lpld_{axis}"]) if cands else None
        picks.setdefault(None if r is None else (r["label"], r[f"vs_lpld_{axis}"]),
                         []).append(what)
    _, fp16, _ = budget_rows(d)
    f = best(fp16) if fp16 else None
    rows = {r["label"]: r for r in d["rows"]}
    out = []
    for pick, axes in picks.items():
        what = " and ".join(axes)
        if pick is None:
            out.append(f"{d['dataset']} (secondary, {what}): no encoded point falls inside "
                       "the float16 curve's byte range")
            continue
        r, gain = rows[pick[0]], 100 * pick[1]
        control = ("the constant-T float16 curve at its bytes" if r["schedule"] == "constant"
                   else f"float16 {BUDGET_RATIO:g}x under the same {r['schedule']} schedule")
        line = (f"{d['dataset']} (secondary, {what}; Δ against {control}): the largest Δ is "
                f"{r['label']}, {gain:+.1f} points (top-1 {_pct(r)}, {r['top1']['n']} "
                f"seed(s), seed spread ±{_spread(r):.1f})")
        if f is not None and f["top1"]["mean"] > r["top1"]["mean"]:
            line += (f"; not a win over LPLD pruning alone: {f['label']} reaches {_pct(f)} at "
                     "the budget's logits bytes")
        elif f is not None:
            line += (f"; the best float16 at the budget's logits bytes, {f['label']} "
                     f"({_pct(f)}), is the goal line's control")
        out.append(line)
    return out


def findings(sets: list[dict[str, Any]], planned: list[str] | None = None) -> list[str]:
    """Per dataset, first the goal: the best encoded point against the best float16 pruning
    at equal bytes under any schedule (logits, then total bytes); why top-k does not win
    where it does not; what each schedule gives float16 itself; then the weaker
    same-schedule Δs, marked secondary; then the budget check."""
    out = [f"{name}: not in this run" for name in planned or []
           if name not in {d["dataset"] for d in sets}]
    for d in sets:
        out += [line for line in (headline(d), headline(d, "total_bytes"), why_topk(d))
                if line is not None]
        base, _, _ = budget_rows(d)
        for r in d["rows"]:
            if base is not None and r["family"] == "float16" and r["schedule"] != "constant":
                out.append(f"{d['dataset']}: the {r['schedule']} schedule alone moves float16 "
                           f"{BUDGET_RATIO:g}x from {_pct(base)} to {_pct(r)} "
                           f"(±{100 * (r['top1']['std'] or 0):.1f}): the control of the "
                           "secondary Δ of the encodings under that schedule")
        out += secondary(d)
        out += plateau_findings(d)
    return out


def figure(sets: list[dict[str, Any]], path: Path, device_name: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(sets), 2, figsize=(11, 4 * len(sets)), squeeze=False)
    markers = {"float16": "o-", "q8": "s", "q4": "D", "top": "^"}
    for row_axes, d in zip(axes, sets, strict=True):
        for ax, axis in zip(row_axes, ("logits_bytes", "total_bytes"), strict=True):
            for fam, style in markers.items():
                pts = sorted((r for r in d["rows"] if r["family"] == fam
                              and r["schedule"] == "constant"), key=lambda r: r[axis])
                if not pts:
                    continue
                ax.errorbar([r[axis] for r in pts], [100 * r["top1"]["mean"] for r in pts],
                            yerr=[100 * r["top1"]["std"] for r in pts], fmt=style, capsize=3,
                            label=fam if fam != "top" else "top-k (MR)")
                for r in pts:
                    ax.annotate(r["label"].replace("float16 ", ""),
                                (r[axis], 100 * r["top1"]["mean"]), fontsize=7,
                                textcoords="offset points", xytext=(3, 3))
            for sched, style in (("step", "x"), ("step+auto", "*")):
                pts = [r for r in d["rows"] if r["schedule"] == sched]
                ax.errorbar([r[axis] for r in pts], [100 * r["top1"]["mean"] for r in pts],
                            yerr=[100 * r["top1"]["std"] for r in pts], fmt=style, capsize=3,
                            label=f"{sched} T schedule", markersize=9)
            ax.set_xscale("log")
            ax.set_xlabel(f"label bytes ({'logits only' if axis == 'logits_bytes' else 'total'},"
                          " logical)")
            ax.set_ylabel("student top-1 (%)")
            ax.set_title(f"{d['dataset']} IPC{d['ipc']} ({device_name})")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=None, help="default 3 (quick: 1)")
    parser.add_argument("--datasets", default="fashion-mnist,fashion-mnist-pairs")
    parser.add_argument("--plateau", default="fashion-mnist,fashion-mnist-pairs",
                        help="datasets whose budget check (top-1 vs students of twice and "
                             "four times the epochs) runs; empty: none")
    parser.add_argument("--only-finished", action="store_true",
                        help="train nothing: summarise the students already in the store "
                             "(a run cut short; the JSON lists what is missing)")
    args = parser.parse_args(argv)

    from lpld_cli.device import resolve_device
    from lpld_cli.squeeze import SqueezeConfig, squeeze
    from lpld_cli.storage.store import Store

    started = time.perf_counter()
    device = resolve_device(args.device)
    jobs = args.jobs or default_jobs(device.type)
    threads = max(1, (os.cpu_count() or 1) // jobs) if device.type == "cpu" else 1
    seeds = list(range(args.seeds or (1 if args.quick else 3)))
    store = Store(args.store)
    wanted = args.datasets.split(",")
    runner = Runner(args.store, args.device, jobs, threads, args.data)
    sets = []
    for p in [q for q in plans(args.quick) if q.name in wanted]:
        log(f"frontier {p.name} ({'quick' if args.quick else 'full'}): {len(p.points)} points "
            f"x {len(seeds)} seeds")
        teacher = squeeze(store, SqueezeConfig(**{"dataset": p.name, **p.teacher}),
                          data_root=args.data, device=device)
        runner.results[("teacher", p.name)] = {"top1": teacher.metrics["top1"]}
        log(f"teacher {teacher.short}: top-1 {teacher.metrics['top1']:.4f}")
        runner.phase(f"recover {p.name}", {("recover", p.name): {
            "stage": "recover", "teacher": teacher.id,
            "config": {"ipc": p.ipc, "iterations": p.recover_iterations}}})
        images = runner.results[("recover", p.name)]["id"]
        runner.phase(f"relabel {p.name}", {("relabel", p.name): {
            "stage": "relabel", "images": images,
            "config": {"epochs": p.relabel_epochs, "batch_size": p.batch_size}}})
        full = runner.results[("relabel", p.name)]["id"]
        runner.phase(f"prune {p.name}", {
            ("prune", p.name, i, s): {"stage": "prune", "labels": full,
                                      "config": _prune_config(point, s),
                                      "tail_at": tail_temperatures(p.name)}
            for i, point in enumerate(p.points) for s in seeds},
            lambda k, r: f"{r['metrics']['rows']} rows {r['metrics'].get('encoding')}")
        pruned = {(p.name, i, s): runner.results[("prune", p.name, i, s)]["id"]
                  for i in range(len(p.points)) for s in seeds}
        # seed-major: a run cut short has every point for its first seeds
        tasks = {("train", p.name, i, s): {"stage": "train", "images": images,
                                           "labels": pruned[(p.name, i, s)],
                                           "config": _train_config(p, point, s)}
                 for s in seeds for i, point in enumerate(p.points)}
        if args.only_finished:
            from lpld_cli.train import TrainConfig

            tasks = {k: t for k, t in tasks.items() if store.cached(
                "student", TrainConfig(**t["config"]).identity(),
                [t["images"], t["labels"]]) is not None}
        runner.phase(f"train {p.name}", tasks, lambda k, r: f"top-1 {r['metrics']['top1']:.4f}")
        sets.append(summarise(p, runner, pruned, seeds, store))
        if p.name in args.plateau.split(","):
            sets[-1]["plateau"] = plateau(p, runner, pruned, seeds, images)

    info = device_info(device)
    name = ("frontier" + ("" if info["type"] == "cpu" else f"-{info['type']}")
            + ("-quick" if args.quick else ""))
    previous = args.out / f"{name}.json"
    merged = False
    if previous.is_file():  # datasets run separately (--datasets) share one results file
        import json

        done = {d["dataset"] for d in sets}
        old = json.loads(previous.read_text())
        kept = [d for d in old.get("sets", []) if d["dataset"] not in done]
        if kept:  # the other datasets' results (and their time) from the earlier run
            merged = True
            sets = kept + sets
            order = [q.name for q in plans(args.quick)]
            sets.sort(key=lambda d: order.index(d["dataset"]) if d["dataset"] in order else 99)
            wanted = [d["dataset"] for d in sets]
            started -= old.get("meta", {}).get("seconds", 0)
    png = figure(sets, args.out / f"{name}.png", info["name"])
    md = results_md_path(args.out)
    result = {
        "meta": {"quick": args.quick, "device": info, "jobs": jobs, "threads": threads,
                 "seeds": seeds, "datasets": wanted,
                 "command": "python benchmarks/frontier.py" + (" --quick" if args.quick else "")
                 + (f" --seeds {args.seeds}" if args.seeds else "")
                 + (" (one run per dataset with --datasets, merged)" if merged else ""),
                 "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                 "seconds": round(time.perf_counter() - started, 1),
                 "budget_ratio": BUDGET_RATIO, "store": str(args.store)},
        "sets": sets, "findings": findings(sets, [q.name for q in plans(args.quick)]),
        "figure": os.path.relpath(png, md.parent)}
    write_json(args.out / f"{name}.json", result)
    target = regenerate_results(args.out)
    log(f"wrote {args.out / (name + '.json')}, {png} and {target} "
        f"in {(time.perf_counter() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
