"""The options every command takes (DESIGN §2), and the decorator that adds them."""

from __future__ import annotations

import functools
import inspect
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from lpld_cli import dist
from lpld_cli.checks import at_least
from lpld_cli.commands._ui import errors_to_exit
from lpld_cli.errors import ConfigError, LpldError
from lpld_cli.storage.requests import answered, request_key
from lpld_cli.storage.selection import select
from lpld_cli.storage.store import Artifact, Store

if TYPE_CHECKING:  # torch is imported only by commands that compute (ls/show/--help stay fast)
    import torch


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
        if self.rank_device is not None:
            return self.rank_device
        from lpld_cli.device import resolve_device

        return resolve_device(self.device_name)

    def result(self, command: str, artifact: Artifact, metrics: dict[str, Any]) -> dict[str, Any]:
        """The result object of DESIGN §2."""
        return {"command": command, "artifact": artifact.to_json(), "parents": artifact.parents,
                "config": artifact.config, "metrics": metrics,
                "seconds": round(time.perf_counter() - self.started, 3)}


_COMMON = [
    inspect.Parameter("store", inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[
        str | None, typer.Option(help="Artifact store [env LPLD_STORE; default ./lpld-store].",
                                  show_default=False)], default=None),
    inspect.Parameter("device", inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[
        str, typer.Option(help="auto | cpu | cuda | cuda:N (auto: CUDA when present).")],
        default="auto"),
    inspect.Parameter("seed", inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[
        int, typer.Option(help="Random seed (0 to 2^63-1); part of every artifact's identity.",
                          min=0, max=2**63 - 1)], default=0),
    inspect.Parameter("json", inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[
        bool, typer.Option("--json", help="Print one JSON object on stdout; everything else "
                           "goes to stderr.")], default=False),
    inspect.Parameter("force", inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[
        bool, typer.Option("--force", help="Recompute even when an identical artifact exists.")],
        default=False),
]


# Commands that run on N ranks under torchrun (DESIGN §7); the others refuse to, rather
# than have N processes write one staging folder.
DISTRIBUTED_COMMANDS = ("squeeze", "recover", "relabel", "train")


def common_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add --store/--device/--seed/--json/--force; pass them to `func` as a `Common`."""
    own = [p for p in inspect.signature(func, eval_str=True).parameters.values()
           if p.name != "common"]

    @functools.wraps(func)
    def wrapper(**kwargs: Any) -> Any:
        with errors_to_exit():
            at_least("--seed", kwargs["seed"], 0)
            common = Common(_store(kwargs.pop("store")), kwargs.pop("device"),
                            kwargs.pop("seed"), kwargs.pop("json"), kwargs.pop("force"),
                            time.perf_counter())
            name = func.__module__.rsplit(".", 1)[-1]
            if dist.launched().distributed and name not in DISTRIBUTED_COMMANDS:
                raise ConfigError(f"lpld {name} runs as one process in this release",
                                  "launch it without torchrun; "
                                  f"{', '.join(DISTRIBUTED_COMMANDS)} run on N ranks")
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


def _store(option: str | None) -> Store:
    """--store (else $LPLD_STORE, else ./lpld-store), refused when it cannot be a store."""
    value = option if option is not None else os.environ.get("LPLD_STORE", "lpld-store")
    if not value.strip():
        raise ConfigError("--store is empty" if option is not None else "LPLD_STORE is empty",
                          "name the store folder, e.g. --store ./lpld-store")
    store = Store(Path(value))
    store.check_root()
    return store


# Datasets whose files never change under their path (an id does not hash them).
FIXED_DATASETS = ("fashion-mnist", "mnist", "fashion-mnist-pairs")

# The artifact a command reads (show, export, report lineage).
ArtifactRef = Annotated[str, typer.Argument(help="An artifact id (or a unique prefix).",
                                            show_default=False)]

# `--newest`: the commands that pick a parent without --from.
Newest = Annotated[bool, typer.Option(
    "--newest", help="Without --from, when several artifacts match: take the newest "
    "(default: stop and list them).")]


def resolve_parent(common: Common, kind: str, ref: str | None, newest: bool = False,
                   **selectors: Any) -> Artifact:
    """`--from ID` (verified, of `kind`), else the one matching artifact; say which."""
    from lpld_cli.commands._ui import info

    if ref is not None:
        artifact = common.store.get(ref, kind=kind)
        info(f"using {kind} {artifact.short} (--from)")
    else:
        artifact = select(common.store, kind, newest=newest, **selectors)
        info(f"using {kind} {artifact.short} (newest matching)")
    return artifact


def answered_request(common: Common, command: str, options: dict[str, Any], kind: str,
                     ref: str | None, newest: bool = False,
                     where: Callable[[Artifact], bool] | None = None,
                     **selectors: Any) -> tuple[str | None, Artifact | None]:
    """The request key of a stage command line and the artifact it made before, if any.

    The parent is resolved from manifests only (no torch). Key None (the normal path runs
    and reports any error): --force, a parent that is not unique, or a folder dataset.
    """
    if common.force:
        return None, None
    try:
        parent = (common.store.get(ref, kind=kind, verify=False) if ref is not None else
                  select(common.store, kind, newest=newest, verify=False, where=where,
                         **selectors))
    except LpldError:
        return None, None
    if parent.selectors.get("dataset") not in FIXED_DATASETS:
        return None, None
    try:
        key = request_key(command, options, [parent.id], common.device_name)
    except ValueError:  # NaN/inf options: the normal path refuses them with one line
        return None, None
    return key, answered(common.store, key)
