"""The README's first command, timed: `scripts/pipeline.sh` on a fresh store, its plot kept.

Runs the demo exactly as a newcomer does (setup skipped: it is timed apart, and idempotent)
into a temporary store, records the wall time of the whole run and of each `lpld` step, and
every student's top-1 and label bytes from `lpld report accuracy --json`; keeps the plot as
`results/demo-accuracy.png` (the picture the README shows) and writes `results/demo.json`,
then regenerates RESULTS.md. About 10 minutes on a 2-core CPU.

    .venv/bin/python benchmarks/demo.py
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._env import ROOT, base_parser, device_info, log  # noqa: E402
from benchmarks._render import publish  # noqa: E402

STEP = re.compile(r"^== lpld (?P<step>.+)$")
SECONDS = re.compile(r"^\s+\((?P<s>\d+) s\)$")
PLOT = "demo-accuracy.png"


def step_times(stderr: str) -> list[dict[str, Any]]:
    """[{step, seconds}] from pipeline.sh's `== lpld <step>` / `   (N s)` lines."""
    steps: list[dict[str, Any]] = []
    for line in stderr.splitlines():
        if m := STEP.match(line):
            steps.append({"step": m["step"], "seconds": None})
        elif (m := SECONDS.match(line)) and steps and steps[-1]["seconds"] is None:
            steps[-1]["seconds"] = int(m["s"])
    return steps


def render(res: dict[str, Any]) -> str:
    """The RESULTS.md section: wall time, the slowest steps, each student, the plot."""
    lines = ["## The README demo (`bash scripts/pipeline.sh`)", "",
             f"Wall time **{res['wall_s'] / 60:.1f} min** for the whole pipeline on a fresh "
             f"store ({res['meta']['cpus']} CPU cores, setup not counted); per step:", "",
             "| step | seconds |", "|---|---|"]
    # the plot was drawn into the run's temporary folder: name the copy that is kept
    kept = re.compile(r"\S*/" + re.escape(PLOT))
    lines += [f"| `lpld {kept.sub(f'results/{PLOT}', s['step'])}` | {s['seconds']} |"
              for s in res["steps"]]
    lines += ["", "| student | labels | ratio | top-1 | label bytes |", "|---|---|---|---|---|"]
    for row in res["students"]:
        top1 = f"{100 * row['top1']:.1f}%" if row["top1"] is not None else "n/a"
        lines.append(f"| {row['id'][:12]} | {row['labels']} | {row['ratio'] or '—'} | "
                     f"{top1} | {row['label_bytes']:,} |")
    lines += ["", f"![top-1 against label storage]({res['figure']})"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="lpld-demo-"))
    try:
        env = {**os.environ, "LPLD_SKIP_SETUP": "1", "LPLD_STORE": str(work / "store"),
               "LPLD_PLOT": str(work / PLOT), "LPLD_PYTHON": sys.executable}
        if args.data:
            env["LPLD_DATA"] = args.data
        log(f"demo: bash scripts/pipeline.sh into {work}")
        t0 = time.perf_counter()
        proc = subprocess.run(["bash", str(ROOT / "scripts" / "pipeline.sh")], env=env,
                              cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-4000:])
            return proc.returncode
        report = subprocess.run([sys.executable, "-m", "lpld_cli", "report", "accuracy",
                                 "--json"], env=env, cwd=ROOT, capture_output=True, text=True,
                                check=True)
        rows = json.loads(report.stdout)["rows"]
        args.out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(work / PLOT, args.out / PLOT)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    import torch

    log(f"demo: {wall:.0f}s wall, {len(rows)} students")
    res = {"wall_s": wall, "steps": step_times(proc.stderr),
           "students": [{k: r[k] for k in ("id", "labels", "ratio", "top1", "label_bytes")}
                        for r in rows],
           "figure": PLOT,
           "meta": {"cpus": os.cpu_count(), "device": device_info(torch.device("cpu"))}}
    return publish(args.out, "demo.json", res, started)


if __name__ == "__main__":
    raise SystemExit(main())
