"""lpld: dataset distillation with label pruning (LPLD, NeurIPS 2024) as a command-line tool.

The Python API mirrors the commands: each stage is a function taking a frozen config.

    from lpld_cli import Store, SqueezeConfig, squeeze, RecoverConfig, recover, ...

Names are imported lazily (PEP 562) so that `import lpld_cli` — and with it `lpld --help`,
`ls`, `show` — never imports torch.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Any

__version__ = "0.1.0"

# public name → the module that defines it
_EXPORTS: dict[str, str] = {
    "Artifact": "lpld_cli.storage.store",
    "Store": "lpld_cli.storage.store",
    "LpldError": "lpld_cli.errors",
    "ConfigError": "lpld_cli.errors",
    "DataNotFoundError": "lpld_cli.errors",
    "ArtifactNotFoundError": "lpld_cli.errors",
    "ArtifactCorruptedError": "lpld_cli.errors",
    "DeviceError": "lpld_cli.errors",
    "SqueezeConfig": "lpld_cli.squeeze",
    "squeeze": "lpld_cli.squeeze",
    "RecoverConfig": "lpld_cli.recover",
    "recover": "lpld_cli.recover",
    "RelabelConfig": "lpld_cli.relabel",
    "relabel": "lpld_cli.relabel",
    "PruneConfig": "lpld_cli.prune",
    "prune": "lpld_cli.prune",
    "TrainConfig": "lpld_cli.train",
    "train": "lpld_cli.train",
}

__all__ = [*_EXPORTS, "__version__"]


class _StageModule(ModuleType):
    """A stage module that is also its stage function: `lpld_cli.squeeze(store, config)`.

    The five stages are both modules (`lpld_cli.squeeze.SqueezeConfig`) and the public
    functions of the same name; Python binds a package attribute to its submodule, so the
    module itself forwards calls to the function.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self, self.__name__.rsplit(".", 1)[1])(*args, **kwargs)


def stage_module(name: str) -> None:
    """Make the stage module `name` callable as its function (each stage calls this), and
    tune the process's allocator for computing (`allocator.py`: a process that imports a
    stage computes; `ls`, `show` and `--help` never do)."""
    from lpld_cli import allocator

    allocator.tune()
    sys.modules[name].__class__ = _StageModule


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lpld_cli' has no attribute {name!r}")
    value = importlib.import_module(module)
    return value if module == f"lpld_cli.{name}" else getattr(value, name)


def __dir__() -> list[str]:
    return sorted(__all__)

