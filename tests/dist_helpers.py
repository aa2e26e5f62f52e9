"""Launch lpld on N local ranks (gloo, one torch thread each) for the `dist` tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lpld_cli.dist import launch_local

BASE_ENV = {"OMP_NUM_THREADS": "1", "LPLD_DIST_HEARTBEAT_S": "10",
            "LPLD_DIST_TIMEOUT": "120"}


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("LPLD_DEBUG", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return env | BASE_ENV | (extra or {})


def spawn(per_rank: list[list[str]], env: dict[str, str] | None = None
          ) -> list[subprocess.Popen]:
    """Start rank r with `per_rank[r]` (lpld arguments) as torchrun would."""
    return launch_local(per_rank, _env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        text=True)


def run_ranks(n: int, args: list[str], env: dict[str, str] | None = None,
              timeout: float = 300) -> list[tuple[int, str, str]]:
    """Run the same lpld command on n ranks; (returncode, stdout, stderr) per rank."""
    if n == 1:
        proc = subprocess.run([sys.executable, "-m", "lpld_cli", *args], capture_output=True,
                              text=True, env=_env(env), timeout=timeout)
        return [(proc.returncode, proc.stdout, proc.stderr)]
    return wait_all(spawn([args] * n, env), timeout)


def wait_all(procs: list[subprocess.Popen], timeout: float = 300
             ) -> list[tuple[int, str, str]]:
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        out.append((p.returncode, stdout, stderr))
    return out


def torchrun(n: int, args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """The documented launch: python -m torch.distributed.run --standalone …"""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc-per-node", str(n), "-m", "lpld_cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=timeout)


def error_lines(results: list[tuple[int, str, str]]) -> list[str]:
    return [line for _, _, err in results for line in err.splitlines()
            if line.startswith("Error:")]


def payload(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "manifest.json"}
