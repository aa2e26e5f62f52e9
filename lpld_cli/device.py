"""Device selection and the few per-device switches (AMP, loader workers)."""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch

from lpld_cli.errors import ConfigError, DeviceError


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; `cuda` without a GPU is a clear error."""
    name = name.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}", "use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {name}: no CUDA GPU is available here",
                              "use --device cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) here")
    elif device.type != "cpu":
        raise ConfigError(f"unsupported device {name!r}", "use auto, cpu, cuda or cuda:N")
    return device


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (no GradScaler needed); a no-op on CPU."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


PRECISIONS = ("fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def default_precision(device: torch.device) -> str:
    """fp32 on CPU, bf16 on CUDA: the value a stage's identity records when none is given."""
    return "bf16" if device.type == "cuda" else "fp32"


def check_precision(device: torch.device, precision: str) -> str:
    """`precision` if this device can run it, else a one-line ConfigError/DeviceError."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown --precision {precision!r}",
                          f"choose one of: {', '.join(PRECISIONS)}")
    if device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise DeviceError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no "
                          "bfloat16 support", "use --precision fp16 or fp32")
    if precision != "fp32" and not torch.amp.is_autocast_available(device.type):
        raise DeviceError(f"--precision {precision}: no autocast on {device.type}",
                          "use --precision fp32")
    return precision


def precision_autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast at `precision` (fp32: none), on CPU as on CUDA: what the identity says."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_AUTOCAST_DTYPES[precision])


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch, and ask for deterministic kernels; return a CPU
    generator for explicit draws.

    With the same thread count (`LPLD_THREADS` fixes it; the manifest's `host.threads`
    records it) a CPU run is bitwise repeatable. CUDA kernels are deterministic where
    PyTorch has a deterministic one (`warn_only`: the others warn), and only on the
    same GPU model and software (the manifest's `host` says which made an artifact).
    """
    threads = os.environ.get("LPLD_THREADS")
    if threads:
        try:
            count = int(threads)
        except ValueError:
            count = 0
        if count < 1:
            raise ConfigError(f"LPLD_THREADS must be a positive integer (got {threads!r})")
        torch.set_num_threads(count)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def loader_workers() -> int:
    """DataLoader workers for decoding image files: all cores but one, at most 8."""
    return max(0, min(8, (os.cpu_count() or 1) - 1))
