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
  on one top-k point.

Bytes are the label store's logical bytes (exact, independent of compression; the disk
bytes are in the JSON too): "logits" = the label arrays only, "total" = with the
augmentation and sampler arrays. A point beats LPLD pruning when its top-1 is above the
float16 curve interpolated (linearly in log bytes) at its bytes.

The CPU run is scaled down (small teacher, fewer relabel/train epochs than the paper's 300;
see `meta`), so compare points within one run. `--quick` runs the same code paths smaller.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks._env import base_parser, default_jobs, device_info, log, results_md_path, write_json
from benchmarks._render import regenerate_results
from benchmarks._runner import Runner
from benchmarks._stats import mean_std

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
    # Sized for a 2-core CPU shared by several jobs (see meta): one tenth of the paper's
    # epochs, small teachers and students. --quick: the same paths, five times smaller.
    scale = 5 if quick else 1
    fashion = DatasetPlan(
        "fashion-mnist", 10, ipc=10, ks=(1, 2, 3, 5), schedule_k=2,
        teacher={"width": 16, "teacher_epochs": 1, "train_subset": 10000},
        recover_iterations=200 // scale, relabel_epochs=50 // scale,
        train_epochs=50 // scale)
    pairs = DatasetPlan(
        "fashion-mnist-pairs", 100, ipc=1, ks=(5, 10, 20, 50), schedule_k=10,
        teacher={"width": 32, "teacher_epochs": 2, "train_subset": 20000},
        recover_iterations=200 // scale, relabel_epochs=50 // scale,
        train_epochs=50 // scale)
    for p in (fashion, pairs):
        fp16 = slot_bytes({}, p.classes)
        for r in FP16_RATIOS:
            p.points.append({"family": "float16", "label": f"float16 {r:g}x", "ratio": r,
                             "encoding": {}, "schedule": "constant"})
        budget = [("q8", {"logits_dtype": "q8"}), ("q4", {"logits_dtype": "q4"})]
        budget += [(f"top-{k}", {"topk": k}) for k in p.ks]
        for label, enc in budget:
            r = BUDGET_RATIO * slot_bytes(enc, p.classes) / fp16
            p.points.append({"family": label.split("-")[0] if "top" in label else label,
                             "label": f"{label} {r:g}x", "ratio": max(1.0, r),
                             "encoding": enc, "schedule": "constant"})
        # the schedules on one top-k point, and on float16 at the same bytes (the control:
        # a schedule's gain is compared with what it gives LPLD pruning alone)
        for sched in ("step", "step+auto"):
            for base in (f"top-{p.schedule_k} ", f"float16 {BUDGET_RATIO:g}x"):
                src = next(q for q in p.points if q["label"].startswith(base)
                           and q["schedule"] == "constant")
                p.points.append({**src, "label": f"{src['label']} {sched}", "schedule": sched})
    return [fashion, pairs]


def _prune_config(point: dict[str, Any], seed: int) -> dict[str, Any]:
    return {"ratio": point["ratio"], "metric": "random", "seed": seed, **point["encoding"]}


PLATEAU_EPOCHS = (100, 200)  # the budget check: these student epochs besides the plan's


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
    return {"dataset": p.name, "classes": p.classes, "ipc": p.ipc, "rows": rows,
            "missing": missing,
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
        for e in PLATEAU_EPOCHS for s in seeds for i in points},
        lambda k, r: f"top-1 {r['metrics']['top1']:.4f}")
    rows = []
    for i in points:
        by_epochs = {p.train_epochs: [runner.results[("train", p.name, i, s)] for s in seeds]}
        by_epochs |= {e: [runner.results[("plateau", p.name, i, e, s)] for s in seeds]
                      for e in PLATEAU_EPOCHS}
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
        out.append(f"{d['dataset']} budget check, students of {e} epochs: best top-k "
                   f"{k['label']} {100 * k['top1'][e]['mean']:.1f}% vs best float16 "
                   f"{f['label']} {100 * f['top1'][e]['mean']:.1f}% ({gain:+.1f} points, "
                   f"seed spread ±{spread:.1f})")
    return out


def findings(sets: list[dict[str, Any]], planned: list[str] | None = None) -> list[str]:
    """Per dataset: the best point against LPLD pruning alone at equal bytes and under the
    same temperature schedule, and what each schedule gives float16 pruning itself."""
    out = [f"{name}: not run (time ran out on the shared CPU)" for name in planned or []
           if name not in {d["dataset"] for d in sets}]
    for d in sets:
        base = next((r for r in d["rows"] if r["family"] == "float16"
                     and r["schedule"] == "constant" and r["ratio"] == BUDGET_RATIO), None)
        for r in d["rows"]:
            if base is not None and r["family"] == "float16" and r["schedule"] != "constant":
                out.append(f"{d['dataset']}: the {r['schedule']} schedule alone moves float16 "
                           f"{BUDGET_RATIO:g}x from {100 * base['top1']['mean']:.1f}% to "
                           f"{100 * r['top1']['mean']:.1f}% (±{100 * r['top1']['std']:.1f}): "
                           "the encodings under that schedule are compared with this control")
        budget = [r for r in d["rows"] if abs(r["logits_bytes"] / base["logits_bytes"] - 1) < 0.25
                  ] if base is not None else []
        fp16 = [r for r in budget if r["family"] == "float16"]
        enc = [r for r in budget if r["family"] != "float16"]
        if fp16 and enc:  # the fair question: the best of each at these bytes, any schedule
            f, e = (max(rs, key=lambda r: r["top1"]["mean"]) for rs in (fp16, enc))
            gain = 100 * (e["top1"]["mean"] - f["top1"]["mean"])
            spread = 100 * max(e["top1"]["std"] or 0, f["top1"]["std"] or 0)
            verdict = ("beats" if gain > spread else "does not beat" if gain < -spread
                       else "is within the seed spread of")
            out.append(f"{d['dataset']}: at the bytes of float16 {BUDGET_RATIO:g}x (±25%), under "
                       f"any schedule, the best encoded point {e['label']} "
                       f"({100 * e['top1']['mean']:.1f}%) {verdict} the best float16 pruning, "
                       f"{f['label']} ({100 * f['top1']['mean']:.1f}%): {gain:+.1f} points, "
                       f"seed spread ±{spread:.1f}")
        for axis, what in (("logits_bytes", "logits only"), ("total_bytes", "total")):
            cands = [r for r in d["rows"] if r["family"] != "float16"
                     and r.get(f"vs_lpld_{axis}") is not None]
            if not cands:
                out.append(f"{d['dataset']} ({what}): no point falls inside the float16 "
                           f"curve's byte range")
                continue
            best = max(cands, key=lambda r: r[f"vs_lpld_{axis}"])
            gain = 100 * best[f"vs_lpld_{axis}"]
            spread = 100 * (best["top1"]["std"] or 0)
            verdict = "beats" if gain > 0 else "does not beat"
            noise = (f"; within the seed spread ±{spread:.1f}, so not significant"
                     if abs(gain) <= spread else f"; seed spread ±{spread:.1f}")
            out.append(f"{d['dataset']} ({what}): best point {best['label']} ({best['encoding']},"
                       f" {best['schedule']}) {verdict} LPLD pruning alone at equal bytes and "
                       f"the same schedule by "
                       f"{gain:+.1f} points (top-1 {100 * best['top1']['mean']:.1f}%, "
                       f"{best['top1']['n']} seeds{noise})")
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
                        help="datasets whose budget check (top-1 vs student epochs "
                             f"{PLATEAU_EPOCHS}) runs; empty: none")
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
                                      "tail_at": {"tail_mass_t0": 20.0, "tail_mass_tmin": 2.0}}
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
    if previous.is_file():  # datasets run separately (--datasets) share one results file
        import json

        done = {d["dataset"] for d in sets}
        old = json.loads(previous.read_text())
        sets = [d for d in old.get("sets", []) if d["dataset"] not in done] + sets
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
                 + " (one run per dataset with --datasets, merged)",
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
