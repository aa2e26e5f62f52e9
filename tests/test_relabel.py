"""relabel: the stored rows, the exact-replay guarantee, resume, flat memory, bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lpld_cli.cli import app
from lpld_cli.data import augment
from lpld_cli.data.label_pool import row_from_store
from lpld_cli.errors import ArtifactCorruptedError, ConfigError
from lpld_cli.models.teacher import load_teacher, teacher_logits
from lpld_cli.relabel import DONE_DIR, RelabelConfig, relabel
from lpld_cli.storage.images import load_image_set
from lpld_cli.storage.labels import GROUP, SCHEMA, LabelStore, decode_logits
from lpld_cli.storage.store import Artifact, Store
from tests.conftest import make_real_images, needs_fmnist, run_lpld

pytestmark = needs_fmnist


def read_all(artifact: Artifact):
    labels = LabelStore.open(artifact.path, artifact.id)
    return labels, labels.read(0, labels.rows)


# ------------------------------------------------------------------ the stored rows
@pytest.mark.parametrize("size,scale", [(28, (0.08, 1.0)), (224, (0.08, 1.0)),
                                        (5, (0.9, 1.0))])
def test_crop_boxes_are_torchvision_random_resized_crop(size: int, scale) -> None:
    """The stored crop stream is torchvision's RandomResizedCrop, draw for draw."""
    from torchvision.transforms import RandomResizedCrop

    image = torch.zeros(1, size, size)
    for seed in range(20):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            expected = [RandomResizedCrop.get_params(image, scale=list(scale),
                                                     ratio=[3 / 4, 4 / 3]) for _ in range(50)]
        generator = torch.Generator().manual_seed(seed)
        boxes = augment.sample_crop_boxes(50, size, size, generator, scale=scale)
        assert boxes.shape == (50, 4) and boxes.dtype == torch.float32
        pixels = [[round(v * size) for v in box] for box in boxes.tolist()]
        assert pixels == [list(b) for b in expected]
        generator = torch.Generator().manual_seed(seed)
        ints = augment.sample_crop_pixels(50, size, size, generator, scale=scale)
        assert ints.dtype == torch.int32 and ints.tolist() == [list(b) for b in expected]
    assert augment.sample_crop_boxes(0, size, size, generator).shape == (0, 4)


def test_rows_sampler_and_attributes(store_with_teacher: Store) -> None:
    images = make_real_images(store_with_teacher, ipc=3)  # 30 images, B=8: 3 full + 1 of 6
    config = RelabelConfig(epochs=5, batch_size=8, rows_per_chunk=3)
    art = relabel(store_with_teacher, config, images)
    labels, rows = read_all(art)
    assert art.kind == "labels" and art.parents == [images.id, images.parents[0]]
    assert art.selectors == {"dataset": "fashion-mnist", "ipc": 3, "method": "real",
                             "ratio": 1.0, "granularity": None, "metric": None,
                             "epochs": 5, "batch_size": 8, "mix": "cutmix",
                             "logits_dtype": "float16", "relabel_seed": 0}
    assert art.metrics["rows"] == 20 and art.metrics["batches_per_epoch"] == 4
    assert art.metrics["epochs"] == 5
    assert art.metrics["logical_bytes"] == sum(a.nbytes for a in labels.arrays.values())
    attrs = labels.attrs
    for key, want in {"num_classes": 10, "batch_size": 8, "batches_per_epoch": 4, "epochs": 5,
                      "image_size": 28, "mix": "cutmix", "logits_dtype": "float16",
                      "images_id": images.id, "teacher_id": images.parents[0],
                      "num_images": 30, "seed": 0, "rows": 20, "rows_per_chunk": 3,
                      "replay": 2, "rows_per_forward": 4, "precision": "fp32"}.items():
        assert attrs[key] == want, key
    assert labels.arrays["logits"].chunks == (3, 8, 10)
    # lossless compact augmentation: pixel boxes in uint8 (28 px), indices narrowest
    assert (rows.crop.dtype, rows.image_index.dtype, rows.mix_index.dtype,
            rows.mix_box.dtype) == (np.uint8, np.int8, np.uint8, np.uint8)
    np.testing.assert_array_equal(rows.batch_id, np.arange(20))
    for e in range(5):
        epoch = rows.image_index[4 * e:4 * e + 4].reshape(-1)
        assert sorted(epoch[epoch >= 0].tolist()) == list(range(30))  # each image once
        last = rows.image_index[4 * e + 3]
        np.testing.assert_array_equal(last[6:], [-1, -1])  # empty slots at the end
        assert (last[:6] >= 0).all()
        assert (rows.logits[4 * e + 3, 6:] == 0).all() and (rows.crop[4 * e + 3, 6:] == 0).all()
    assert not np.array_equal(rows.image_index[0], rows.image_index[4])  # fresh permutation
    full = rows.crop[rows.image_index >= 0].astype(int)
    assert (full[:, 2:] > 0).all() and (full[:, :2] + full[:, 2:] <= 28).all()
    assert 0.2 < rows.flip[rows.image_index >= 0].mean() < 0.8
    assert (rows.mix_lambda > 0).all() and (rows.mix_lambda <= 1).all()
    assert len(np.unique(rows.mix_lambda)) > 10  # λ ~ Beta(1, 1), one per batch
    assert DONE_DIR not in {p.name for p in art.path.rglob("*")}


