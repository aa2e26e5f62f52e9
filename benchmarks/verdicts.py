"""A verdict per paper claim from a reproduction's JSON: holds / does not hold / within noise.

Each claim is a set of comparisons "A − B + margin ≥ 0" (A, B: top-1 or diversity per
seed). A comparison is tested across seeds: a paired t-test on the per-seed differences
when both sides share at least two seeds; a one-sample t-test of the many-seed side
against a one-seed value; Welch's t-test from means and standard deviations when only
those were recorded. Two-sided p < ALPHA with the mean difference ≥ 0: *holds*; < 0:
*does not hold*; otherwise *within noise*. With a single pair no test is possible: the
sign decides, marked "untested". A claim holds when every comparison holds, does not
hold when any does not hold, else it is within noise.

The Student t distribution is computed here (regularised incomplete beta by Lentz's
continued fraction), so the benchmarks need no scipy.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

ALPHA = 0.05
HOLDS, FAILS, NOISE = "holds", "does not hold", "within noise"


# ------------------------------------------------------------------ statistics
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| ≥ |t|) for Student's t with `df` degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return betainc(df / 2, 0.5, df / (df + t * t))


def one_sample_t(values: list[float], mu: float = 0.0) -> dict[str, Any]:
    """t-test of mean(values) against `mu`; t, df and p are None below two values."""
    n = len(values)
    mean = statistics.fmean(values) if values else None
    out: dict[str, Any] = {"n": n, "mean": mean, "std": None, "t": None, "df": None,
                           "p": None}
    if n < 2:
        return out
    sd = statistics.stdev(values)
    out.update(std=sd, df=n - 1)
    diff = mean - mu
    if sd == 0:
        out.update(t=math.copysign(math.inf, diff) if diff else 0.0,
                   p=0.0 if diff else 1.0)
        return out
    t = diff / (sd / math.sqrt(n))
    out.update(t=t, p=t_two_sided_p(t, n - 1))
    return out


def welch_t(m1: float, s1: float, n1: int, m2: float, s2: float, n2: int) -> dict[str, Any]:
    """Welch's two-sample t-test of m1 − m2 from means, sample stds and counts."""
    out: dict[str, Any] = {"t": None, "df": None, "p": None}
    if n1 < 2 or n2 < 2:
        return out
    v1, v2 = s1 * s1 / n1, s2 * s2 / n2
    if v1 + v2 == 0:
        diff = m1 - m2
        out.update(t=math.copysign(math.inf, diff) if diff else 0.0, p=0.0 if diff else 1.0)
        return out
    t = (m1 - m2) / math.sqrt(v1 + v2)
    df = (v1 + v2) ** 2 / (v1 * v1 / (n1 - 1) + v2 * v2 / (n2 - 1))
    out.update(t=t, df=df, p=t_two_sided_p(t, df))
    return out


