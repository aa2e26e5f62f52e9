"""Distributed runs on PyTorch's own runtime (DESIGN §7): `torchrun -m lpld_cli …`.

`torchrun --nproc-per-node N -m lpld_cli <command> …` (or the `lpld` entry point under
torchrun) starts N ranks with RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT
in their environment; without them a command is one process and nothing here costs
anything. `join` resolves `--device` per rank (`auto` and `cuda` → `cuda:<local_rank>`)
and joins the process group: NCCL on GPUs, gloo on CPUs.

Failure: a rank that fails records "rank r: message" in the rendezvous key-value store
and exits; a watchdog thread on every rank polls that key and the other ranks'
heartbeats, so the others exit non-zero within `LPLD_DIST_HEARTBEAT_S` seconds
(default 60) even when a rank was SIGKILLed and no collective is pending. Exactly one
`Error:` line is printed: the first failure claims it (errors every rank raises alike,
such as a bad option, are printed by rank 0).
"""

from __future__ import annotations

import datetime
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lpld_cli.errors import ConfigError, LpldError

if TYPE_CHECKING:
    import torch

_ERROR_KEY = "lpld/error"
_CLAIM_KEY = "lpld/error-claims"


@dataclass(frozen=True)
class World:
    """This process's place in the run: rank, number of ranks, rank on its node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


SINGLE = World()


def launched() -> World:
    """The world torchrun describes in the environment (one process without it)."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ConfigError("RANK / WORLD_SIZE / LOCAL_RANK are not integers",
                          "launch with torchrun --nproc-per-node N -m lpld_cli …") from None
    return World(rank, size, local) if size > 1 else SINGLE


def world() -> World:
    """The world this process has joined (one process before `join` or without torchrun)."""
    if not _joined():
        return SINGLE
    import torch.distributed as td

    return World(td.get_rank(), td.get_world_size(), launched().local_rank)


def _joined() -> bool:
    # torch is imported lazily: store reads (`ls`, cached commands) must not pay for it.
    if "torch" not in sys.modules:
        return False
    import torch.distributed as td

    return td.is_available() and td.is_initialized()


def rank_device(name: str, w: World) -> torch.device:
    """`--device` for this rank: `auto`/`cuda` become `cuda:<local_rank>` under torchrun."""
    import torch

    from lpld_cli.device import resolve_device

    name = name.strip().lower()
    if w.distributed and name in ("auto", "cuda"):
        if name == "cuda" or torch.cuda.is_available():
            if not torch.cuda.is_available():
                return resolve_device("cuda")  # the one-line "no CUDA GPU" error
            count = torch.cuda.device_count()
            if w.local_rank >= count:
                raise LpldError(f"--device {name}: local rank {w.local_rank} needs a GPU, "
                                f"but only {count} are visible on this node",
                                "use --nproc-per-node at most the GPU count")
            name = f"cuda:{w.local_rank}"
        else:
            name = "cpu"
    return resolve_device(name)


def join(device_name: str) -> tuple[torch.device, World]:
    """Resolve this rank's device and join the process group (a no-op for one process)."""
    import torch

    w = launched()
    device = rank_device(device_name, w)
    if not w.distributed or _joined():
        return device, world()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = datetime.timedelta(seconds=float(os.environ.get("LPLD_DIST_TIMEOUT", "1800")))
    try:
        torch.distributed.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", timeout=timeout,
            **({"device_id": device} if device.type == "cuda" else {}))
    except (RuntimeError, ValueError) as exc:
        raise LpldError(f"rank {w.rank}: could not join the process group ({exc})",
                        "launch with torchrun; every rank needs the same MASTER_ADDR/PORT"
                        ) from None
    _Watchdog(w).start()
    return device, world()


def leave() -> None:
    """Leave the process group at the end of a command (every rank together)."""
    if _joined():
        import torch.distributed as td

        td.barrier()
        td.destroy_process_group()


def _kv():
    from torch.distributed import distributed_c10d

    return distributed_c10d._get_default_store()


def claim_error(message: str) -> bool:
    """Record this rank's failure; True when this rank is the one to print it."""
    w = world()
    if not w.distributed:
        return True
    try:
        store = _kv()
        if not w.main:  # an error every rank raises alike is printed by rank 0
            time.sleep(0.3)
        first = store.add(_CLAIM_KEY, 1) == 1
        if first:
            store.set(_ERROR_KEY, message)
        return first
    except Exception:  # the store is gone: rank 0 (its host) has already stopped
        return w.main


