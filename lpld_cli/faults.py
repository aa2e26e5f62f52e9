"""Kill points: the reliability suite's way to kill -9 a stage at a named point of its work.

A stage calls `kill_point(name)` (or `kill_point(name, step)`) where an interruption must be
survivable: mid-work, with staging half written, and between a finished staging and its
promotion. With `LPLD_TEST_KILL_AT` unset (always, outside the tests) a kill point does
nothing. Set to a point's `name`, or to `name:step` for one step of a repeated point, the
process sends itself SIGKILL there: no handler, `finally` or atexit runs, exactly as with
`kill -9` from outside, but at a place the test chose rather than at a random time (a short
run is over before a random kill lands; tests/test_reliability.py).

Points (grep `kill_point(` for the list): `store.staged` (the build returned, nothing
hashed), `store.manifest` (manifest written into staging, payload read-only, not renamed),
`store.promoted` (renamed into objects/, result not yet reported); `squeeze.epoch:N`
(teacher epoch N done), `prune.copy:N` (N kept rows written), `train.checkpoint:N`
(student checkpoint after epoch N saved).
"""

from __future__ import annotations

import os
import signal

ENV = "LPLD_TEST_KILL_AT"


def kill_point(name: str, step: int | None = None) -> None:
    """SIGKILL this process if `LPLD_TEST_KILL_AT` names this point (`name` or `name:step`)."""
    wanted = os.environ.get(ENV)
    if wanted and (wanted == name or (step is not None and wanted == f"{name}:{step}")):
        os.kill(os.getpid(), signal.SIGKILL)
