"""The benchmark scripts' environment: paths, the shared arguments, the device record,
logging, and writing a results JSON."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from lpld_cli.storage.store import write_atomic

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
DEFAULT_OUT = BENCH / "results"
DEFAULT_STORE = BENCH / "lpld-store"  # ignored by git (`lpld-store/`)
DATASET = "fashion-mnist"


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


def default_jobs(device_type: str) -> int:
    return 1 if device_type == "cuda" else max(1, os.cpu_count() or 1)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(payload, indent=1, sort_keys=False, default=json_default)
                 + "\n")


def json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj)}")
