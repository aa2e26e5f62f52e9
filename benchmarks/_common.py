"""Shared helpers of the benchmark scripts: arguments, the stage runner, statistics,
diversity measures, and the RESULTS.md generator.

Every stage goes through lpld's Python API and one artifact store, so a finished run
is cached and an interrupted benchmark resumes by running the same command again.
Stages of one phase run in a pool of spawned worker processes (one torch thread
each on CPU: small batches of 28 px images run fastest that way).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from lpld_cli.storage.store import write_atomic

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
DEFAULT_OUT = BENCH / "results"
DEFAULT_STORE = BENCH / "lpld-store"  # ignored by git (`lpld-store/`)
DATASET = "fashion-mnist"


# ------------------------------------------------------------------ arguments
def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true",
                        help="the same code paths on a small teacher, fewer runs and epochs")
    parser.add_argument("--store", type=Path, default=DEFAULT_STORE,
                        help=f"artifact store (default {DEFAULT_STORE.relative_to(ROOT)})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="folder of the results JSON; RESULTS.md is written beside it "
                             "when it is the default folder, else inside it")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--data", default=None, help="Fashion-MNIST folder (default: found)")
    return parser


def results_md_path(out: Path) -> Path:
    """benchmarks/RESULTS.md for the default results folder, else OUT/RESULTS.md."""
    return BENCH / "RESULTS.md" if out.resolve() == DEFAULT_OUT.resolve() else out / "RESULTS.md"


def device_info(device: Any) -> dict[str, Any]:
    """What ran the figures: device type and name, CPU count, torch version."""
    import torch

    info: dict[str, Any] = {"type": device.type, "cpus": os.cpu_count(),
                            "torch": torch.__version__, "host_cpu": platform.processor()
                            or platform.machine()}
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
    else:
        info["name"] = f"CPU ({os.cpu_count()} cores)"
    return info


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ statistics
def finite(values: Iterable[Any]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def mean_std(values: Iterable[Any]) -> dict[str, Any]:
    """Mean and sample standard deviation (0 for one value) of the finite values."""
    vals = finite(values)
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return {"mean": statistics.fmean(vals), "std": std, "n": len(vals)}


def fmt_stat(stat: dict[str, Any] | None, scale: float = 100.0, digits: int = 1,
             signed: bool = False) -> str:
    """`mean ± std` (std only over several seeds), scaled and rounded, or `n/a`."""
    if not stat or stat.get("mean") is None:
        return "n/a"
    sign = "+" if signed and stat["mean"] >= 0 else ""
    text = f"{sign}{scale * stat['mean']:.{digits}f}"
    if stat.get("n", 1) > 1:
        text += f" ± {scale * stat['std']:.{digits}f}"
    return text


def fmt_pct(stat: dict[str, Any] | None) -> str:
    """Top-1 fractions in percent."""
    return fmt_stat(stat)


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} GB"


# ------------------------------------------------------------------ stage runner
def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def run_stage(task: dict[str, Any]) -> dict[str, Any]:
    """Run one stage (in a worker process) through lpld's Python API; return its result.

    task: {"stage": recover|relabel|prune|train, "store", "device", "config", and the
    parent ids: "teacher", "images", "labels"}.
    """
    import torch

    from lpld_cli.device import resolve_device
    from lpld_cli.storage.store import Store

    started = time.perf_counter()
    store = Store(task["store"])
    device = resolve_device(task["device"])
    stage, cfg = task["stage"], task["config"]
    if stage == "recover":
        from lpld_cli.recover import RecoverConfig, recover

        art = recover(store, RecoverConfig(**cfg), store.get(task["teacher"], kind="teacher"),
                      data_root=task.get("data"), device=device)
    elif stage == "relabel":
        from lpld_cli.relabel import RelabelConfig, relabel

        art = relabel(store, RelabelConfig(**cfg), store.get(task["images"], kind="images"),
                      device=device)
    elif stage == "prune":
        from lpld_cli.prune import PruneConfig, prune

        art = prune(store, PruneConfig(**cfg), store.get(task["labels"], kind="labels"),
                    tail_at=task.get("tail_at"))
    elif stage == "train":
        from lpld_cli.train import TrainConfig, train

        # A finished student is found without loading the dataset (train() loads it first).
        parents = [task["images"], *(task[k] for k in ("labels", "teacher") if task.get(k))]
        hit = store.cached("student", TrainConfig(**cfg).identity(), parents)
        if hit is not None:
            return {"id": hit.id, "cached": True, "metrics": hit.metrics,
                    "seconds": round(time.perf_counter() - started, 2)}
        labels = store.get(task["labels"], kind="labels") if task.get("labels") else None
        teacher = store.get(task["teacher"], kind="teacher") if task.get("teacher") else None
        art = train(store, TrainConfig(**cfg), store.get(task["images"], kind="images"),
                    labels, teacher, data_root=task.get("data"), device=device, eval_every=0)
    else:
        raise ValueError(f"unknown stage {stage!r}")
    del torch
    return {"id": art.id, "cached": art.cached, "metrics": art.metrics,
            "seconds": round(time.perf_counter() - started, 2)}


class Runner:
    """Runs the tasks of one phase (a dict key → task) and logs one line per finished task."""

    def __init__(self, store: Path, device: str, jobs: int, threads: int,
                 data: str | None = None) -> None:
        self.store, self.device, self.jobs, self.threads = str(store), device, jobs, threads
        self.data = data
        self.results: dict[Any, dict[str, Any]] = {}
        self.done = 0
        self.total = 0

    def phase(self, name: str, tasks: dict[Any, dict[str, Any]],
              describe: Callable[[Any, dict[str, Any]], str] | None = None) -> None:
        todo = {k: {**t, "store": self.store, "device": self.device, "data": self.data}
                for k, t in tasks.items() if k not in self.results}
        if not todo:
            return
        log(f"phase {name}: {len(todo)} runs on {self.jobs} worker(s)")
        started = time.perf_counter()
        count = 0

        def report(key: Any, result: dict[str, Any]) -> None:
            nonlocal count
            count += 1
            self.results[key] = result
            text = describe(key, result) if describe else ""
            state = "cached" if result["cached"] else f"{result['seconds']:.1f}s"
            log(f"  {name} [{count}/{len(todo)}] {_key_text(key)}: {text} ({state}; "
                f"phase {time.perf_counter() - started:.0f}s)")

        if self.jobs <= 1:
            _init_worker(self.threads)
            for key, task in todo.items():
                report(key, run_stage(task))
            return
        with ProcessPoolExecutor(self.jobs, mp_context=get_context("spawn"),
                                 initializer=_init_worker, initargs=(self.threads,)) as pool:
            futures = {pool.submit(run_stage, task): key for key, task in todo.items()}
            try:
                for future in as_completed(futures):
                    report(futures[future], future.result())
            except BaseException:
                for future in futures:
                    future.cancel()
                raise


def _key_text(key: Any) -> str:
    if isinstance(key, tuple):
        return " ".join(str(k) for k in key if k is not None)
    return str(key)


def default_jobs(device_type: str) -> int:
    return 1 if device_type == "cuda" else max(1, os.cpu_count() or 1)


# ------------------------------------------------------------------ RESULTS.md
def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(payload, indent=1, sort_keys=False, default=_json_default)
                 + "\n")


def publish(out: Path, name: str, result: dict[str, Any], started: float) -> int:
    """Write `out/name` and regenerate RESULTS.md from every results JSON; exit code 0."""
    path = out / name
    write_json(path, result)
    target = regenerate_results(out)
    log(f"wrote {path} and {target} in {time.perf_counter() - started:.0f}s")
    return 0


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _device_line(meta: dict[str, Any]) -> str:
    dev = meta.get("device", {})
    return (f"device: **{dev.get('name', '?')}** ({dev.get('type', '?')}, torch "
            f"{dev.get('torch', '?')}), {meta.get('jobs', 1)} worker process(es) × "
            f"{meta.get('threads', '?')} thread(s)")


def render_reproduce(res: dict[str, Any]) -> str:
    meta, tables = res["meta"], res["tables"]
    out = [f"## Reproduction on Fashion-MNIST, {meta['device']['name']} "
           f"({'quick' if meta['quick'] else 'full'} run)", "",
           f"Generated by `{meta['command']}` on {meta['finished']} in "
           f"{meta['seconds'] / 60:.1f} min; {_device_line(meta)}. Every figure below comes "
           f"from this device. Top-1 on the real 10,000-image test split, mean ± sample std "
           f"over seeds {meta['seeds']} (each seed varies recover, relabel, prune and train; "
           f"the teacher is one, seed 0).", ""]
    t = res["teacher"]
    out += [f"Teacher: {t['model']} (trained by `squeeze`), top-1 {100 * t['top1']:.2f}%; "
            f"`--bn-stats ema` teacher: the same weights, EMA class statistics.", ""]
    out += ["### Settings scaled down from the paper", ""]
    out += [f"- **{k}**: {v}" for k, v in meta["scaled_down"].items()]
    out += [""]
    if meta.get("cuts"):
        out += ["### Cut to fit the CPU budget (the headline rows are at preset settings)", ""]
        out += [f"- **{k}**: {v}" for k, v in meta["cuts"].items()]
        out += [""]
    if meta.get("estimate"):
        est = meta["estimate"]
        out += [f"Estimated before the run: {est['wall_hours']} h on {est['jobs']} workers ("
                + ", ".join(f"{k} {v['wall_seconds'] / 60:.0f} min"
                            for k, v in est["phases"].items())
                + f"), from the per-stage times of {est['rates_from']}; measured: "
                f"{meta['seconds'] / 3600:.2f} h.", ""]

    t3 = tables["table3"]
    out += ["### Table 3 analogue: label pruning, SRe²L vs CDA vs LPLD", "",
            "SRe²L and CDA keep their own label pool (whole stored epochs, `--granularity "
            "epoch`, random); LPLD uses its improved pool (`--granularity batch`, random). "
            "1× = the unpruned store. Label bytes: the label store on disk (mean over seeds).",
            ""]
    for ipc in t3["ipcs"]:
        ratios = t3.get("ratios_by_ipc", {}).get(str(ipc), t3["ratios"])
        header = [f"IPC{ipc}"] + [f"{r:g}×" for r in ratios]
        rows = []
        for method in t3["methods"]:
            cells = [fmt_pct(_top1(t3["rows"], ipc=ipc, method=method, ratio=r))
                     for r in ratios]
            rows.append([method, *cells])
        for method in t3["methods"]:
            bytes_row = [fmt_bytes((_find(t3["rows"], ipc=ipc, method=method, ratio=r) or {})
                                   .get("label_bytes")) for r in ratios]
            rows.append([f"label bytes ({method})", *bytes_row])
        out += [_table(header, rows), ""]

    t4 = tables["table4"]
    out += ["### Table 4 analogue: ablation (C = class batching, CS = class-wise BN target, "
            "ILP = batch-granularity label pool)", ""]
    for ipc in t4["ipcs"]:
        header = [f"IPC{ipc}", "C", "CS", "ILP"] + [f"{r:g}×" for r in t4["ratios"]]
        rows = []
        for spec in t4["variants"]:
            cells = [fmt_pct(_top1(t4["rows"], ipc=ipc, row=spec["row"], ratio=r))
                     for r in t4["ratios"]]
            rows.append([spec["label"], *("✓" if spec[f] else "–" for f in ("C", "CS", "ILP")),
                         *cells])
        out += [_table(header, rows), ""]

    t5 = tables["table5a"]
    out += [f"### Table 5a analogue: pruning metrics at {t5['ratio']:g}× (LPLD images, "
            f"IPC{t5['ipc']}, batch granularity)", ""]
    header = [f"IPC{t5['ipc']}", *t5["metrics"]]
    rows = [[sel, *(fmt_pct(_top1(t5["rows"], metric=m, select=sel)) for m in t5["metrics"])]
            for sel in t5["selections"]]
    rand = fmt_pct(_top1(t5["rows"], metric="random", select=None))
    rows.append(["random", rand, *[""] * (len(t5["metrics"]) - 1)])
    out += [_table(header, rows), ""]
    best = t5.get("best")
    if best:
        out += [f"Best metric: {best['metric']} / {best['select']} "
                f"{fmt_pct(best['top1'])} vs random {rand}.", ""]

    bn = tables["bn_stats"]
    out += [f"### `--bn-stats ema` vs `exact` (LPLD, IPC{bn['ipc']})", ""]
    header = ["class statistics"] + [f"{r:g}×" for r in bn["ratios"]] + ["self top-1"]
    rows = [[mode, *(fmt_pct(_top1(bn["rows"], bn_stats=mode, ratio=r)) for r in bn["ratios"]),
             fmt_pct((_find(bn["rows"], bn_stats=mode, ratio=bn["ratios"][0]) or {})
                     .get("self_top1"))]
            for mode in ("exact", "ema")]
    out += [_table(header, rows), ""]

    base = tables["baselines"]
    out += ["### Label baselines: stored soft labels vs online teacher vs hard labels", ""]
    header = ["IPC", "images", "stored 1×", f"stored {base['ratio']:g}×", "online teacher",
              "hard labels"]
    rows = []
    for row in base["rows"]:
        online = fmt_pct(row["online"]) if row.get("online") else "– (not run)"
        rows.append([row["ipc"], row["method"], fmt_pct(row.get("stored_1x")),
                     fmt_pct(row.get("stored_pruned")), online,
                     fmt_pct(row.get("hard"))])
    out += [_table(header, rows), ""]

    rob = tables["robustness"]
    out += ["### Label robustness (DD-Ranking): IOR and HLR", "",
            "IOR = top-1(distilled) − top-1(random real subset, same IPC and label pipeline); "
            f"HLR = top-1(full real data, hard labels) − top-1(distilled, hard labels). "
            f"{rob['hlr_reference']}", ""]
    header = ["IPC", "method", "IOR 1×", f"IOR {rob['ratio']:g}×", "HLR"]
    rows = [[r["ipc"], r["method"], _pp(r.get("ior_1x")), _pp(r.get("ior_pruned")),
             _pp(r.get("hlr"))] for r in rob["rows"]]
    out += [_table(header, rows), ""]

    div = tables["diversity"]
    out += ["### Diversity of every image set", "", div["definition"], ""]
    if div.get("real_sample_cosine") is not None:
        out += [f"Reference: the within-class cosine of the real sample itself is "
                f"{div['real_sample_cosine']:.4f}.", ""]
    header = ["IPC", "images", "cosine (↓ diverse)", "MMD² (↓ closer to real)", "self top-1"]
    rows = [[r["ipc"], r["method"], _num(r.get("cosine")), _num(r.get("mmd2")),
             fmt_pct(r.get("self_top1"))] for r in div["rows"]]
    out += [_table(header, rows), ""]

    conv = tables.get("convergence")
    if conv and conv["rows"]:
        out += ["### Convergence check: top-1 vs train epochs", "", conv["what"] + ".", ""]
        for ipc in sorted({r["ipc"] for r in conv["rows"]}):
            rows = [r for r in conv["rows"] if r["ipc"] == ipc]
            header = [f"IPC{ipc} (plan: {conv['budget'][str(ipc)]} epochs)",
                      *(f"{r['epochs']} ep" for r in rows)]
            out += [_table(header, [["top-1 (%)", *(fmt_pct({"mean": r["top1"], "n": 1})
                                                      if r["top1"] is not None else "n/a"
                                                      for r in rows)]]), ""]
    if res.get("figure"):
        out += [f"![accuracy vs label storage]({res['figure']})", "",
                "Fig. 1 analogue: top-1 vs label storage on disk (log x), one line per method.",
                ""]
    if res.get("findings"):
        out += ["### Where Fashion-MNIST agrees or disagrees with the paper", ""]
        out += [f"- {line}" for line in res["findings"]]
        out += [""]
    return "\n".join(out)


def _pp(stat: dict[str, Any] | None) -> str:
    """A difference of fractions in percentage points."""
    return fmt_stat(stat, signed=True)


def _num(stat: dict[str, Any] | None) -> str:
    return fmt_stat(stat, scale=1.0, digits=4)


def _find(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    """The first row whose fields equal `match`."""
    for row in rows:
        if all(row.get(k) == v for k, v in match.items()):
            return row
    return None


def _top1(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    return (_find(rows, **match) or {}).get("top1")


def render_speed(res: dict[str, Any]) -> str:
    meta, f = res["meta"], res["figures"]
    out = [f"## Speed ratios on {meta['device']['name']} ({'quick' if meta['quick'] else 'full'}"
           " run)", "",
           f"Generated by `{meta['command']}` on {meta['finished']}; "
           f"{_device_line(meta)}. Each ratio compares two measurements taken side by side "
           "in this one run.", ""]
    rows = []
    for fig in f.values():
        rows.append([fig["what"], fig["a_label"], _val(fig["a"], fig["unit"]), fig["b_label"],
                     _val(fig["b"], fig["unit"]), f"{fig['ratio']:.2f}×", fig.get("note", "")])
    out += [_table(["figure", "A", "value A", "B", "value B", "A / B", "note"], rows), ""]
    if res.get("notes"):
        out += [f"- {n}" for n in res["notes"]]
        out += [""]
    return "\n".join(out)


def _val(v: float, unit: str) -> str:
    if unit == "bytes":
        return fmt_bytes(v)
    if unit == "MB":
        return f"{v:.1f} MB"
    if unit == "share":
        return f"{100 * v:.1f}%"
    if unit == "ms":
        return f"{v:.2f} ms"
    return f"{v:.1f} {unit}"


def render_frontier(res: dict[str, Any]) -> str:
    """The accuracy-vs-label-bytes frontier (benchmarks/frontier.py)."""
    meta = res["meta"]
    out = [f"## Frontier: top-1 vs label bytes ({'quick, ' if meta['quick'] else ''}"
           f"{_device_line(meta)})", "",
           f"`{meta['command']}`, {len(meta['seeds'])} seed(s) "
           f"({meta['seconds'] / 60:.0f} min, {meta['finished']}). Bytes are the label "
           f"store's logical bytes; Δ = top-1 minus float16 pruning alone (LPLD) "
           f"interpolated at the same bytes (n/a outside its range); under a step schedule, "
           f"minus float16 at the budget's bytes under that same schedule (the control).",
           ""]
    for d in res["sets"]:
        st = d["settings"]
        teacher = d.get("teacher_top1")
        out += [f"### {d['dataset']} ({d['classes']} classes, IPC{d['ipc']})", "",
                (f"Teacher top-1 {100 * teacher:.1f}%; " if teacher is not None else "")
                + f"recover {st['recover_iterations']} iterations, relabel "
                f"{st['relabel_epochs']} epochs, students ConvNet w{st['student_width']} "
                f"for {st['train_epochs']} epochs (scaled down from the paper's 300).", ""]
        table = []
        for r in d["rows"]:
            def delta(axis: str, r: dict[str, Any] = r) -> str:
                v = r.get(f"vs_lpld_{axis}")
                return "n/a" if v is None else f"{100 * v:+.1f}"
            tail = r.get("tail_mass_t0")
            table.append([r["label"], r["encoding"], r["schedule"], r["rows"],
                          fmt_bytes(r["logits_bytes"]), fmt_bytes(r["total_bytes"]),
                          "-" if tail is None else f"{100 * tail:.1f}% / "
                          f"{100 * r['tail_mass_tmin']:.1f}%",
                          fmt_pct(r["top1"]), r["top1"]["n"], delta("logits_bytes"),
                          delta("total_bytes")])
        out += [_table(["point", "encoding", "T schedule", "rows", "logits", "total",
                        "top-k tail T₀/T_min", "top-1 %", "seeds", "Δ logits", "Δ total"],
                       table), ""]
        if d.get("missing"):
            out += [f"Not run (time ran out): {', '.join(d['missing'])}.", ""]
        if d.get("plateau"):  # the budget check: top-1 vs student epochs
            budgets = list(d["plateau"][0]["top1"])
            out += ["Budget check (top-1 % vs student epochs, same pools and seeds):", "",
                    _table(["point", *[f"{e} epochs" for e in budgets]],
                           [[r["label"], *[fmt_pct(r["top1"][e]) for e in budgets]]
                            for r in d["plateau"]]), ""]
    out += ["Findings:", ""] + [f"- {f}" for f in res["findings"]]
    if res.get("figure"):
        out += ["", f"![frontier]({res['figure']})"]
    return "\n".join(out)


def _verdicts(out: Path) -> list[str]:
    """The verdict table (benchmarks/verdicts.py) from the CPU reproduction (full, else
    quick) and the mechanism run beside it, if any."""
    from benchmarks.verdicts import render

    for suffix in ("", "-quick"):
        path = out / f"reproduce{suffix}.json"
        if path.is_file():
            mech = out / f"mechanism{suffix}.json"
            mechanism = json.loads(mech.read_text()) if mech.is_file() else None
            return [render(json.loads(path.read_text()), mechanism), ""]
    return []


def regenerate_results(out: Path, target: Path | None = None) -> Path:
    """Render RESULTS.md (default: `results_md_path(out)`) from every results JSON in `out`
    (never typed by hand)."""
    parts = ["# lpld benchmark results", "",
             "GENERATED by `benchmarks/reproduce.py` / `benchmarks/speed.py` from the JSON in "
             "`benchmarks/results/` — do not edit by hand; rerun a script to refresh it.", ""]
    target = target or results_md_path(out)
    parts += _verdicts(out)
    cpu_first = ("reproduce.json", "reproduce-quick.json")  # then other devices' runs
    reproduce = sorted(out.glob("reproduce*.json"),
                       key=lambda p: (p.name not in cpu_first, p.name))
    for path in [*reproduce, *sorted(out.glob("speed-*.json")),
                 *sorted(out.glob("frontier*.json"))]:
        full_twin = path.with_name(path.name.replace("-quick.json", ".json"))
        if path.name.endswith("-quick.json") and full_twin.is_file():
            continue  # a full run on the same device replaces its quick one
        res = json.loads(path.read_text())
        if res.get("figure"):  # its PNG sits beside the JSON: link it from RESULTS.md
            res["figure"] = os.path.relpath(out / Path(res["figure"]).name, target.parent)
        render = (render_reproduce if path.name.startswith("reproduce") else
                  render_frontier if path.name.startswith("frontier") else render_speed)
        parts += [render(res), ""]
    demo = out / "demo.json"
    if demo.is_file():  # benchmarks/demo.py: the README's first command, timed
        from benchmarks.demo import render as render_demo

        res = json.loads(demo.read_text())
        res["figure"] = os.path.relpath(out / res["figure"], target.parent)
        parts += [render_demo(res), ""]
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, "\n".join(parts).rstrip() + "\n")
    return target


if __name__ == "__main__":
    if sys.argv[1:2] == ["render"]:  # `python -m benchmarks._common render [RESULTS_DIR]`
        print(regenerate_results(Path(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_OUT))
        raise SystemExit(0)
    # one stage from a JSON task: `python -m benchmarks._common TASK`
    _task = json.loads(sys.argv[1])
    _init_worker(int(_task.get("threads", 1)))
    print(json.dumps(run_stage(_task), default=_json_default))
