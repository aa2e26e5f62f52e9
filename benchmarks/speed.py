"""Speed ratios of lpld's stages, each measured side by side in one run.

    python benchmarks/speed.py [--quick] [--device auto|cpu|cuda]

- recover: images/s with every class in one optimisation step vs one class per step;
- relabel: rows/s vs a pure teacher forward over the very same augmented batches;
- train: steps/s with stored labels vs hard labels vs the online teacher, and the share
  of step time spent waiting for labels;
- storage: label bytes on disk (Zarr) vs the authors' per-batch torch.save layout;
- memory: peak RSS of relabel and train at E = 300 vs E = 30 (each in a subprocess,
  read with getrusage(RUSAGE_CHILDREN) by a wrapper process);
- dist (CPU): recover images/s with 2 processes vs 1 (gloo ranks launched as torchrun
  would, one torch thread each; the same command and artifact, `--force`).

Writes `results/speed-<device>.json` (`speed-<device>-quick.json` with --quick) and
regenerates RESULTS.md. Timing runs use a scratch store (forced recomputation) beside
the artifact store, which itself only caches the teacher and the image set.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import dist_speed  # noqa: E402
from benchmarks._env import DATASET, ROOT, base_parser, device_info, log, write_json  # noqa: E402
from benchmarks._render import publish, regenerate_results  # noqa: E402
from benchmarks.reproduce import settings  # noqa: E402

TRAIN_REPEATS = 2
# RSS wrapper: runs one stage in a child and prints the child's peak RSS in KiB.
_RSS_WRAPPER = (
    "import resource, subprocess, sys\n"
    "proc = subprocess.run([sys.executable, '-m', 'benchmarks._runner', sys.argv[1]], "
    "capture_output=True, text=True)\n"
    "sys.stderr.write(proc.stderr[-2000:])\n"
    "print(proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else '{}')\n"
    "print(proc.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
)


def peak_rss_mb(task: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """Peak RSS (MB) of one stage run in a fresh grandchild process, and its result."""
    proc = subprocess.run([sys.executable, "-c", _RSS_WRAPPER, json.dumps(task)],
                          capture_output=True, text=True, cwd=ROOT, check=False)
    try:
        result_line, last = proc.stdout.strip().splitlines()[-2:]
        code, kib = last.split()
    except ValueError:
        raise RuntimeError(f"RSS run failed: {proc.stderr[-2000:]}") from None
    if int(code) != 0:
        raise RuntimeError(f"RSS run failed (exit {code}): {proc.stderr[-2000:]}")
    return int(kib) / 1024, json.loads(result_line)


def figure(what: str, a_label: str, a: float, b_label: str, b: float, unit: str,
           target: float | None = None, note: str = "", above: bool = True) -> dict[str, Any]:
    """One A-vs-B figure; `target` is a floor on A / B (a ceiling when not `above`)."""
    ratio = a / b if b else float("nan")
    out = {"what": what, "a_label": a_label, "a": a, "b_label": b_label, "b": b,
           "unit": unit, "ratio": ratio, "note": note}
    if target is not None:
        met = ratio >= target if above else ratio <= target
        out.update(target=target, meets_target=bool(met),
                   note=f"target {'≥' if above else '≤'} {target:.3g}×: "
                        f"{'met' if met else 'MISSED'}" + (f"; {note}" if note else ""))
    return out


def synchronize(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


STARTUP_REPEATS = 5


def _wall(cmd: list[str], env: dict[str, str]) -> float:
    """Best wall time of STARTUP_REPEATS runs of `cmd` (a fresh interpreter each time)."""
    best = float("inf")
    for _ in range(STARTUP_REPEATS):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
        best = min(best, time.perf_counter() - t0)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr[-2000:]}")
    return best


def startup_figures(work: Path, data: str | None) -> dict[str, Any]:
    """Commands that compute nothing (help, ls, show, a cached stage) vs `import torch`.

    Each is a fresh `python -m lpld_cli …` process, best of STARTUP_REPEATS; the cached
    stage is a tiny squeeze made once beforehand in a scratch store.
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    store = str(work / "startup-store")
    lpld = [sys.executable, "-m", "lpld_cli"]
    squeeze = [*lpld, "squeeze", "--train-subset", "500", "--teacher-epochs", "1", "--width",
               "8", "--store", store, *(["--data", data] if data else [])]
    made = subprocess.run([*squeeze, "--json"], capture_output=True, text=True, cwd=ROOT,
                          env=env, check=True)
    teacher = json.loads(made.stdout)["artifact"]["id"]
    torch_s = _wall([sys.executable, "-c", "import torch"], env)
    log(f"python -c 'import torch': {torch_s:.2f}s")
    figures = {}
    for key, label, cmd in (
            ("help", "lpld --help", [*lpld, "--help"]),
            ("ls", "lpld ls", [*lpld, "ls", "--store", store]),
            ("show", "lpld show ID", [*lpld, "show", teacher[:12], "--store", store]),
            ("cached", "lpld squeeze (cached)", squeeze)):
        seconds = _wall(cmd, env)
        log(f"{label}: {seconds:.2f}s")
        figures[f"startup_{key}"] = figure(
            f"wall time of a command that computes nothing (best of {STARTUP_REPEATS} fresh "
            "processes)", label, seconds, "python -c 'import torch'", torch_s, "s",
            note=f"{seconds:.2f} s; goal < 1 s on the 2-core CPU; load average "
                 f"{os.getloadavg()[0]:.1f} while measured")
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads for every timed stage (default 1: what the "
                             "reproduction's workers use)")
    parser.add_argument("--only", choices=("startup",), default=None,
                        help="measure only this part and merge it into the existing "
                             "speed-<device>.json (its figures say which run made them)")
    args = parser.parse_args(argv)
    if args.only == "startup":
        return startup_only(args)

    import torch

    from benchmarks.relabel_speed import forward_profile
    from lpld_cli.data.presets import get_preset
    from lpld_cli.device import resolve_device
    from lpld_cli.recover import RecoverConfig, recover
    from lpld_cli.relabel import RelabelConfig, relabel
    from lpld_cli.reports.storage import label_row
    from lpld_cli.squeeze import SqueezeConfig, squeeze
    from lpld_cli.storage.store import Store
    from lpld_cli.train import TrainConfig, train

    started = time.perf_counter()
    device = resolve_device(args.device)
    s = settings(args.quick)
    quick = args.quick
    rec_iters = 60 if quick else 500
    relabel_epochs = 30 if quick else 300
    train_epochs = 30 if quick else 100
    ipc = 10
    store = Store(args.store)
    log(f"speed ({'quick' if quick else 'full'}) on {device}, store {args.store}")

    teacher = squeeze(store, SqueezeConfig(**s.teacher), data_root=args.data, device=device)
    images = recover(store, RecoverConfig(ipc=ipc, method="lpld", seed=0,
                                          iterations=s.recover_iterations[ipc]),
                     teacher, data_root=args.data, device=device)
    log(f"teacher {teacher.short}, images {images.short}")
    if device.type == "cpu":
        torch.set_num_threads(args.threads)

    scratch_root = Path(tempfile.mkdtemp(prefix="lpld-speed-", dir=Path(args.store).parent))
    figures: dict[str, Any] = {}
    notes: list[str] = []
    try:
        scratch = Store(scratch_root / "store")
        for art in (teacher, images):
            shutil.copytree(art.path, scratch.root / "objects" / art.kind / art.id)
        teacher_s = scratch.get(teacher.id, kind="teacher")
        images_s = scratch.get(images.id, kind="images")

        # -- recover: all classes per step vs one class per step, on every core (as
        # `lpld recover` runs: batching units is what lets more threads help). Timed is the
        # synthesis the command records (seconds_per_class × classes: optimisation and PNG
        # writes), not process start, teacher load or the self-top-1 pass.
        timings = {}
        if device.type == "cpu":
            torch.set_num_threads(os.cpu_count() or 1)
        for label, per_step in (("all", None), ("one", 1)):
            cfg = RecoverConfig(ipc=ipc, method="lpld", seed=1, iterations=rec_iters,
                                classes_per_step=per_step)
            art = recover(scratch, cfg, teacher_s, data_root=args.data, device=device,
                          force=True)
            timings[label] = art.metrics["seconds_per_class"] * art.metrics["classes"]
            n_images = art.metrics["images"]
            log(f"recover classes per step {per_step or 'all'}: {timings[label]:.1f}s "
                "of synthesis")
        per_image_it = {k: 1000 * v / (n_images * rec_iters) for k, v in timings.items()}
        figures["recover"] = figure(
            f"recover images/s (lpld, IPC{ipc}, {rec_iters} iterations, synthesis only, "
            f"{torch.get_num_threads()} threads)",
            "all classes per step", n_images / timings["all"], "one class per step",
            n_images / timings["one"], "images/s", target=2.0,
            note="per image-iteration: {all:.3f} ms with all classes per step, {one:.3f} ms "
                 "with one".format(**per_image_it))
        if device.type == "cpu":
            torch.set_num_threads(args.threads)

        # -- relabel: rows/s vs a pure teacher forward over the same augmented batches
        # (the same groups of K rows; benchmarks/relabel_speed.py also at ImageNet shape)
        rl_config = RelabelConfig(epochs=relabel_epochs, seed=0)
        rl = relabel(scratch, rl_config, images_s, device=device, force=True,
                     threads=args.threads)
        rl_rate = rl.metrics["rows_labelled"] / rl.metrics["seconds"]
        rl_resolved = rl_config.resolved(get_preset("fashion-mnist")).with_precision(device)
        profile = forward_profile(scratch, teacher_s, images_s, rl_resolved, device)
        fwd_rate = 1000 / profile["forward"]
        profile = {"relabel": 1000 / rl_rate, **profile}
        figures["relabel"] = figure(
            f"relabel rows/s ({rl.metrics['rows']} rows of 50, E={relabel_epochs}, "
            f"K={rl_resolved.rows_per_forward})", "relabel", rl_rate, "teacher forward only",
            fwd_rate, "rows/s", target=0.8,
            note="per row: relabel {relabel:.2f} ms = draw {draw:.2f} (host) + replay "
                 "{replay:.2f} + forward {forward:.2f} + encode/write".format(**profile))
        figures["relabel"]["ms_per_row"] = profile
        log(f"relabel {rl_rate:.1f} rows/s, forward {fwd_rate:.1f} rows/s")

        # -- train: stored vs hard vs online labels
        # Interleaved repeats, the best of each kept: a short run on shared cores is noisy.
        steps: dict[str, dict[str, Any]] = {}
        for rep in range(TRAIN_REPEATS):
            for mode in ("stored", "hard", "online"):
                cfg = TrainConfig(dataset=DATASET, labels=mode, epochs=train_epochs, seed=0)
                labels = rl if mode == "stored" else None
                art = train(scratch, cfg, images_s, labels,
                            teacher_s if mode == "online" else None, data_root=args.data,
                            device=device, force=True, eval_every=0)
                m = art.metrics
                rate = m["steps"] / m["train_seconds"]
                log(f"train {mode} (repeat {rep + 1}): {rate:.1f} steps/s")
                if mode not in steps or rate > steps[mode]["steps_per_s"]:
                    steps[mode] = {"steps_per_s": rate, "steps": m["steps"],
                                   "label_wait_share": m["label_wait_share"], "top1": m["top1"]}
        what = (f"train steps/s (IPC{ipc}, batch 50, {train_epochs} epochs, best of "
                f"{TRAIN_REPEATS} interleaved runs)")
        figures["train_stored_vs_hard"] = figure(
            what, "stored labels", steps["stored"]["steps_per_s"], "hard labels",
            steps["hard"]["steps_per_s"], "steps/s", target=0.9)
        figures["train_online_vs_hard"] = figure(
            what, "online teacher", steps["online"]["steps_per_s"], "hard labels",
            steps["hard"]["steps_per_s"], "steps/s")
        figures["train_stored_vs_online"] = figure(
            what, "stored labels", steps["stored"]["steps_per_s"], "online teacher",
            steps["online"]["steps_per_s"], "steps/s")
        figures["label_wait"] = figure(
            "share of train step time waiting for labels", "stored (pool read)",
            steps["stored"]["label_wait_share"], "online (teacher forward)",
            max(steps["online"]["label_wait_share"], 1e-9), "share",
            note="the A and B values are shares; A / B compares them")

        # -- storage: Zarr on disk vs the authors' torch.save layout, same content
        row = label_row(scratch, rl)
        figures["storage"] = figure(
            f"label bytes, {row['rows']} rows (E={relabel_epochs}, IPC{ipc})",
            "torch.save per batch", row["torch_save_bytes"], "lpld Zarr on disk",
            row["disk_bytes"], "bytes")
        figures["storage_blocks"] = figure(
            "the same, torch.save files on 4 KiB filesystem blocks", "torch.save on blocks",
            row["torch_save_block_bytes"], "lpld Zarr on disk", row["disk_bytes"], "bytes",
            note=f"{row['torch_save_files']} files vs one Zarr group")

        # -- commands that compute nothing vs `import torch` (fresh processes)
        figures.update(startup_figures(scratch_root, args.data))

        # -- peak RSS at E = 300 vs E = 30 (fresh processes)
        rss: dict[str, dict[int, float]] = {"relabel": {}, "train": {}}
        rss_store = str(scratch_root / "rss-store")
        shutil.copytree(scratch.root / "objects" / "teacher", Path(rss_store) / "objects" /
                        "teacher")
        shutil.copytree(scratch.root / "objects" / "images", Path(rss_store) / "objects" /
                        "images")
        base = {"store": rss_store, "device": args.device, "data": args.data,
                "threads": args.threads}
        for epochs in (30, 300):
            relabel_task = {**base, "stage": "relabel", "images": images.id,
                            "config": {"epochs": epochs, "seed": 0}}
            rss["relabel"][epochs], made = peak_rss_mb(relabel_task)
            labels_id = made["id"]
            train_task = {**base, "stage": "train", "images": images.id, "labels": labels_id,
                          "config": {"dataset": DATASET, "labels": "stored", "epochs": epochs,
                                     "seed": 0}}
            rss["train"][epochs], _ = peak_rss_mb(train_task)
            log(f"peak RSS at E={epochs}: relabel {rss['relabel'][epochs]:.0f} MB, "
                f"train {rss['train'][epochs]:.0f} MB")
        for stage in ("relabel", "train"):
            figures[f"rss_{stage}"] = figure(
                f"{stage} peak RSS (IPC{ipc}, subprocess)", "E = 300", rss[stage][300],
                "E = 30", rss[stage][30], "MB", note="flat memory: ratio ≈ 1")
        # -- dist: the same recover on 2 gloo ranks vs 1 process, one thread each
        if device.type == "cpu":
            figures.update(dist_speed.measure(scratch.root, teacher.id, ipc, rec_iters,
                                              relabel_epochs))
    finally:
        shutil.rmtree(scratch_root, ignore_errors=True)

    info = device_info(device)
    for key, fig in figures.items():
        if fig.get("meets_target") is False:
            notes.append(f"{key}: {fig['ratio']:.2f}× misses the target {fig['target']:g}× "
                         "on this device; its note gives the measured profile.")
    if device.type == "cpu":
        notes.append(f"CPU timings use {args.threads} torch thread(s), recover every core; "
                     "they are inflated and noisy when other processes share the cores.")
    tag = info["type"] + ("-quick" if quick else "")
    result = {"meta": {"quick": quick, "device": info, "jobs": 1, "threads": args.threads,
                       "command": "python benchmarks/speed.py" + (" --quick" if quick else "")
                       + (f" --device {args.device}" if args.device != "auto" else ""),
                       "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                       "seconds": round(time.perf_counter() - started, 1),
                       "settings": {"ipc": ipc, "recover_iterations": rec_iters,
                                    "relabel_epochs": relabel_epochs,
                                    "train_epochs": train_epochs}},
              "figures": figures, "train": steps, "notes": notes}
    return publish(args.out, f"speed-{tag}.json", result, started)


def startup_only(args: Any) -> int:
    """`--only startup`: the startup figures alone, merged into this device's speed JSON."""
    from lpld_cli.device import resolve_device

    info = device_info(resolve_device(args.device))
    path = args.out / f"speed-{info['type']}{'-quick' if args.quick else ''}.json"
    result = json.loads(path.read_text()) if path.is_file() else {
        "meta": {"quick": args.quick, "device": info}, "figures": {}, "notes": []}
    scratch = Path(tempfile.mkdtemp(prefix="lpld-startup-"))
    try:
        figures = startup_figures(scratch, args.data)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for fig in figures.values():
        fig["note"] += f"; measured by `speed.py --only startup` on {stamp}"
    result["figures"].update(figures)
    write_json(path, result)
    log(f"wrote {path} and {regenerate_results(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
