"""The diversity mechanism, measured: LPLD vs SRe²L images at IPC10 on Fashion-MNIST.

    python benchmarks/mechanism.py            # the full sweep (~25 min on a 2-core CPU)
    python benchmarks/mechanism.py --quick    # the same code paths in a few minutes

Paper Table 1 claims class-wise batching with class-wise BN targets (LPLD) makes the
images of one class more diverse than SRe²L's. This script measures, through lpld's own
recover (`lpld_cli.recover`) and diversity (`lpld_cli.reports.diversity`) code:

- within-class cosine and MMD² vs recover iterations (100/200/500/1000 at the preset
  r_bn) and vs r_bn (0.01/0.05/0.2 at the preset's 500 iterations), per method;
- a trace of one synthesis per method: the objective's per-layer BN terms (mean and
  variance separately, as recover computes them, via `synthesize(on_terms=…)`) over
  iterations, and at checkpoints the *class-wise* terms of the current images (each
  class's IPC images against that class's statistics, unaugmented: the same measure for
  both methods) with their within-class cosine — does the class-wise variance term
  converge, and do the images spread as it does? The real-image floor (IPC random real
  images per class under the same measure) is the level a perfect match would reach.

Writes `results/mechanism[-<device>][-quick].json`; rerunning reuses the store's images.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._env import (  # noqa: E402
    DATASET,
    base_parser,
    default_jobs,
    device_info,
    log,
    write_json,
)
from benchmarks._runner import Runner  # noqa: E402
from benchmarks._stats import mean_std  # noqa: E402

METHODS = ("lpld", "sre2l")
IPC = 10


def sweep_settings(quick: bool) -> dict[str, Any]:
    from lpld_cli.data.presets import get_preset

    p = get_preset(DATASET)
    if quick:
        return {"iterations": [10, 30], "r_bn": [0.01, p.r_bn, 0.2], "at_iterations": 30,
                "r_bn_default": p.r_bn, "seeds": [0], "trace_iterations": 30, "every": 5}
    return {"iterations": [100, 200, 500, 1000], "r_bn": [0.01, p.r_bn, 0.2],
            "at_iterations": p.recover_iterations, "r_bn_default": p.r_bn, "seeds": [0],
            "trace_iterations": p.recover_iterations, "every": 25}


def sweep_tasks(sw: dict[str, Any], teacher_id: str) -> dict[tuple, dict[str, Any]]:
    """Recover runs keyed (method, iterations, r_bn, seed): the iterations sweep at the
    preset r_bn and the r_bn sweep at the preset iterations."""
    points = {(it, sw["r_bn_default"]) for it in sw["iterations"]}
    points |= {(sw["at_iterations"], r) for r in sw["r_bn"]}
    tasks = {}
    for method in METHODS:
        for it, r in sorted(points):
            for seed in sw["seeds"]:
                cfg = {"ipc": IPC, "method": method, "iterations": it, "seed": seed}
                if r != sw["r_bn_default"]:  # the preset's r_bn stays implicit: same artifact
                    cfg["r_bn"] = r  # as the reproduction's images
                tasks[(method, it, r, seed)] = {"stage": "recover", "teacher": teacher_id,
                                                "config": cfg}
    return tasks


def estimate_seconds(quick: bool, rates: dict[str, Any], jobs: int) -> float:
    """Wall seconds from reproduce's measured rates: the sweep's recovers not already made by
    the reproduction (its preset point), on `jobs` workers, then the two traces."""
    sw = sweep_settings(quick)
    table = rates["recover_per_image_iteration"]
    rate = table[min(table, key=lambda k: abs(int(k) - IPC))]
    points = {(it, sw["r_bn_default"]) for it in sw["iterations"]}
    points |= {(sw["at_iterations"], r) for r in sw["r_bn"]}
    points.discard((sw["at_iterations"], sw["r_bn_default"]))
    per_method = sum(it for it, _ in points) * len(sw["seeds"]) * IPC * 10 * rate
    sweep = per_method * len(METHODS) / min(jobs, len(METHODS))
    traces = len(METHODS) * sw["trace_iterations"] * IPC * 10 * rate / min(jobs, len(METHODS))
    return sweep + traces + 60.0  # + diversity of the sweep's images


def class_wise(net: Any, x: Any, labels: Any, device: Any) -> dict[str, Any]:
    """Each class's images against its class statistics (recover's bn_terms, unaugmented)
    and their within-class cosine (lpld_cli.reports.diversity).

    x: normalised images [N, C, H, W], `labels` [N], every class with the same count."""
    import torch

    from lpld_cli.models.bn_stats import bn_layers
    from lpld_cli.recover import bn_targets, bn_terms
    from lpld_cli.reports.diversity import features, within_class_cosine

    order = torch.argsort(labels, stable=True)
    xs, ls = x[order].to(device), labels[order]
    classes = ls.unique().tolist()
    per_class = [bn_targets(net, [c], "class") for c in classes]
    layers = list(bn_layers(net.model).values())
    t_mean = [torch.stack([pc[0][i] for pc in per_class]).to(device) for i in range(len(layers))]
    t_var = [torch.stack([pc[1][i] for pc in per_class]).to(device) for i in range(len(layers))]
    captured: list[tuple[int, torch.Tensor]] = []
    hooks = [bn.register_forward_pre_hook(lambda _m, inp, i=i: captured.append((i, inp[0])))
             for i, bn in enumerate(layers)]
    try:
        with torch.no_grad():
            net.model(xs)
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        means, variances = bn_terms(captured, len(classes), t_mean, t_var)
    mean = torch.tensor(net.data["mean"], device=device).view(1, -1, 1, 1)
    std = torch.tensor(net.data["std"], device=device).view(1, -1, 1, 1)
    pixels = (xs * std + mean).clamp(0, 1)
    cos, _ = within_class_cosine(features(net, pixels, device), ls)
    return {"mean": [float(m.mean()) for m in means], "var": [float(v.mean()) for v in variances],
            "cosine": cos}


def trace(net: Any, method: str, iterations: int, every: int, seed: int,
          device: Any) -> dict[str, Any]:
    """One synthesis of every class at IPC10 (as recover runs it), its terms recorded."""
    import torch

    from lpld_cli.data.presets import get_preset
    from lpld_cli.recover import RecoverConfig, class_unit, mixed_unit, synthesize

    cfg = RecoverConfig(ipc=IPC, method=method, iterations=iterations, seed=seed).resolved(
        get_preset(DATASET), DATASET)
    k = net.num_classes
    if cfg.batching == "class":
        units = [class_unit(net, c, IPC, cfg.bn_target) for c in range(k)]
    else:
        units = [mixed_unit(net, list(range(k)), j, cfg.bn_target) for j in range(IPC)]
    labels = torch.cat([u.labels for u in units])
    objective: list[dict[str, Any]] = []
    checkpoints: list[dict[str, Any]] = []

    def on_terms(it, images, ce, means, variances):
        if it % every and it != iterations - 1:
            return
        objective.append({"iteration": it, "ce": float(ce.mean()),
                          "mean": [float(m.mean()) for m in means],
                          "var": [float(v.mean()) for v in variances]})
        checkpoints.append({"iteration": it, **class_wise(net, images, labels.cpu(), device)})

    final = synthesize(net, cfg, units, device, on_terms=on_terms)
    checkpoints.append({"iteration": iterations, **class_wise(net, final, labels.cpu(), device)})
    return {"method": method, "bn_target": cfg.bn_target, "batching": cfg.batching,
            "iterations": iterations, "r_bn": cfg.r_bn, "seed": seed,
            "objective": objective, "class_wise": checkpoints}


def _trace_job(a: tuple) -> dict[str, Any]:
    """`trace` in a worker process: (store, teacher id, method, iterations, every, seed,
    device, threads)."""
    import torch

    from lpld_cli.device import resolve_device
    from lpld_cli.models.teacher import load_teacher
    from lpld_cli.storage.store import Store

    store, teacher_id, method, iterations, every, seed, device_name, threads = a
    torch.set_num_threads(threads)
    device = resolve_device(device_name)
    net = load_teacher(Store(store).get(teacher_id, kind="teacher"), device)
    return trace(net, method, iterations, every, seed, device)


def real_floor(net: Any, data_root: str | None, seed: int, device: Any) -> dict[str, Any]:
    """The class-wise measure on IPC random real images per class: a perfect match's level."""

    from lpld_cli.data.augment import normalise
    from lpld_cli.data.datasets import load_dataset

    data = load_dataset(DATASET, data_root)
    images, labels = data.sample_train_images(IPC, seed)
    return class_wise(net, normalise(images, net.data["mean"], net.data["std"]), labels, device)