def _stat(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def compare(a: dict[Any, float], b: dict[Any, float], margin: float = 0.0,
            summary: tuple[dict[str, Any], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Test A − B + margin ≥ 0. a, b: value per seed; `summary`: (A, B) as mean/std/n when
    per-seed values were not recorded (Welch)."""
    out: dict[str, Any] = {"margin": margin}
    if summary is not None and not (a and b):
        sa, sb = summary
        out.update(a=sa, b=sb)
        if sa.get("mean") is None or sb.get("mean") is None:
            return {**out, "test": "none", "verdict": None}
        mean = sa["mean"] - sb["mean"] + margin
        w = welch_t(sa["mean"] + margin, sa["std"], sa["n"], sb["mean"], sb["std"], sb["n"])
        out.update(diff={"mean": mean, "std": None, "n": min(sa["n"], sb["n"])},
                   test="Welch t", **w)
        return {**out, "verdict": decide(mean, w["p"])}
    out.update(a=_stat(list(a.values())), b=_stat(list(b.values())))
    common = sorted(set(a) & set(b), key=str)
    if len(common) >= 2:
        diffs = [a[s] - b[s] + margin for s in common]
        r = one_sample_t(diffs)
        out.update(diff=_stat(diffs), test=f"paired t ({len(common)} seeds)", t=r["t"],
                   df=r["df"], p=r["p"])
        return {**out, "verdict": decide(r["mean"], r["p"])}
    if len(a) >= 2 and len(b) == 1 or len(b) >= 2 and len(a) == 1:
        many, one, sign = (a, b, 1.0) if len(a) >= 2 else (b, a, -1.0)
        value = next(iter(one.values()))
        # A − B + margin ≥ 0 ⇔ sign·(many − one) + margin ≥ 0
        r = one_sample_t([sign * (v - value) + margin for v in many.values()])
        out.update(diff=_stat([sign * (v - value) + margin for v in many.values()]),
                   test="one-sample t (one side has one seed)", t=r["t"], df=r["df"], p=r["p"])
        return {**out, "verdict": decide(r["mean"], r["p"])}
    if common:
        d = a[common[0]] - b[common[0]] + margin
        out.update(diff=_stat([d]), test="one seed: untested", t=None, df=None, p=None)
        return {**out, "verdict": decide(d, None)}
    return {**out, "test": "none", "t": None, "df": None, "p": None, "verdict": None}


def decide(mean: float | None, p: float | None) -> str | None:
    """holds / does not hold / within noise for a mean difference (≥ 0 is the claim)."""
    if mean is None:
        return None
    if p is None:
        return f"{HOLDS if mean >= 0 else FAILS} (untested)"
    if p < ALPHA:
        return HOLDS if mean >= 0 else FAILS
    return NOISE


def aggregate(verdicts: list[str | None]) -> str:
    """Every comparison holds → holds; any does not hold → does not hold; else noise."""
    vs = [v for v in verdicts if v is not None]
    if not vs:
        return "not measured"
    if any(v.startswith(FAILS) for v in vs):
        return FAILS if FAILS in vs else f"{FAILS} (untested)"
    if all(v.startswith(HOLDS) for v in vs):
        return HOLDS if all(v == HOLDS for v in vs) else f"{HOLDS} (untested)"
    return NOISE


# ------------------------------------------------------------------ claims
GRANULARITY = {"sre2l": "epoch", "cda": "epoch", "lpld": "batch", "real": "batch",
               "sre2l+C": "epoch", "lpld-ema": "batch"}
DISTILLED = ("sre2l", "cda", "lpld")


def top1_by_seed(res: dict[str, Any], variant: str, ipc: int, ratio: float,
                 granularity: str | None = None, metric: str | None = "random",
                 select: str | None = None, mode: str = "stored") -> dict[int, float]:
    """Per-seed top-1 of one plan cell from the JSON's `runs` (9-field train keys)."""
    if ratio == 1.0:
        want = ["train", variant, ipc, None, mode, 1.0, None, None, None]
    else:
        want = ["train", variant, ipc, None, mode, ratio,
                granularity or GRANULARITY[variant], metric, select]
    out = {}
    for run in res.get("runs", []):
        key = run["key"]
        if len(key) != 9 or key[0] != "train":
            continue
        if all(w is None and i == 3 or key[i] == w for i, w in enumerate(want)):
            out[int(key[3])] = float(run["metrics"]["top1"])
    return out


def _ratios(res: dict[str, Any], ipc: int) -> list[float]:
    t3 = res["tables"]["table3"]
    by = t3.get("ratios_by_ipc")
    return [float(r) for r in (by[str(ipc)] if by else t3["ratios"])]


def claims(res: dict[str, Any], mechanism: dict[str, Any] | None = None
           ) -> list[dict[str, Any]]:
    """The five claims of issue 18, each with its comparisons and its verdict."""
    t = res["tables"]
    ipcs = t["table3"]["ipcs"]
    out = []

    cells = []
    for ipc in ipcs:
        for r in _ratios(res, ipc):
            for other in ("sre2l", "cda"):
                c = compare(top1_by_seed(res, "lpld", ipc, r), top1_by_seed(res, other, ipc, r))
                cells.append({"setting": f"IPC{ipc} {r:g}×: LPLD − {other}", **c})
    out.append({"id": "a", "claim": "LPLD ≥ SRe²L and CDA at every pruning ratio (Table 3)",
                "unit": "pp", "cells": cells})

    cells = []
    for ipc in ipcs:
        if 40.0 not in _ratios(res, ipc):
            continue
        c = compare(top1_by_seed(res, "lpld", ipc, 40.0), top1_by_seed(res, "lpld", ipc, 1.0),
                    margin=0.02)
        cells.append({"setting": f"IPC{ipc}: LPLD 40× − 1× + 2 pp", **c})
    out.append({"id": "b", "claim": "LPLD at 40× within 2 points of 1×", "unit": "pp",
                "cells": cells})

    t5 = t["table5a"]
    cells = []
    rand = top1_by_seed(res, "lpld", t5["ipc"], float(t5["ratio"]), "batch")
    for metric in t5["metrics"]:
        for sel in t5["selections"]:
            m = top1_by_seed(res, "lpld", t5["ipc"], float(t5["ratio"]), "batch", metric, sel)
            if m:
                c = compare(rand, m)
                cells.append({"setting": f"IPC{t5['ipc']} {t5['ratio']:g}×: random − "
                                         f"{metric}/{sel}", **c})
    out.append({"id": "c", "claim": f"random pruning ≥ every metric at {t5['ratio']:g}× "
                                    "(Table 5a)", "unit": "pp", "cells": cells})

    cells = []
    for ipc in ipcs:
        rows = {r["method"]: r for r in t["diversity"]["rows"] if r["ipc"] == ipc}
        if "lpld" not in rows:
            continue
        for other in ("sre2l", "cda"):
            if other not in rows:
                continue
            a = {int(k): v for k, v in rows[other]["cosine"].get("per_seed", {}).items()}
            b = {int(k): v for k, v in rows["lpld"]["cosine"].get("per_seed", {}).items()}
            c = compare(a, b, summary=(rows[other]["cosine"], rows["lpld"]["cosine"]))
            cells.append({"setting": f"IPC{ipc}: cosine {other} − LPLD", **c})
    if mechanism:
        for row in mechanism["sweep"]["rows"]:
            if row["method"] != "lpld":
                continue
            other = next((x for x in mechanism["sweep"]["rows"] if x["method"] == "sre2l"
                          and x["iterations"] == row["iterations"]
                          and x["r_bn"] == row["r_bn"]), None)
            if other is None:
                continue
            c = compare({}, {}, summary=(other["cosine"], row["cosine"]))
            cells.append({"setting": f"mechanism IPC{mechanism['meta']['ipc']} "
                                     f"{row['iterations']} it, r_bn {row['r_bn']:g}: cosine "
                                     "sre2l − LPLD", **c})
    out.append({"id": "d", "claim": "class-wise (LPLD) images more diverse than SRe²L/CDA "
                                    "(lower within-class cosine; Table 1)", "unit": "cosine",
                "cells": cells})

    cells = []
    real_epoch = {ipc: top1_by_seed(res, "real", ipc, 40.0, "epoch") for ipc in ipcs}
    for ipc in ipcs:
        for m in DISTILLED:
            for r in _ratios(res, ipc):
                real = top1_by_seed(res, "real", ipc, r)
                if r != 1.0 and GRANULARITY[m] == "epoch" and r == 40.0 and real_epoch[ipc]:
                    real = real_epoch[ipc]  # the same pool rule as the method
                if not real:
                    continue
                c = compare(top1_by_seed(res, m, ipc, r), real)
                cells.append({"setting": f"IPC{ipc} {r:g}×: {m} − random real", **c})
    out.append({"id": "e", "claim": "distilled images beat a random real subset under the "
                                    "same labels (IOR > 0)", "unit": "pp", "cells": cells})
    for claim in out:
        claim["verdict"] = aggregate([c["verdict"] for c in claim["cells"]])
    return out



def budget_comparison(res: dict[str, Any], earlier: dict[str, Any]) -> list[dict[str, Any]]:
    """The claims of `res` beside those of an `earlier` run of another epoch budget: per
    claim both verdicts, and every comparison present in both whose verdict changed. The
    mechanism sweep (recover only, no epochs) is left out: it would be the same on both."""
    before = {c["id"]: c for c in claims(earlier)}
    rows = []
    for c in claims(res):
        old = before.get(c["id"])
        if old is None:
            continue
        was = {cell["setting"]: cell["verdict"] for cell in old["cells"]}
        shared = [cell for cell in c["cells"] if cell["setting"] in was]
        changed = [{"setting": cell["setting"], "before": was[cell["setting"]],
                    "now": cell["verdict"]}
                   for cell in shared if cell["verdict"] != was[cell["setting"]]]
        rows.append({"id": c["id"], "before": old["verdict"], "now": c["verdict"],
                     "shared": len(shared), "changed": changed})
    return rows


def render_budget(res: dict[str, Any], earlier: dict[str, Any]) -> str:
    """Does the epoch budget decide the verdicts? The table of `budget_comparison` ("" when
    the two runs have the same epochs)."""
    def epochs(meta: dict[str, Any]) -> str:
        return ", ".join(f"IPC{k} {v}" for k, v in sorted(meta["epochs"].items(),
                                                           key=lambda kv: int(kv[0])))

    then, now = epochs(earlier["meta"]), epochs(res["meta"])
    if then == now:
        return ""
    out = ["### Does the epoch budget decide the verdicts?", "",
           f"The same claims from an earlier full run with other relabel/train epochs "
           f"({then}; this run: {now}): {source_label(earlier)}. A comparison in both runs is "
           "listed when its verdict differs (the mechanism sweep, which trains no student, "
           "is left out).", "",
           f"| claim | verdict at {then} epochs | verdict at {now} epochs | comparisons in both "
           "| changed |",
           "|---|---|---|---|---|"]
    for row in budget_comparison(res, earlier):
        changed = "; ".join(f"{c['setting']}: {c['before'] or 'n/a'} → {c['now'] or 'n/a'}"
                            for c in row["changed"]) or "none"
        out.append(f"| ({row['id']}) | {row['before']} | {row['now']} | {row['shared']} | "
                   f"{changed} |")
    return "\n".join([*out, ""])


# ------------------------------------------------------------------ rendering
def _fmt(stat: dict[str, Any] | None, unit: str) -> str:
    if not stat or stat.get("mean") is None:
        return "n/a"
    scale, digits = (100.0, 1) if unit == "pp" else (1.0, 4)
    text = f"{scale * stat['mean']:.{digits}f}"
    if stat.get("n", 1) > 1 and stat.get("std") is not None:
        text += f" ± {scale * stat['std']:.{digits}f}"
    return text


def source_label(res: dict[str, Any]) -> str:
    """Which run the verdicts come from, and at which settings."""
    meta = res["meta"]
    text = (f"`{meta['command']}` on {meta['finished']} ({meta['device']['name']}, "
            f"seeds {meta['seeds']}; recover iterations per IPC {meta['recover_iterations']}, "
            f"relabel/train epochs per IPC {meta['epochs']})")
    if meta.get("plan") != "issue-18":
        text += (". **These are the first round's scaled-down settings, not issue 18's "
                 "preset-settings plan** (recover 500 iterations, 300 epochs, ~3,000 steps "
                 "per IPC50 student): the verdicts are provisional until "
                 "`python benchmarks/reproduce.py` has run in full")
    elif meta.get("quick"):
        text += ". **A quick run: a smoke test, not a measurement**"
    return text


def render(res: dict[str, Any], mechanism: dict[str, Any] | None = None) -> str:
    cs = claims(res, mechanism)
    out = ["## Verdicts on the paper's claims", "",
           f"From {source_label(res)}. Top-1 in %, differences in points, mean ± sample std "
           f"over seeds; a comparison holds or fails at two-sided p < {ALPHA} (paired t across "
           "seeds where both sides share seeds), else it is within noise.", ""]
    rows = []
    for c in cs:
        counts = {}
        for cell in c["cells"]:
            key = (cell["verdict"] or "n/a").split(" (")[0]
            counts[key] = counts.get(key, 0) + 1
        rows.append([f"({c['id']}) {c['claim']}", f"**{c['verdict']}**",
                     ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "no data"])
    out += ["| claim | verdict | comparisons |", "|---|---|---|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    out += ["", "<details><summary>Every comparison</summary>", "",
            "| claim | comparison | A | B | A − B (+ margin) | test | t | p | verdict |",
            "|---|---|---|---|---|---|---|---|---|"]
    for c in cs:
        for cell in c["cells"]:
            t = "–" if cell.get("t") is None else f"{cell['t']:.2f}"
            p = "–" if cell.get("p") is None else f"{cell['p']:.3f}"
            out.append(f"| ({c['id']}) | {cell['setting']} | {_fmt(cell.get('a'), c['unit'])} | "
                       f"{_fmt(cell.get('b'), c['unit'])} | {_fmt(cell.get('diff'), c['unit'])}"
                       f" | {cell.get('test')} | {t} | {p} | {cell['verdict'] or 'n/a'} |")
    out += ["", "</details>", ""]
    if mechanism:
        out += [f"Mechanism ({'quick' if mechanism['meta']['quick'] else 'full'} run, "
                f"`{mechanism['meta']['command']}` on {mechanism['meta']['finished']}):", ""]
        out += [f"- {line}" for line in mechanism.get("findings", [])]
        out += [""]
    return "\n".join(out)