def peer_error() -> str | None:
    """The failure another rank recorded, if any."""
    try:
        store = _kv()
        if store.check([_ERROR_KEY]):
            return store.get(_ERROR_KEY).decode()
    except Exception:
        return "another rank stopped"
    return None


class _Watchdog(threading.Thread):
    """Exit when another rank failed or stopped beating, even outside any collective."""

    def __init__(self, w: World) -> None:
        super().__init__(daemon=True, name="lpld-dist-watchdog")
        self.w = w
        self.limit = float(os.environ.get("LPLD_DIST_HEARTBEAT_S", "60"))

    def run(self) -> None:
        store = _kv()
        seen = {r: (-1, time.monotonic()) for r in range(self.w.size) if r != self.w.rank}
        while True:
            time.sleep(min(1.0, self.limit / 4))
            try:
                store.add(f"lpld/beat/{self.w.rank}", 1)
                if store.check([_ERROR_KEY]):
                    os._exit(1)  # the failing rank printed its line
                now = time.monotonic()
                for r, (count, since) in seen.items():
                    beat = store.add(f"lpld/beat/{r}", 0)
                    if beat != count:
                        seen[r] = (beat, now)
                    elif now - since > self.limit:
                        self._stop(f"rank {r} stopped responding (killed or hung) for "
                                   f"{self.limit:.0f}s")
            except Exception:
                self._stop("lost the rendezvous store (rank 0 or torchrun stopped)")

    def _stop(self, why: str) -> None:
        if self.w.main:
            sys.__stderr__.write(f"Error: rank {self.w.rank}: {why}; stopping. Nothing "
                                 "partial was promoted: rerun the same command to resume\n")
            sys.__stderr__.flush()
        os._exit(1)


# ----------------------------------------------------------------- collectives
def broadcast(obj: Any, w: World | None = None) -> Any:
    """Rank 0's `obj` on every rank (picklable objects)."""
    if not (w or world()).distributed:
        return obj
    import torch.distributed as td

    box = [obj]
    td.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: Any, w: World | None = None) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    w = w or world()
    if not w.distributed:
        return [obj]
    import torch.distributed as td

    out: list[Any] = [None] * w.size
    td.all_gather_object(out, obj)
    return out


def all_sum_(tensor: torch.Tensor, w: World | None = None) -> torch.Tensor:
    """Sum `tensor` over ranks in place (exact for integer tensors)."""
    if (w or world()).distributed:
        import torch.distributed as td

        td.all_reduce(tensor, op=td.ReduceOp.SUM)
    return tensor


def barrier(w: World | None = None) -> None:
    if (w or world()).distributed:
        import torch.distributed as td

        td.barrier()


def agree(value: Any, what: str, w: World | None = None) -> None:
    """Every rank must hold the same `value` (e.g. an artifact id): else one clear error."""
    w = w or world()
    values = gather(value, w)
    differ = [r for r, v in enumerate(values) if v != values[0]]
    if differ:
        raise ConfigError(f"ranks disagree on {what}: rank {differ[0]} has {values[differ[0]]!r}"
                          f", rank 0 has {values[0]!r}",
                          "run the same command with the same options and data on every rank")


def check_all(ok: bool, message: str, w: World | None = None) -> None:
    """Raise `message` on every rank when any rank's check failed (no rank left waiting)."""
    w = w or world()
    failed = [r for r, good in enumerate(gather(bool(ok), w)) if not good]
    if failed:
        raise ConfigError(message.format(rank=failed[0]))


def shard(items: list, w: World | None = None) -> list:
    """This rank's items: every N-th, starting at its rank (k ≡ r mod N)."""
    w = w or world()
    return items[w.rank::w.size]


def launch_local(argvs: list[list[str]], env: dict[str, str] | None = None,
                 per_rank: list[dict[str, Any]] | None = None, **popen: Any) -> list:
    """Start `python -m lpld_cli argv` as rank r of len(argvs) on this machine, as torchrun
    would (RANK, WORLD_SIZE, MASTER_ADDR/PORT): the tests and the 1-vs-N benchmark."""
    import socket
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = {k: v for k, v in (env if env is not None else os.environ).items()
            if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
    n = len(argvs)
    return [subprocess.Popen(
        [sys.executable, "-m", "lpld_cli", *argv],
        env=base | {"RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(n),
                    "LOCAL_WORLD_SIZE": str(n), "MASTER_ADDR": "127.0.0.1",
                    "MASTER_PORT": str(port)}, **popen, **(per_rank[r] if per_rank else {}))
        for r, argv in enumerate(argvs)]
