"""benchmarks/verdicts.py: the t distribution and the tests against closed forms and hand
computations; each claim's verdict on synthetic numbers against a hand-computed verdict."""

from __future__ import annotations

import math

import pytest

from benchmarks.verdicts import (
    FAILS,
    HOLDS,
    NOISE,
    aggregate,
    claims,
    compare,
    one_sample_t,
    t_two_sided_p,
    welch_t,
)


@pytest.mark.parametrize("t", [0.0, 0.5, 1.0, 2.0, 3.4641, 10.0])
def test_t_p_values_match_closed_forms(t: float) -> None:
    # df = 1 (Cauchy): p = 1 − (2/π)·atan|t|; df = 2: p = 1 − |t|/sqrt(t² + 2)
    assert t_two_sided_p(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(abs(t)), abs=1e-9)
    assert t_two_sided_p(t, 2) == pytest.approx(1 - abs(t) / math.sqrt(t * t + 2), abs=1e-9)


def test_t_p_value_matches_printed_critical_values() -> None:
    # two-sided 5% critical values of Student's t (any statistics table)
    for df, crit in ((3, 3.182446), (4, 2.776445), (10, 2.228139), (30, 2.042272)):
        assert t_two_sided_p(crit, df) == pytest.approx(0.05, abs=1e-5)


def test_paired_test_by_hand() -> None:
    # diffs 0.02, 0.03, 0.01: mean 0.02, sd 0.01, t = 0.02 / (0.01/√3) = 2√3, df 2
    a, b = {0: 0.80, 1: 0.82, 2: 0.81}, {0: 0.78, 1: 0.79, 2: 0.80}
    c = compare(a, b)
    assert c["t"] == pytest.approx(2 * math.sqrt(3))
    p = 1 - 2 * math.sqrt(3) / math.sqrt(12 + 2)
    assert c["p"] == pytest.approx(p) and p > 0.05
    assert c["verdict"] == NOISE and c["test"].startswith("paired")
    # diffs 0.05, 0.06, 0.07: t = 6√3 → p = 1 − 6√3/√110 < 0.05: holds
    c = compare({0: 0.85, 1: 0.88, 2: 0.88}, {0: 0.80, 1: 0.82, 2: 0.81})
    assert c["p"] == pytest.approx(1 - 6 * math.sqrt(3) / math.sqrt(108 + 2))
    assert c["verdict"] == HOLDS
    # the other way round: significant and negative
    assert compare({0: 0.80, 1: 0.82, 2: 0.81}, {0: 0.85, 1: 0.88, 2: 0.88})["verdict"] == FAILS
    # a margin shifts every difference: 40× − 1× + 2 pp with diffs −0.01, −0.02, −0.03
    c = compare({0: 0.79, 1: 0.78, 2: 0.77}, {0: 0.80, 1: 0.80, 2: 0.80}, margin=0.02)
    assert c["diff"]["mean"] == pytest.approx(0.0)


def test_one_sample_and_welch_by_hand() -> None:
    r = one_sample_t([1.0, 2.0, 3.0], mu=0.0)  # mean 2, sd 1, t = 2√3
    assert r["t"] == pytest.approx(2 * math.sqrt(3)) and r["df"] == 2
    # three seeds against a one-seed cell: A − B with B one value
    c = compare({0: 0.80, 1: 0.81, 2: 0.82}, {0: 0.70})
    assert c["test"].startswith("one-sample") and c["diff"]["mean"] == pytest.approx(0.11)
    # Welch: m 1 vs 0, s 1 and 1, n 4 and 4: t = 1/√0.5, df = 6
    w = welch_t(1.0, 1.0, 4, 0.0, 1.0, 4)
    assert w["t"] == pytest.approx(math.sqrt(2)) and w["df"] == pytest.approx(6.0)
    assert compare({0: 0.9}, {0: 0.8})["verdict"] == f"{HOLDS} (untested)"


def test_aggregate() -> None:
    assert aggregate([HOLDS, HOLDS]) == HOLDS
    assert aggregate([HOLDS, NOISE]) == NOISE
    assert aggregate([HOLDS, NOISE, FAILS]) == FAILS
    assert aggregate([HOLDS, f"{HOLDS} (untested)"]) == f"{HOLDS} (untested)"
    assert aggregate([None]) == "not measured"


