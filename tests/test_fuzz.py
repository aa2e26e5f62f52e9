"""Table-driven CLI fuzz: every malformed invocation exits non-zero with exactly one `Error:`
line, no traceback, and leaves the store as it was (issue 16 deliverable 4).

Invocations run in-process with typer's CliRunner (fast); a few run as real subprocesses
to check what a user's terminal shows. `{teacher}`, `{images}`, `{labels}`, `{pruned}`,
`{file}`, `{kind_folder}` and `{store}` are filled in from a small real store.
"""

from __future__ import annotations

import hashlib
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lpld_cli.cli import app
from lpld_cli.prune import PruneConfig, prune
from lpld_cli.relabel import RelabelConfig, relabel
from lpld_cli.storage.store import Store
from tests.conftest import make_real_images, needs_fmnist, run_lpld

pytestmark = needs_fmnist

NAN, INF = "nan", "inf"

CASES: list[str] = [
    # ------------------------------------------------------------------ global / store
    "frobnicate",
    "squeeze --no-such-option 1",
    "verify --store {file}",
    "verify --store ''",
    "verify --store {kind_folder}",
    "verify --store {store}/objects",
    "verify --store {store}/nowhere",
    "verify zzzz",
    "verify ''",
    "verify abc",
    "verify 0123456789abcdef",
    "recover --store {file}",
    "recover --store ''",
    "train --store {kind_folder}",
    "relabel --device nope",
    "relabel --device cuda:7",
    "prune --seed -1",
    "recover --seed -1",
    # ---------------------------------------------------------------------------- squeeze
    "squeeze --dataset nope",
    "squeeze --dataset ''",
    "squeeze --teacher-epochs 0",
    "squeeze --teacher-epochs -1",
    "squeeze --batch-size 0",
    "squeeze --batch-size -1",
    "squeeze --lr 0",
    "squeeze --lr -1",
    f"squeeze --lr {NAN}",
    f"squeeze --lr {INF}",
    "squeeze --train-subset 0",
    "squeeze --train-subset -1",
    "squeeze --train-subset 99999999",
    "squeeze --bn-stats nope",
    "squeeze --width 0",
    "squeeze --width -1",
    "squeeze --depth 0",
    "squeeze --depth -1",
    "squeeze --model nope",
    "squeeze --model timm:no_such_net",
    "squeeze --weights {store}/no-such-file.safetensors",
    "squeeze --weights {file}",
    "squeeze --data {store}/no-such-folder",
    "squeeze --dataset imagefolder",
    "squeeze --dataset tiny-imagenet --data {store}",
    # ---------------------------------------------------------------------------- recover
    "recover --ipc 0",
    "recover --ipc -1",
    "recover --iterations 0",
    "recover --iterations -1",
    "recover --lr 0",
    "recover --lr -1",
    f"recover --lr {NAN}",
    f"recover --lr {INF}",
    "recover --r-bn -1",
    f"recover --r-bn {NAN}",
    f"recover --r-bn {INF}",
    # (--first-bn-multiplier 0 is valid: like --r-bn 0, an ablation that drops a term)
    "recover --first-bn-multiplier -1",
    f"recover --first-bn-multiplier {NAN}",
    "recover --jitter -1",
    "recover --classes-per-step 0",
    "recover --classes-per-step -1",
    "recover --mixed-batch 0",
    "recover --method nope",
    "recover --batching nope",
    "recover --bn-target nope",
    "recover --from ''",
    "recover --from zzzz",
    "recover --from abc",
    "recover --from {images}",
    "recover --from 0123456789abcdef",
    "recover --dataset nope",
    "recover --dataset mnist",
    # ---------------------------------------------------------------------------- relabel
    "relabel --ipc 0",
    "relabel --ipc -1",
    "relabel --epochs 0",
    "relabel --epochs -1",
    "relabel --batch-size 0",
    "relabel --batch-size -1",
    "relabel --mix nope",
    "relabel --logits-dtype nope",
    "relabel --codec nope",
    "relabel --rows-per-chunk 0",
    "relabel --rows-per-chunk -1",
    "relabel --logits-dtype ''",
    "relabel --threads -1",
    "relabel --from ''",
    "relabel --from zzzz",
    "relabel --from {teacher}",
    "relabel --from {labels}",
    "relabel --teacher {images} --from {images}",
    "relabel --ipc 7",
    "relabel --method nope",
    # ------------------------------------------------------------------------------ prune
    "prune --ratio 0x",
    "prune --ratio 0",
    "prune --ratio -2",
    "prune --ratio 0.5",
    f"prune --ratio {NAN}",
    f"prune --ratio {INF}",
    "prune --ratio abc",
    "prune --ratio ''",
    "prune --ratio 2x --granularity nope",
    "prune --ratio 2x --metric nope",
    "prune --ratio 2x --select nope",
    "prune --ratio 2x --calibrate-easy -1",
    f"prune --ratio 2x --calibrate-easy {NAN}",
    "prune --ratio 2x --calibrate-easy 2",
    "prune --ratio 2x --calibrate-hard -1",
    f"prune --ratio 2x --calibrate-hard {INF}",
    "prune --ratio 2x --from ''",
    "prune --ratio 2x --from zzzz",
    "prune --ratio 2x --from {images}",
    "prune --ratio 2x --ipc 7",
    # ------------------------------------------------------------------------------ train
    "train --epochs 0",
    "train --epochs -1",
    "train --batch-size 0",
    "train --batch-size -1",
    "train --batch-size 7",
    "train --temperature 0",
    "train --temperature -1",
    f"train --temperature {NAN}",
    f"train --temperature {INF}",
    "train --loss nope",
    "train --optimizer nope",
    "train --lr 0",
    "train --lr -1",
    f"train --lr {NAN}",
    f"train --lr {INF}",
    "train --weight-decay -1",
    f"train --weight-decay {NAN}",
    "train --warmup-epochs -1",
    "train --epochs 2 --warmup-epochs 5",
    "train --eval-every -1",
    "train --labels zzzz",
    "train --labels ''",
    "train --labels {images}",
    "train --labels hard --images ''",
    "train --labels hard --images {teacher}",
    "train --labels hard --loss mse-gt",
    "train --ratio 0x",
    "train --ratio 3x",
    "train --width 0",
    "train --depth 0",
    "train --model nope",
    "train --ipc 0",
    "train --ipc -1",
    "train --ipc 7",
    # ----------------------------------------------------------------------------- report
    "report nope",
    "report storage --plan nope --ipc 10",
    "report storage --plan fashion-mnist",
    "report storage --plan fashion-mnist --ipc 0",
    "report storage --plan fashion-mnist --ipc -1",
    "report storage --plan fashion-mnist --ipc 10 --epochs 0",
    "report storage --plan fashion-mnist --ipc 10 --batch-size 0",
    "report storage --plan fashion-mnist --ipc 10 --logits-dtype nope",
    "report storage --plan imagefolder --ipc 10 --classes 0",
    "report storage --plan fashion-mnist --ipc 10 --image-bytes -1",
    "report storage --from zzzz",
    "report storage --from {teacher}",
    "report storage --from ''",
    "report diversity --from zzzz",
    "report diversity --from {teacher}",
    "report diversity --grid {file}/grid.png",
    "report diversity --real-per-class -1",
    "report lineage zzzz",
    "report lineage ''",
    "report accuracy --plot {file}/x.png",
    # ---------------------------------------------------------------- store housekeeping
    "ls nope",
    "ls --store {file}",
    "ls --store {kind_folder}",
    "show zzzz",
    "show ''",
    "show abc",
    "show 0123456789abcdef",
    "show",
    "rm zzzz",
    "rm 0123456789abcdef",
    "rm {teacher}",
    "rm {images} {labels}",
    "rm",
    "gc --store {file}",
    "gc --store {kind_folder}",
    "export zzzz {file}.out",
    "export 0123456789abcdef out",
    "export {images}",
    "export {images} {file}",
    "export {images} ''",
]