def findings(res: dict[str, Any]) -> list[str]:
    """Statements computed from the numbers, each beside the paper's claim."""
    out = []
    rows = res["sweep"]["rows"]

    def cos(method: str, it: int, r: float) -> float | None:
        row = next((x for x in rows if x["method"] == method and x["iterations"] == it
                    and x["r_bn"] == r), None)
        return row["cosine"]["mean"] if row else None

    holds, fails = [], []
    for row in rows:
        if row["method"] != "lpld":
            continue
        a, b = row["cosine"]["mean"], cos("sre2l", row["iterations"], row["r_bn"])
        if a is None or b is None:
            continue
        (holds if a < b else fails).append(f"{row['iterations']} it / r_bn {row['r_bn']:g} "
                                           f"({a:.4f} vs {b:.4f})")
    out.append("Table 1 claim (LPLD images more diverse: lower within-class cosine than "
               f"SRe²L) holds at: {', '.join(holds) or 'no setting'}; does not hold at: "
               f"{', '.join(fails) or 'no setting'}.")
    floor = res["real_floor"]
    for method, tr in res["trace"].items():
        cw = tr["class_wise"]
        first, last = cw[0], cw[-1]
        var0, var1 = sum(first["var"]), sum(last["var"])
        out.append(
            f"{method} ({tr['batching']} batching, {tr['bn_target']} BN target, "
            f"{tr['iterations']} iterations): class-wise variance term (sum over layers) "
            f"{var0:.3g} → {var1:.3g} (real-image floor {sum(floor['var']):.3g}); class-wise "
            f"mean term {sum(first['mean']):.3g} → {sum(last['mean']):.3g} (floor "
            f"{sum(floor['mean']):.3g}); within-class cosine {first['cosine']:.4f} → "
            f"{last['cosine']:.4f} (real {floor['cosine']:.4f}).")
    return out