def _run(variant, ipc, seed, ratio, top1, gran=None, metric="random", select=None):
    if ratio == 1.0:
        key = ["train", variant, ipc, seed, "stored", 1.0, None, None, None]
    else:
        key = ["train", variant, ipc, seed, "stored", ratio, gran, metric, select]
    return {"key": key, "metrics": {"top1": top1}}


def _synthetic() -> dict:
    """IPC10 at 1× and 40×, three seeds; values chosen for hand-computable verdicts."""
    runs = []
    noise = (0.0, 0.01, -0.01)
    for s, e in enumerate(noise):
        runs += [_run("lpld", 10, s, 1.0, 0.80 + e), _run("lpld", 10, s, 40.0, 0.79 + e, "batch"),
                 # sre2l 5 pp below LPLD at both ratios, same seed noise: LPLD ≥ holds
                 _run("sre2l", 10, s, 1.0, 0.75 + e), _run("sre2l", 10, s, 40.0, 0.74 + e,
                                                           "epoch"),
                 # cda above LPLD at 40× by 3 pp: does not hold
                 _run("cda", 10, s, 1.0, 0.75 + e), _run("cda", 10, s, 40.0, 0.82 + e, "epoch"),
                 _run("real", 10, s, 1.0, 0.70 + e), _run("real", 10, s, 40.0, 0.69 + e,
                                                          "batch")]
    runs.append(_run("lpld", 10, 0, 40.0, 0.60, "batch", "confidence", "easy"))  # one seed
    cos = {"sre2l": (0.90, 0.01), "cda": (0.80, 0.01), "lpld": (0.85, 0.01)}
    div = [{"ipc": 10, "method": m, "cosine": {"mean": mu, "std": sd, "n": 3}}
           for m, (mu, sd) in cos.items()]
    return {"meta": {}, "runs": runs, "tables": {
        "table3": {"ipcs": [10], "ratios": [1.0, 40.0]},
        "table5a": {"ipc": 10, "ratio": 40.0, "metrics": ["confidence"],
                    "selections": ["easy", "hard"]},
        "diversity": {"rows": div}}}


def test_claims_on_synthetic_numbers() -> None:
    by = {c["id"]: c for c in claims(_synthetic())}
    # (a): sre2l cells: diffs exactly 0.05 each seed (sd 0 → significant) hold; cda at 40×
    # −0.03 every seed: does not hold → the claim does not hold
    a = {c["setting"]: c["verdict"] for c in by["a"]["cells"]}
    assert a == {"IPC10 1×: LPLD − sre2l": HOLDS, "IPC10 1×: LPLD − cda": HOLDS,
                 "IPC10 40×: LPLD − sre2l": HOLDS, "IPC10 40×: LPLD − cda": FAILS}
    assert by["a"]["verdict"] == FAILS
    # (b): 40× − 1× = −1 pp every seed, + 2 pp margin = +1 pp, sd 0: holds
    assert by["b"]["verdict"] == HOLDS
    assert by["b"]["cells"][0]["diff"]["mean"] == pytest.approx(0.01)
    # (c): random (0.79, 0.80, 0.78) against the one-seed metric cell 0.60: holds
    assert by["c"]["cells"][0]["diff"]["mean"] == pytest.approx(0.19)
    assert by["c"]["verdict"] == HOLDS
    # (d): Welch on summaries: sre2l − lpld = 0.05, t = 0.05/√(2·0.01²/3) = 6.12, df 4:
    # holds; cda − lpld = −0.05: does not hold → the claim does not hold
    d = {c["setting"]: c for c in by["d"]["cells"]}
    assert d["IPC10: cosine sre2l − LPLD"]["t"] == pytest.approx(0.05 / math.sqrt(2e-4 / 3))
    assert d["IPC10: cosine sre2l − LPLD"]["verdict"] == HOLDS
    assert d["IPC10: cosine cda − LPLD"]["verdict"] == FAILS and by["d"]["verdict"] == FAILS
    # (e): every distilled set ≥ 5 pp above real with the same seed noise: holds
    assert by["e"]["verdict"] == HOLDS and len(by["e"]["cells"]) == 6