PARAMS = CASES


def _tree(root: Path) -> dict[str, str]:
    """Every file under the store with a hash of its bytes (and every folder)."""
    return {p.relative_to(root).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest()
                                             if p.is_file() else "dir")
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def fuzz_store(tmp_path_factory: pytest.TempPathFactory,
               teacher_store: Store) -> tuple[Store, dict[str, str]]:
    import shutil

    root = tmp_path_factory.mktemp("fuzz") / "store"
    shutil.copytree(teacher_store.root / "objects", root / "objects")
    store = Store(root)
    images = make_real_images(store, ipc=2)
    labels = relabel(store, RelabelConfig(epochs=2, batch_size=10), images,
                     store.newest("teacher"))
    pruned = prune(store, PruneConfig(ratio=2.0), labels)
    other = root.parent / "a-file.txt"
    other.write_text("not a store")
    fill = {"teacher": store.newest("teacher").id, "images": images.id, "labels": labels.id,
            "pruned": pruned.id, "file": str(other), "kind_folder": str(root / "objects" /
                                                                       "images"),
            "store": str(root)}
    return store, fill


def _argv(case: str, fill: dict[str, str]) -> list[str]:
    argv = shlex.split(case.format(**fill))
    if not any(a == "--store" for a in argv):
        argv += ["--store", fill["store"]]
    return argv


def test_there_are_at_least_100_cases() -> None:
    assert len(CASES) >= 100 and len(set(CASES)) == len(CASES)


@pytest.mark.parametrize("case", PARAMS)
def test_malformed_invocation_is_one_clean_error(
        case: str, fuzz_store: tuple[Store, dict[str, str]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    store, fill = fuzz_store
    before = _tree(store.root)

    def would_build(*args, **kwargs):  # an accepted invocation fails fast instead of running
        raise AssertionError("accepted: it would build an artifact")

    monkeypatch.setattr(Store, "_produce", would_build)
    result = CliRunner().invoke(app, _argv(case, fill), env={"LPLD_DEBUG": ""})
    after = _tree(store.root)
    traceback = result.exception is not None and not isinstance(result.exception, SystemExit)
    assert not traceback, f"{case}: {result.exception!r}"
    assert result.exit_code != 0, f"{case}: accepted silently\n{result.output}"
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and errors[0].startswith("Error: "), f"{case}: {result.stderr}"
    assert after == before, f"{case}: the store changed"


@pytest.mark.parametrize("case", ["recover --from ''", "prune --seed -1",
                                  "verify --store {file}"])
def test_a_subprocess_shows_one_line_and_no_traceback(
        case: str, fuzz_store: tuple[Store, dict[str, str]]) -> None:
    _, fill = fuzz_store
    proc = run_lpld(*_argv(case, fill))
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert [ln for ln in proc.stderr.splitlines() if ln.startswith("Error")] != []