def test_same_config_is_cached_and_seed_changes_rows(store_with_teacher: Store) -> None:
    images = make_real_images(store_with_teacher, ipc=2)
    a = relabel(store_with_teacher, RelabelConfig(epochs=2, batch_size=8), images)
    b = relabel(store_with_teacher, RelabelConfig(epochs=2, batch_size=8), images)
    c = relabel(store_with_teacher, RelabelConfig(epochs=2, batch_size=8, seed=1), images)
    assert b.cached and b.id == a.id and c.id != a.id
    assert not np.array_equal(read_all(a)[1].crop, read_all(c)[1].crop)


# ---------------------------------------------------------------- replay guarantee
@pytest.mark.parametrize(("mix", "dtype"), [("cutmix", "float16"), ("cutmix", "bfloat16"),
                                            ("none", "float32")])
def test_replay_of_stored_rows_gives_the_stored_logits(store_with_teacher: Store, mix: str,
                                                       dtype: str) -> None:
    images = make_real_images(store_with_teacher, ipc=3)
    config = RelabelConfig(epochs=4, batch_size=8, mix=mix, logits_dtype=dtype,
                           rows_per_forward=3)
    art = relabel(store_with_teacher, config, images)
    labels, rows = read_all(art)
    teacher = load_teacher(store_with_teacher.get(images.parents[0]))
    pixels, _, _ = load_image_set(images.path)
    bank = augment.ImageBank(pixels, teacher.data["mean"], teacher.data["std"])
    picks = np.random.default_rng(0).choice(len(rows), size=6, replace=False).tolist()
    picks.append(3)  # an incomplete last batch
    for i in picks:
        row = row_from_store(rows, i)
        x = augment.replay(bank, row)
        assert x.shape == (row.valid, 1, 28, 28)
        if mix == "cutmix":
            assert row.mix_lambda < 1 and sorted(row.mix_index[:row.valid].tolist()) == list(
                range(row.valid))
        # recomputed as relabel did: block i mod K of a forward of K rows
        replayed = teacher_logits(teacher.model, bank, row, torch.device("cpu"),
                                  rows_per_forward=3, block=i % 3)
        stored = decode_logits(rows.logits[i], dtype)
        # Cast to the stored dtype, then compare exactly.
        np.testing.assert_array_equal(decode_logits(
            _encode(replayed, dtype), dtype).numpy(), stored.numpy())
        assert stored[:row.valid].abs().sum() > 0
        assert (stored[row.valid:] == 0).all()


def _encode(logits: torch.Tensor, dtype: str) -> np.ndarray:
    from lpld_cli.storage.labels import encode_logits

    return encode_logits(logits, dtype)


def test_replay_is_not_vacuous(store_with_teacher: Store) -> None:
    """A different row's augmentation gives different logits: the equality above means
    something."""
    images = make_real_images(store_with_teacher, ipc=3)
    art = relabel(store_with_teacher, RelabelConfig(epochs=2, batch_size=8,
                                                    rows_per_forward=1), images)
    _, rows = read_all(art)
    teacher = load_teacher(store_with_teacher.get(images.parents[0]))
    pixels, _, _ = load_image_set(images.path)
    bank = augment.ImageBank(pixels, teacher.data["mean"], teacher.data["std"])
    row = row_from_store(rows, 0)
    same = teacher_logits(teacher.model, bank, row, torch.device("cpu"))
    assert np.array_equal(_encode(same, "float16"), rows.logits[0])
    row.crop = torch.from_numpy(rows.crop[1].astype(np.int32))
    other = teacher_logits(teacher.model, bank, row, torch.device("cpu"))
    assert not np.array_equal(_encode(other, "float16"), rows.logits[0])


# ------------------------------------------------------------------------ resume
class _Interrupt:
    """A reporter that raises KeyboardInterrupt after `after` relabelled rows."""

    def __init__(self, after: int) -> None:
        self.after = after
        self.seen = 0
        self.logs: list[str] = []

    def task(self, description: str, total: float | None) -> _Interrupt:
        return self

    def advance(self, n: float = 1, **fields) -> None:
        self.seen += n
        if self.seen >= self.after:
            raise KeyboardInterrupt

    def close(self) -> None:
        pass

    def log(self, message: str) -> None:
        self.logs.append(message)


