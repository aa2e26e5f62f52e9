"""One exception family for everything a user can get wrong; cli.py maps it to exit codes."""

from __future__ import annotations


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

    def __init__(self, artifact_id: str, file: str, hint: str | None = None) -> None:
        super().__init__(
            f"artifact {artifact_id} is corrupted: {file}",
            hint or "recompute it with --force, or delete it from objects/",
        )
        self.artifact_id = artifact_id
        self.file = file


class DeviceError(LpldError):
    """The requested device is not available."""


class DataFormatError(LpldError):
    """A data file exists but is not in the expected format."""
