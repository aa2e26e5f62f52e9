"""The options every command takes (DESIGN §2), and the decorator that adds them."""

from __future__ import annotations

import functools
import inspect
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
import typer

from lpld_cli import dist
from lpld_cli.commands._ui import errors_to_exit
from lpld_cli.device import resolve_device
from lpld_cli.errors import ConfigError
from lpld_cli.storage.store import Artifact, Store


@dataclass
class Common:
    """Resolved global options, handed to every command as its first argument."""

    store: Store
    device_name: str
    seed: int
    json: bool
    force: bool
    started: float
    # set when joined under torchrun: this rank's device (cuda:<local_rank> or cpu)
    rank_device: torch.device | None = None

    @property
    def device(self) -> torch.device:
        return self.rank_device or resolve_device(self.device_name)

    def result(self, command: str, artifact: Artifact, metrics: dict[str, Any]) -> dict[str, Any]:
        """The result object of DESIGN §2."""
        return {"command": command, "artifact": artifact.to_json(), "parents": artifact.parents,
                "config": artifact.config, "metrics": metrics,
                "seconds": round(time.perf_counter() - self.started, 3)}


_COMMON = [
    inspect.Parameter("store", inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[
        Path | None, typer.Option(help="Artifact store [env LPLD_STORE; default ./lpld-store].",
                                  show_default=False)], default=None),
    inspect.Parameter("device", inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[
        str, typer.Option(help="auto | cpu | cuda | cuda:N (auto: CUDA when present).")],
        default="auto"),
    inspect.Parameter("seed", inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[
        int, typer.Option(help="Random seed; part of every artifact's identity.")], default=0),
    inspect.Parameter("json", inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[
        bool, typer.Option("--json", help="Print one JSON object on stdout; everything else "
                           "goes to stderr.")], default=False),
    inspect.Parameter("force", inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[
        bool, typer.Option("--force", help="Recompute even when an identical artifact exists.")],
        default=False),
]


# Commands that run on N ranks under torchrun (DESIGN §7); the others refuse to, rather
# than have N processes write one staging folder.
DISTRIBUTED_COMMANDS = ("squeeze", "recover")


def common_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add --store/--device/--seed/--json/--force; pass them to `func` as a `Common`."""
    own = [p for p in inspect.signature(func, eval_str=True).parameters.values()
           if p.name != "common"]

    @functools.wraps(func)
    def wrapper(**kwargs: Any) -> Any:
        store = kwargs.pop("store") or Path(os.environ.get("LPLD_STORE", "lpld-store"))
        common = Common(Store(store), kwargs.pop("device"), kwargs.pop("seed"),
                        kwargs.pop("json"), kwargs.pop("force"), time.perf_counter())
        with errors_to_exit():
            name = func.__module__.rsplit(".", 1)[-1]
            if dist.launched().distributed and name not in DISTRIBUTED_COMMANDS:
                raise ConfigError(f"lpld {name} runs as one process in this release",
                                  "launch it without torchrun; "
                                  f"{' and '.join(DISTRIBUTED_COMMANDS)} run on N ranks")
            if dist.launched().distributed:  # torchrun: join before anything collective
                common.rank_device, _ = dist.join(common.device_name)
            result = func(common, **kwargs)
            dist.leave()
            return result

    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + _COMMON
    wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    del wrapper.__wrapped__  # typer must read the new signature, not the original
    return wrapper


def resolve_parent(common: Common, kind: str, ref: str | None, **selectors: Any) -> Artifact:
    """`--from ID` (verified, of `kind`), else the newest matching artifact; say which."""
    from lpld_cli.commands._ui import info

    if ref:
        artifact = common.store.get(ref, kind=kind)
        info(f"using {kind} {artifact.short} (--from)")
    else:
        artifact = common.store.newest(kind, **selectors)
        info(f"using {kind} {artifact.short} (newest matching)")
    return artifact
