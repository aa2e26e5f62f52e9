"""lpld: dataset distillation with label pruning (LPLD, NeurIPS 2024) as a command-line tool.

The Python API mirrors the commands: each stage is a function taking a frozen config.
"""

__version__ = "0.1.0"

from lpld_cli.errors import (  # noqa: E402
    ArtifactCorruptedError,
    ArtifactNotFoundError,
    ConfigError,
    DataNotFoundError,
    DeviceError,
    LpldError,
)
from lpld_cli.storage.store import Artifact, Store  # noqa: E402

__all__ = [
    "Artifact",
    "ArtifactCorruptedError",
    "ArtifactNotFoundError",
    "ConfigError",
    "DataNotFoundError",
    "DeviceError",
    "LpldError",
    "Store",
    "__version__",
]
