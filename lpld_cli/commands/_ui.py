"""Human output: rich progress and messages on stderr; the result on stdout."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from lpld_cli import dist
from lpld_cli.errors import LpldError

stderr = Console(stderr=True, highlight=False)


# Without a terminal (a batch job's log, CI) the live bar is not drawn: print a plain
# progress line this often instead.
PLAIN_EVERY_S = float(os.environ.get("LPLD_PROGRESS_EVERY", "30"))


class _RichTask:
    def __init__(self, progress: Progress, description: str, total: float | None) -> None:
        self.progress = progress
        self.description = description
        self.id = progress.add_task(description, total=total, fields="")
        self.plain = not progress.console.is_terminal and not progress.disable
        self.last_line = time.monotonic()

    def advance(self, n: float = 1, **fields: Any) -> None:
        text = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                         for k, v in fields.items())
        self.progress.update(self.id, advance=n, fields=text)
        if self.plain and time.monotonic() - self.last_line >= PLAIN_EVERY_S:
            self.last_line = time.monotonic()
            task = self.progress.tasks[self.progress.task_ids.index(self.id)]
            done = f"{task.completed:g}/{task.total:g}" if task.total else f"{task.completed:g}"
            eta = (f"  eta {task.time_remaining:.0f}s" if task.time_remaining is not None
                   else "")
            self.progress.console.print(f"{self.description}: {done}  "
                                        f"{task.elapsed or 0:.0f}s{eta}  {text}", markup=False)

    def close(self) -> None:
        self.progress.remove_task(self.id)


class RichReporter:
    """Progress bars (with ETA) and log lines on stderr."""

    def __init__(self, quiet: bool = False) -> None:
        quiet = quiet or not dist.world().main  # under torchrun only rank 0 reports
        self.quiet = quiet
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            TextColumn("{task.fields[fields]}"), console=stderr, transient=True,
            disable=quiet)

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def task(self, description: str, total: float | None) -> _RichTask:
        return _RichTask(self.progress, description, total)

    def log(self, message: str) -> None:
        if not self.quiet:
            self.progress.console.print(message)


def info(message: str) -> None:
    if dist.world().main:
        stderr.print(message, soft_wrap=True)


def emit(payload: dict[str, Any], as_json: bool, human: str) -> None:
    """Exactly one JSON object on stdout with --json; else a human summary on stdout."""
    if not dist.world().main:
        return
    if as_json:
        sys.stdout.write(json.dumps(payload, sort_keys=False) + "\n")
    else:
        sys.stdout.write(human.rstrip("\n") + "\n")
    sys.stdout.flush()


def _fail(message: str, hint: str | None) -> None:
    w = dist.world()
    if not w.distributed and not dist.launched().main:
        # torchrun, before joining: every rank has the same arguments and so the same
        # error; rank 0 prints it (a moment's wait so torchrun does not stop it first).
        time.sleep(2)
        return
    if w.distributed:
        if dist.peer_error() is not None or not dist.claim_error(f"rank {w.rank}: {message}"):
            return  # another rank's failure: it printed the one line
        message = f"rank {w.rank}: {message}"
    stderr.print(f"Error: {message}", markup=False, soft_wrap=True)
    if hint:
        stderr.print(f"Hint: {hint}", markup=False, soft_wrap=True)


@contextlib.contextmanager
def errors_to_exit() -> Iterator[None]:
    """The one place where lpld's errors become `Error: …` lines and exit codes.

    A traceback is shown only with LPLD_DEBUG=1. Under torchrun the first failing rank
    prints the one `Error: rank R: …` line; the others exit non-zero quietly (dist.py).
    """
    debug = os.environ.get("LPLD_DEBUG") == "1"
    try:
        yield
    except LpldError as exc:
        if debug:
            raise
        _fail(exc.message, exc.hint)
        raise typer.Exit(exc.exit_code) from None
    except Exception as exc:
        # Under torchrun a lost peer surfaces as a backend error in a collective.
        if debug or not dist.world().distributed:
            raise
        _fail(f"{type(exc).__name__}: {exc}".splitlines()[0], "set LPLD_DEBUG=1 for the trace")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        if debug:
            raise
        stderr.print("Error: interrupted; the store is unchanged (resumable stages pick up "
                     "where they stopped)", markup=False, soft_wrap=True)
        raise typer.Exit(130) from None
