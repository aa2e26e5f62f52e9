"""`lpld report diversity`: within-class feature cosine similarity and MMD² of image sets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lpld_cli.checks import at_least
from lpld_cli.commands._options import Common, common_options
from lpld_cli.commands._ui import RichReporter, emit, info
from lpld_cli.errors import ArtifactNotFoundError
from lpld_cli.reports import DEFAULT_REAL_PER_CLASS


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"


@common_options
def command(
    common: Common,
    from_: Annotated[list[str] | None, typer.Option(
        "--from", help="Images artifact id (or prefix); repeat for several [default: every "
                       "image set in the store].", show_default=False)] = None,
    grid: Annotated[Path | None, typer.Option(
        help="Also write a PNG grid (classes × images) of each image set to this file.",
        show_default=False)] = None,
    real_per_class: Annotated[int, typer.Option(
        help="Seeded random real training images per class for MMD² (and its kernel "
             "bandwidth, the median heuristic).")] = DEFAULT_REAL_PER_CLASS,
    data: Annotated[str | None, typer.Option(
        help="Dataset folder of the real images [default: the dataset's usual place].",
        show_default=False)] = None,
) -> None:
    """Within-class cosine similarity (Eq. 4) and MMD² to real data (Eq. 5) of image sets."""
    at_least("--real-per-class", real_per_class, 2)  # before the store is read
    store = common.store
    if from_:
        artifacts = [store.get(ref, kind="images") for ref in from_]
    else:
        artifacts = list(reversed(store.list("images")))  # oldest first
        if not artifacts:
            raise ArtifactNotFoundError(f"no images in store {store.root}",
                                        "make some with `lpld recover`")
        for art in artifacts:
            store.verify(art)
    from lpld_cli.reports.diversity import diversity, save_grid  # torch: only when it runs

    with RichReporter() as reporter:
        rows = diversity(store, artifacts, data_root=data, real_per_class=real_per_class,
                         seed=common.seed, device=common.device, reporter=reporter)
    if grid is not None:
        info(f"grid written to {save_grid(grid, artifacts)}")
    header = f"{'images':<14}{'method':<13}{'ipc':>5}{'teacher':>14}{'cosine':>9}" \
             f"{'± std':>8}{'MMD²':>10}"
    lines = [header, "-" * len(header)]
    for row in rows:
        name = row["artifact"][:12] if row["artifact"] else "(reference)"
        lines.append(f"{name:<14}{row['method']:<13}{row['ipc']:>5}{row['teacher'][:12]:>14}"
                     f"{_fmt(row['cosine']):>9}{_fmt(row['cosine_std'], 3):>8}"
                     f"{_fmt(row['mmd2']):>10}")
    lines.append(f"cosine: Eq. 4, mean over classes of the mean pairwise cosine of the "
                 f"teacher's penultimate features; MMD²: Eq. 5 (biased) to "
                 f"{real_per_class} seeded real training images per class, Gaussian kernel, "
                 f"bandwidth = median squared distance of the real sample.")
    emit({"report": "diversity", "rows": rows}, common.json, "\n".join(lines))
