"""One exception family for everything a user can get wrong; cli.py maps it to exit codes."""

from __future__ import annotations

import errno
import os
import shutil
import sys


class LpldError(Exception):
    """Base of every error lpld reports as one line `Error: …` (plus an optional hint)."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class ConfigError(LpldError):
    """A bad option value or an impossible combination of options."""


class DataNotFoundError(LpldError):
    """Real data (a dataset folder or file) is missing or unreadable."""


class ArtifactNotFoundError(LpldError):
    """No artifact in the store matches what a command needs."""


class ArtifactCorruptedError(LpldError):
    """An artifact's payload no longer matches its manifest."""

    exit_code = 1

    def __init__(self, artifact_id: str, file: str, hint: str | None = None,
                 detail: str | None = None) -> None:
        super().__init__(
            f"artifact {artifact_id} is corrupted: {file}" + (f" ({detail})" if detail else ""),
            hint or "`lpld verify` lists every damaged artifact; recompute this one with "
                    "--force, or delete it from objects/",
        )
        self.artifact_id = artifact_id
        self.file = file
        self._args = (artifact_id, file, hint, detail)

    def __reduce__(self) -> tuple:  # rank 0's finding reaches the other ranks whole (pickle)
        return (type(self), self._args)


class StoreWriteError(LpldError):
    """The operating system refused a write (disk full, permission denied, read-only)."""

    exit_code = 1


def os_error_message(exc: OSError, path: str | os.PathLike[str] | None = None,
                     written: int | None = None) -> str:
    """One line for an OSError: what failed, on which path, and, when space ran out, the
    free space and what is needed (`written`: bytes the failed write had already stored,
    so it needs at least that much more than was free)."""
    where = exc.filename if exc.filename is not None else path
    what = exc.strerror or str(exc)
    line = f"{what}: {where}" if where is not None else what
    if exc.errno in (errno.ENOSPC, errno.EDQUOT) and where is not None:
        free = _free_bytes(where)
        if free is not None:
            line += f" ({free / 2**20:.1f} MiB free on that file system"
            if written:
                line += (f"; it needs more than {_size(free + written)}: {_size(written)} "
                         "were written before the disk filled")
            line += ")"
    return line


def _size(n: int) -> str:
    """Bytes in the largest binary unit that keeps the number at or above 1."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _free_bytes(path: str | os.PathLike[str]) -> int | None:
    probe = os.fspath(path)
    while probe and not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    try:
        return shutil.disk_usage(probe or ".").free
    except OSError:
        return None


def warn(message: str, label: str = "Warning") -> None:
    """`Warning: …` (or another label) on stderr: core modules have no UI library.

    Under torchrun only rank 0 speaks (every rank reaches the same warning)."""
    if os.environ.get("RANK", "0") != "0":
        return
    sys.stderr.write(f"{label}: {message}\n")
    sys.stderr.flush()


class DeviceError(LpldError):
    """The requested device is not available."""


class DataFormatError(LpldError):
    """A data file exists but is not in the expected format."""