def run(args: Any, quick: bool, store_path: Path, jobs: int | None = None) -> dict[str, Any]:
    """Run the mechanism measurements into `store_path`; return the result dict (written)."""
    import torch

    from benchmarks.reproduce import settings as plan_settings
    from lpld_cli.device import resolve_device
    from lpld_cli.models.teacher import load_teacher
    from lpld_cli.reports.diversity import diversity
    from lpld_cli.squeeze import SqueezeConfig, squeeze
    from lpld_cli.storage.store import Store

    started = time.perf_counter()
    device = resolve_device(args.device)
    jobs = jobs or default_jobs(device.type)
    threads = max(1, (os.cpu_count() or 1) // jobs) if device.type == "cpu" else 1
    store = Store(store_path)
    sw = sweep_settings(quick)
    teacher_cfg = plan_settings(quick).teacher
    teacher = squeeze(store, SqueezeConfig(**teacher_cfg), data_root=args.data, device=device)
    log(f"mechanism ({'quick' if quick else 'full'}) on {device}: teacher {teacher.short}")

    runner = Runner(store_path, args.device, jobs, threads, args.data)
    tasks = sweep_tasks(sw, teacher.id)
    runner.phase("recover", tasks, lambda k, r: f"self top-1 {r['metrics']['self_top1']:.3f}")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    arts = {key: store.get(runner.results[key]["id"], kind="images") for key in tasks}
    div = {row["artifact"]: row for row in diversity(store, list(arts.values()),
                                                     data_root=args.data, device=device)
           if row["artifact"]}
    rows = []
    points = sorted({k[:3] for k in tasks})
    for method, it, r in points:
        keys = [k for k in tasks if k[:3] == (method, it, r)]
        rows.append({"method": method, "iterations": it, "r_bn": r,
                     "cosine": mean_std(div[arts[k].id]["cosine"] for k in keys),
                     "mmd2": mean_std(div[arts[k].id]["mmd2"] for k in keys),
                     "self_top1": mean_std(arts[k].metrics["self_top1"] for k in keys),
                     "seconds": mean_std(runner.results[k]["seconds"] for k in keys),
                     "ids": [arts[k].id for k in keys]})

    net = load_teacher(teacher, device)
    t0 = time.perf_counter()
    jobs_args = [(str(store_path), teacher.id, method, sw["trace_iterations"], sw["every"],
                  sw["seeds"][0], args.device, threads) for method in METHODS]
    if jobs > 1:  # one synthesis per worker, as the sweep's
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        with ProcessPoolExecutor(min(jobs, len(METHODS)), mp_context=get_context("spawn")) as ex:
            traces = dict(zip(METHODS, ex.map(_trace_job, jobs_args), strict=True))
    else:
        traces = {method: _trace_job(a) for method, a in zip(METHODS, jobs_args, strict=True)}
    log(f"traces: {sw['trace_iterations']} iterations in {time.perf_counter() - t0:.0f}s")
    from lpld_cli.models.bn_stats import bn_layers

    info = device_info(device)
    name = ("mechanism" + ("" if info["type"] == "cpu" else f"-{info['type']}")
            + ("-quick" if quick else ""))
    res: dict[str, Any] = {
        "meta": {"quick": quick, "device": info, "jobs": jobs, "threads": threads,
                 "command": "python benchmarks/mechanism.py" + (" --quick" if quick else ""),
                 "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                 "seconds": round(time.perf_counter() - started, 1), "ipc": IPC,
                 "settings": sw, "teacher_config": teacher_cfg, "store": str(store_path)},
        "teacher": {"id": teacher.id, "top1": teacher.metrics["top1"]},
        "sweep": {"rows": rows, "definition": "lpld_cli.reports.diversity: within-class "
                  "cosine of the teacher's penultimate features (lower: more diverse) and "
                  "MMD² to 100 real images per class; mean ± std over the sweep's seeds"},
        "layers": list(bn_layers(net.model)),
        "trace": traces,
        "real_floor": real_floor(net, args.data, sw["seeds"][0], device),
    }
    res["findings"] = findings(res)
    write_json(args.out / f"{name}.json", res)
    log(f"wrote {args.out / (name + '.json')} in {(time.perf_counter() - started) / 60:.1f} min")
    return res


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=None,
                        help="worker processes (default: one per CPU core on CPU, 1 on CUDA)")
    args = parser.parse_args(argv)
    res = run(args, args.quick, args.store, args.jobs)
    for line in res["findings"]:
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