def test_interrupted_relabel_resumes_to_the_same_store(store_with_teacher: Store,
                                                       tmp_path: Path) -> None:
    images = make_real_images(store_with_teacher, ipc=3)
    twin = Store(tmp_path / "twin")
    shutil.copytree(store_with_teacher.objects, twin.objects)
    # shards of 5 rows cross epochs (4 rows each) and forwards of K = 4 rows cross shards
    config = RelabelConfig(epochs=6, batch_size=8, rows_per_chunk=5, rows_per_shard=5)
    with pytest.raises(KeyboardInterrupt):
        relabel(store_with_teacher, config, images, reporter=_Interrupt(after=13))
    assert not store_with_teacher.list("labels")  # nothing promoted
    staging = store_with_teacher.staging / store_with_teacher.artifact_id(
        "labels", _config_dict(config), [images.id, images.parents[0]])
    done = sorted(p.name for p in (staging / DONE_DIR).iterdir())
    assert done == ["0.done", "1.done"]  # two complete shards of 5
    resumer = _Interrupt(after=10**9)
    resumed = relabel(store_with_teacher, config, images, reporter=resumer)
    assert resumer.logs == ["resuming relabel: 2 of 5 shards already written"]
    assert resumer.seen == 14  # 10 already done, 14 new
    whole = relabel(twin, config, twin.get(images.id))
    assert resumed.id == whole.id
    _, a = read_all(resumed)
    _, b = read_all(whole)
    for name in SCHEMA:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert not (resumed.path / DONE_DIR).exists()
    store_with_teacher.verify(resumed)


def _config_dict(config: RelabelConfig) -> dict:
    """What names the label store: the config resolved with the images' preset."""
    from lpld_cli.data.presets import get_preset

    cpu = torch.device("cpu")  # the identity records the device's precision (fp32)
    return config.resolved(get_preset("fashion-mnist")).with_precision(cpu).identity()


