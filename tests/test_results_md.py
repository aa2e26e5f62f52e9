"""benchmarks/RESULTS.md is what the committed results JSON renders to, never hand-edited."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from benchmarks._common import BENCH, DEFAULT_OUT, regenerate_results


def test_committed_results_md_is_generated_from_the_committed_json(tmp_path: Path) -> None:
    results = tmp_path / "results"
    shutil.copytree(DEFAULT_OUT, results)
    target = regenerate_results(results, tmp_path / "RESULTS.md")
    assert target.read_text() == (BENCH / "RESULTS.md").read_text()


def test_every_device_gets_its_own_tables_cpu_first(tmp_path: Path) -> None:
    results = tmp_path / "results"
    shutil.copytree(DEFAULT_OUT, results)
    cpu = [p for p in results.glob("reproduce*.json") if "cuda" not in p.name]
    assert cpu, "no CPU reproduction results are committed"
    res = json.loads(cpu[0].read_text())
    res["meta"]["device"] = {**res["meta"]["device"], "type": "cuda", "name": "Test GPU"}
    (results / "reproduce-cuda.json").write_text(json.dumps(res))
    text = regenerate_results(results, tmp_path / "RESULTS.md").read_text()
    headings = [line for line in text.splitlines() if line.startswith("## Reproduction")]
    assert "CPU" in headings[0] and "Test GPU" in headings[-1]
    for link in [line for line in text.splitlines() if line.startswith("![")]:
        png = link.split("](")[1].rstrip(")")
        assert (tmp_path / png).is_file(), link  # links resolve from RESULTS.md's folder
