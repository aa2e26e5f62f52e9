"""Students' accuracy against label storage (the paper's Fig. 1 and Table 3 view).

Rows are plain dicts (the `--json` payload); the commands only format them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lpld_cli.errors import ConfigError
from lpld_cli.reports.units import UNITS, pick_unit
from lpld_cli.storage.encoding import Encoding
from lpld_cli.storage.labels import GROUP
from lpld_cli.storage.store import Artifact, Store


def disk_bytes(artifact: Artifact) -> int:
    """The payload's bytes on disk, from the manifest."""
    return artifact.payload_bytes


def pool_encoding(store: Store, student: Artifact) -> str | None:
    """How the student's label pool encodes its labels (`float16`, `q4`, `top-5 min`, …)."""
    if student.selectors.get("labels") != "stored":
        return None
    for ref in student.parents[1:]:
        found = store.find("labels", ref)
        if found is not None:
            try:
                meta = json.loads((found.path / GROUP / "zarr.json").read_text())
                return Encoding.from_attributes(meta.get("attributes", {})).describe()
            except (OSError, ValueError):
                return None
    return None


# ----------------------------------------------------------------------- accuracy
def accuracy_rows(store: Store) -> list[dict[str, Any]]:
    """Every student: its images' method and IPC, label ratio and mode, accuracy, storage."""
    rows = []
    for student in store.list("student"):
        sel, m = student.selectors, student.metrics
        images = store.find("images", student.parents[0]) if student.parents else None
        rows.append({
            "id": student.id, "dataset": sel.get("dataset"), "method": sel.get("method"),
            "ipc": sel.get("ipc"), "labels": sel.get("labels"), "ratio": sel.get("ratio"),
            "granularity": sel.get("granularity"),
            "encoding": pool_encoding(store, student), "model": student.config.get("model"),
            "epochs": m.get("epochs"), "top1": m.get("top1"), "top5": m.get("top5"),
            "label_rows": m.get("label_rows", 0), "label_bytes": m.get("label_pool_bytes", 0),
            "image_bytes": disk_bytes(images) if images is not None else None,
            "created": student.manifest.get("created")})
    rows.sort(key=lambda r: (str(r["dataset"]), str(r["method"]), r["ipc"] or 0,
                             str(r["labels"]), -(r["label_bytes"] or 0)))
    return rows


def _group_name(row: dict[str, Any], with_dataset: bool, with_model: bool) -> str:
    name = f"{row['method']} IPC{row['ipc']}"
    if with_model:
        name += f" {row['model']}"
    if with_dataset:
        name = f"{row['dataset']} {name}"
    return name


def _plain(value: float, _pos: object = None) -> str:
    """A tick label without scientific notation: 0.01, 0.5, 20, 1,000."""
    if value >= 1:
        return f"{value:,.0f}" if value == round(value) else f"{value:,.1f}"
    return f"{value:.6f}".rstrip("0").rstrip(".")


def plot_accuracy(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Paper Fig. 1's view: top-1 against label storage (log x), one line per method.

    Stored-label students are points on their method's line (the newest student of each
    label pool), each tagged with its ratio; the newest online / hard students (no label
    storage) are dashed / dotted horizontal lines in the same colour; grey vertical lines
    mark each image set's storage.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ConfigError(f"--plot {path} must be a .png file")
    if not rows:
        raise ConfigError("no students in the store to plot", "train one with `lpld train`")
    with_dataset = len({r["dataset"] for r in rows}) > 1
    with_model = len({r["model"] for r in rows}) > 1
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(_group_name(r, with_dataset, with_model), []).append(r)
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=120)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    # one readable unit for the storage axis (KB for Fashion-MNIST stores, GB for ImageNet)
    unit = pick_unit([*(r["label_bytes"] for r in rows if r["labels"] == "stored"),
                      *(r["image_bytes"] for r in rows)])
    scale = UNITS[unit]
    stored_mb = [r["label_bytes"] / scale for r in rows if r["labels"] == "stored"
                 and r["label_bytes"]]
    for i, (name, members) in enumerate(sorted(groups.items())):
        colour = colours[i % len(colours)]
        newest: dict[tuple, dict[str, Any]] = {}  # one point per pool: its newest student
        for r in members:
            if r["labels"] == "stored" and r["label_bytes"]:
                key = (r["label_bytes"], r["ratio"], r["granularity"])
                if key not in newest or (r["created"] or 0) > (newest[key]["created"] or 0):
                    newest[key] = r
        stored = sorted(newest.values(), key=lambda r: r["label_bytes"])
        if stored:
            xs = [r["label_bytes"] / scale for r in stored]
            ys = [100 * r["top1"] for r in stored]
            ax.plot(xs, ys, "o-", color=colour, label=f"{name} (stored labels)")
            for x, y, r in zip(xs, ys, stored, strict=True):
                ax.annotate(f"{r['ratio']:g}x" if r["ratio"] else "", (x, y),
                            textcoords="offset points", xytext=(0, 7), ha="center",
                            fontsize=8, color=colour)
        for mode, style in (("online", "--"), ("hard", ":")):
            best = max((r for r in members if r["labels"] == mode),
                       key=lambda r: r["created"] or 0, default=None)
            if best is not None:
                ax.axhline(100 * best["top1"], color=colour, linestyle=style, linewidth=1.2,
                           label=f"{name} {mode} labels ({100 * best['top1']:.1f}%)")
    images_mb = {}
    for r in rows:
        if r["image_bytes"]:
            images_mb[f"images IPC{r['ipc']}"] = r["image_bytes"] / scale
    for label, mb in sorted(images_mb.items()):
        ax.axvline(mb, color="grey", linestyle="-.", linewidth=0.8)
        ax.annotate(f"{label}\n{mb:,.3g} {unit}", (mb, 0.5), xycoords=("data", "axes fraction"),
                    fontsize=8, color="grey", ha="left", va="center", xytext=(3, 0),
                    textcoords="offset points")
    if stored_mb or images_mb:
        ax.set_xscale("log")
        span = [*stored_mb, *images_mb.values()]
        ax.set_xlim(min(span) / 2, max(span) * 2)  # at least a decade, points off the edges
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_plain))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    else:  # only online/hard students: no storage axis to draw
        ax.set_xticks([])
    ax.set_xlabel(f"label storage on disk ({unit}, log scale)")
    ax.set_ylabel("top-1 on the real test split (%)")
    ax.set_title("Student accuracy vs label storage")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