@pytest.mark.slow
def test_sigkilled_relabel_resumes(store_with_teacher: Store, tmp_path: Path) -> None:
    """The real command killed with SIGKILL mid-run, then rerun: equal to an uninterrupted run."""
    make_real_images(store_with_teacher, ipc=3)
    args = ["relabel", "--ipc", "3", "--epochs", "150", "--batch-size", "8",
            "--rows-per-chunk", "16", "--rows-per-shard", "16"]
    twin = tmp_path / "twin"
    shutil.copytree(store_with_teacher.objects, twin / "objects")
    cmd = [sys.executable, "-m", "lpld_cli", *args, "--store", str(store_with_teacher.root)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staging = store_with_teacher.staging
    import time

    deadline = time.time() + 120
    while time.time() < deadline:
        files = list(staging.glob(f"*/{DONE_DIR}/*.done")) if staging.exists() else []
        if len(files) >= 4:
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert not store_with_teacher.list("labels")
    run_lpld(*args, store=store_with_teacher.root, check=True)
    run_lpld(*args, store=twin, check=True)
    (a,) = store_with_teacher.list("labels")
    (b,) = Store(twin).list("labels")
    assert a.id == b.id
    _, ra = read_all(a)
    _, rb = read_all(b)
    for name in SCHEMA:
        np.testing.assert_array_equal(getattr(ra, name), getattr(rb, name), err_msg=name)


# ------------------------------------------------------------------- flat memory
_RSS_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    from lpld_cli.relabel import RelabelConfig, relabel
    from lpld_cli.storage.store import Store
    store = Store(sys.argv[1])
    images = store.newest("images")
    art = relabel(store, RelabelConfig(epochs=int(sys.argv[2]), batch_size=8,
                                       rows_per_chunk=32), images)
    print(json.dumps({"rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      "rows": art.metrics["rows"]}))
""")


def test_peak_memory_does_not_grow_with_epochs(store_with_teacher: Store) -> None:
    make_real_images(store_with_teacher, ipc=3)
    results = {}
    for epochs in (30, 300):
        proc = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(store_with_teacher.root),
                               str(epochs)], capture_output=True, text=True, timeout=600,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, proc.stderr
        results[epochs] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert results[30]["rows"] == 120 and results[300]["rows"] == 1200
    assert results[300]["rss_kb"] <= 1.2 * results[30]["rss_kb"], results


# ------------------------------------------------------------------------ errors
@pytest.mark.parametrize(("field", "value", "text"), [
    ("epochs", 0, "--epochs must be at least 1"),
    ("batch_size", 0, "--batch-size must be at least 1"),
    ("mix", "mixup", "unknown --mix 'mixup'"),
    ("logits_dtype", "int8", "unknown --logits-dtype 'int8'"),
    ("codec", "bz2", "unknown --codec 'bz2'"),
    ("rows_per_chunk", 0, "--rows-per-chunk must be at least 1"),
])
def test_config_errors(field: str, value, text: str) -> None:
    with pytest.raises(ConfigError, match=text):
        RelabelConfig(**{field: value}).validate()


@pytest.mark.parametrize(("args", "text"), [
    (["--epochs", "0"], "Error: --epochs must be at least 1 (got 0)"),
    (["--batch-size", "0"], "Error: --batch-size must be at least 1 (got 0)"),
    (["--mix", "mixup"], "Error: unknown --mix 'mixup'"),
    (["--logits-dtype", "int8"], "Error: unknown --logits-dtype 'int8'"),
    (["--codec", "bz2"], "Error: unknown --codec 'bz2'"),
    (["--ipc", "7"], "`lpld recover`"),
    (["--keep", "0.5x"], "Error: --keep must be at least 1x (got '0.5x')"),
    (["--keep", "forty"], "Error: --keep 'forty' is not a number like 40x"),
    (["--rows-per-forward", "0"], "Error: --rows-per-forward must be at least 1 (got 0)"),
    (["--precision", "fp8"], "Error: unknown --precision 'fp8'"),
    (["--rows-per-shard", "0"], "Error: --rows-per-shard must be at least 1 (got 0)"),
    (["--rows-per-chunk", "4", "--rows-per-shard", "6"],
     "Error: --rows-per-shard 6 is not a multiple of --rows-per-chunk 4"),
])
def test_cli_errors(tmp_path: Path, args: list[str], text: str) -> None:
    result = CliRunner().invoke(app, ["relabel", *args, "--store", str(tmp_path / "empty")])
    assert result.exit_code == 2, result.output
    assert text in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_corrupted_or_missing_array_is_reported(store_with_teacher: Store,
                                                tmp_path: Path) -> None:
    images = make_real_images(store_with_teacher, ipc=2)
    art = relabel(store_with_teacher, RelabelConfig(epochs=2, batch_size=8), images)
    broken = tmp_path / "broken"
    shutil.copytree(art.path, broken)
    for p in broken.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    chunk = next((broken / GROUP / "logits").rglob("c/*/*/*"))
    chunk.write_bytes(b"not a blosc frame" * 3)
    with pytest.raises(ArtifactCorruptedError, match="logits"):
        LabelStore.open(broken, art.id).read(0, 4)
    shutil.rmtree(broken / GROUP / "crop")
    with pytest.raises(ArtifactCorruptedError, match="crop"):
        LabelStore.open(broken, art.id)
    # In the store: the manifest check names the file, and the CLI exits 1.
    target = art.path / GROUP / "flip" / "zarr.json"
    target.chmod(0o644)
    target.unlink()
    result = CliRunner().invoke(app, ["report", "storage", "--from", art.id, "--store",
                                      str(store_with_teacher.root)])
    assert result.exit_code == 1, result.output
    assert f"Error: artifact {art.id} is corrupted: {GROUP}/flip/zarr.json" in result.stderr


@pytest.mark.slow
def test_cli_relabel_end_to_end(store_with_teacher: Store) -> None:
    images = make_real_images(store_with_teacher, ipc=3)
    proc = run_lpld("relabel", "--ipc", "3", "--epochs", "3", "--batch-size", "8", "--json",
                    store=store_with_teacher.root, check=True)
    result = json.loads(proc.stdout)
    assert result["command"] == "relabel" and result["artifact"]["kind"] == "labels"
    assert result["parents"] == [images.id, images.parents[0]]
    assert result["metrics"]["rows"] == 12
    assert result["metrics"]["disk_bytes"] > 0
    assert f"using images {images.short}" in proc.stderr
    again = run_lpld("relabel", "--from", images.short, "--epochs", "3", "--batch-size", "8",
                     "--json", store=store_with_teacher.root, check=True)
    assert json.loads(again.stdout)["artifact"]["cached"] is True


def test_a_resumed_store_drops_the_temporary_files_of_a_killed_write(tmp_path: Path) -> None:
    """zarr writes a chunk to `<chunk>.<uuid>.partial` and renames it; a kill -9 between the
    two leaves the temporary file, which a resumed relabel must not promote as payload."""
    from lpld_cli.data import augment
    from lpld_cli.relabel import open_or_resume
    from lpld_cli.storage.labels import Layout

    layout = Layout(8, 2, 3, "float16", "zstd", augment.CONTRACT, 10, 28, 2, 4)
    _store, todo = open_or_resume(tmp_path, layout, {"epochs": 4})
    assert todo == [0, 1]
    stray = tmp_path / "labels.zarr" / "logits" / "c" / "0" / "0.0a1b2c.partial"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"")
    _store, todo = open_or_resume(tmp_path, layout, {"epochs": 4})  # resumed, not recreated
    assert todo == [0, 1] and not stray.exists()
    assert not list(tmp_path.rglob("*.partial"))
