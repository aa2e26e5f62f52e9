"""benchmarks/RESULTS.md is what the committed results JSON renders to, never hand-edited."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from benchmarks._env import BENCH, DEFAULT_OUT
from benchmarks._render import regenerate_results


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


def test_the_demo_section_renders_its_steps_students_and_plot(tmp_path: Path) -> None:
    """benchmarks/demo.py's JSON: a section with the wall time, every step, every student
    and a plot link that resolves; step times parsed from pipeline.sh's own stderr lines."""
    from benchmarks.demo import PLOT, step_times

    stderr = "\n== lpld squeeze --dataset fashion-mnist\nnoise\n   (61 s)\n\n== lpld recover " \
             "--ipc 10\n   (95 s)\n"
    steps = step_times(stderr)
    assert steps == [{"step": "squeeze --dataset fashion-mnist", "seconds": 61},
                     {"step": "recover --ipc 10", "seconds": 95}]
    results = tmp_path / "results"
    results.mkdir()
    (results / PLOT).write_bytes(b"\x89PNG")
    students = [{"id": "a" * 64, "labels": "stored", "ratio": "40x", "top1": 0.8125,
                 "label_bytes": 123456},
                {"id": "b" * 64, "labels": "hard", "ratio": None, "top1": 0.5, "label_bytes": 0}]
    plot_step = {"step": f"report accuracy --plot /tmp/lpld-demo-x1/{PLOT}", "seconds": 3}
    (results / "demo.json").write_text(json.dumps(
        {"wall_s": 540.0, "steps": [*steps, plot_step], "students": students, "figure": PLOT,
         "meta": {"cpus": 2, "device": {}}}))
    text = regenerate_results(results, tmp_path / "RESULTS.md").read_text()
    section = text.split("## The README demo")[1]
    assert "**9.0 min**" in section and "| `lpld recover --ipc 10` | 95 |" in section
    assert f"| `lpld report accuracy --plot results/{PLOT}` | 3 |" in section  # the kept copy
    assert "| aaaaaaaaaaaa | stored | 40x | 81.2% | 123,456 |" in section
    assert "| bbbbbbbbbbbb | hard | — | 50.0% | 0 |" in section
    link = [line for line in section.splitlines() if line.startswith("![")][0]
    assert (tmp_path / link.split("](")[1].rstrip(")")).is_file()


def test_the_convergence_check_says_whether_the_budget_is_on_the_plateau() -> None:
    from benchmarks._render import _plateau_line

    def rows(**top1: float) -> list[dict]:
        return [{"epochs": int(k[1:]), "top1": v} for k, v in top1.items()]

    slow = _plateau_line(10, 300, rows(e200=0.811, e300=0.830, e600=0.859))
    assert slow[0].startswith("IPC10: 600 epochs give +2.9 pp over the plan's 300")
    assert "**not on the plateau**" in slow[0]
    done = _plateau_line(50, 300, rows(e300=0.882, e600=0.890))
    assert "+0.8 pp" in done[0] and done[0].endswith(": on the plateau.")
    assert _plateau_line(10, 300, rows(e100=0.7, e200=0.8)) == []  # the budget was not run
    assert _plateau_line(10, 300, rows(e100=0.7, e300=0.8)) == []  # nothing longer


def test_an_earlier_budget_is_compared_claim_by_claim(tmp_path: Path) -> None:
    """results/earlier/: a full run at other epochs; RESULTS.md lists each claim's verdict at
    both budgets and every comparison whose verdict moved (here one, flipped by hand)."""
    earlier = json.loads((DEFAULT_OUT / "earlier" / "reproduce-ipc10-300-epochs.json").read_text())
    assert earlier["meta"]["epochs"] == {"10": 300, "50": 300}
    now = json.loads(json.dumps(earlier))
    now["meta"]["epochs"] = {"10": 600, "50": 300}
    cda = {run["key"][3]: run["metrics"]["top1"] for run in now["runs"]
           if run["key"] == ["train", "cda", 10, run["key"][3], "stored", 40.0, "epoch",
                             "random", None]}
    assert sorted(cda) == [0, 1, 2]
    for run in now["runs"]:  # LPLD IPC10 40× now 4-6 points above CDA on every seed
        if run["key"] == ["train", "lpld", 10, run["key"][3], "stored", 40.0, "batch",
                          "random", None]:
            run["metrics"]["top1"] = cda[run["key"][3]] + 0.04 + 0.01 * run["key"][3]
    results = tmp_path / "results"
    (results / "earlier").mkdir(parents=True)
    (results / "reproduce.json").write_text(json.dumps(now))
    shutil.copy(DEFAULT_OUT / "earlier" / "reproduce-ipc10-300-epochs.json", results / "earlier")
    text = regenerate_results(results, tmp_path / "RESULTS.md").read_text()
    section = text.split("### Does the epoch budget decide the verdicts?")[1].split("\n## ")[0]
    assert "| verdict at IPC10 300, IPC50 300 epochs | verdict at IPC10 600, IPC50 300 epochs |" \
        in section
    row_a = next(line for line in section.splitlines() if line.startswith("| (a) |"))
    assert row_a == ("| (a) | does not hold | within noise | 12 | "
                     "IPC10 40×: LPLD − sre2l: within noise → holds; "
                     "IPC10 40×: LPLD − cda: does not hold → holds |")
    assert "| (e) | does not hold | does not hold | 18 |" in section
    # the same budget twice: no table
    (results / "reproduce.json").write_text(json.dumps(earlier))
    text = regenerate_results(results, tmp_path / "RESULTS.md").read_text()
    assert "Does the epoch budget" not in text
