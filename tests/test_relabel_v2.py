"""Replay contract v2: grouped forwards, slot subsets, `--keep`, v1 stores, uint8 memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.synthetic import synthetic_images, synthetic_teacher
from lpld_cli.data import augment
from lpld_cli.data.label_pool import LabelPool
from lpld_cli.device import check_precision
from lpld_cli.errors import LpldError
from lpld_cli.models.teacher import load_teacher
from lpld_cli.prune import PruneConfig, prune
from lpld_cli.relabel import RelabelConfig, pack_groups, relabel
from lpld_cli.storage.images import load_image_set
from lpld_cli.storage.labels import AUGMENT_ARRAYS, GROUP, LabelStore
from lpld_cli.storage.store import Store
from lpld_cli.train import TrainConfig, train
from tests.conftest import make_real_images, needs_fmnist


def _bank(n: int = 37, size: int = 32, seed: int = 0) -> augment.ImageBank:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    return augment.ImageBank(pixels, [0.5, 0.4, 0.3], [0.2, 0.25, 0.3])


# ------------------------------------------------------------- grouped replay
@pytest.mark.parametrize("k", [1, 3, 8])
def test_grouped_replay_gives_the_same_pixels_as_row_by_row(k: int) -> None:
    bank = _bank()
    rows = [r for e in range(3) for r in augment.epoch_rows(37, 8, 32, "cutmix", 0, e)]
    alone = [augment.replay_rows(bank, [r]) for r in rows]
    for start in range(0, len(rows), k):
        group: list[augment.Row | None] = list(rows[start:start + k])
        group += [None] * (k - len(group))
        out = augment.replay_rows(bank, group)
        assert out.shape == (k * 8, 3, 32, 32)
        for i, row in enumerate(group):
            if row is not None:
                assert torch.equal(out[i * 8:(i + 1) * 8], alone[start + i])


def test_any_subset_of_slots_gives_the_same_pixels() -> None:
    bank = _bank()
    rows = list(augment.epoch_rows(37, 8, 32, "cutmix", 1, 0))
    slots = augment.Slots.of(rows, 8)
    whole = augment.replay_slots(bank, slots)
    for subset in ([0], [39, 2, 17], list(range(5, 37, 3)), [36, 35]):
        got = augment.replay_slots(bank, slots, subset=torch.tensor(subset))
        assert torch.equal(got, whole[subset]), subset


def test_v2_pixels_are_a_crop_resize_flip_and_a_pasted_box() -> None:
    """Against torchvision (crop, bilinear resize, flip) and a hand-placed CutMix patch."""
    from torchvision.transforms.v2 import functional as TF

    bank = _bank(n=6, size=40)
    row = augment.Row(image_index=torch.tensor([0, 3, 5, 1], dtype=torch.int32),
                      crop=torch.tensor([[0, 0, 40, 40], [4, 8, 20, 30], [10, 2, 25, 25],
                                         [1, 1, 38, 12]], dtype=torch.int32),
                      flip=torch.tensor([False, True, False, True]),
                      mix_index=torch.tensor([1, 0, 3, 2], dtype=torch.int32),
                      mix_lambda=0.75, mix_box=torch.tensor([5, 10, 25, 30], dtype=torch.int32))
    out = augment.replay(bank, row, size=32)
    expected = []
    for i in range(4):
        img = bank.gather(row.image_index[i:i + 1])
        top, left, h, w = row.crop[i].tolist()
        x = TF.resize(TF.crop(img, top, left, h, w), [32, 32], antialias=False)
        expected.append(TF.horizontal_flip(x) if row.flip[i] else x)
    plain = torch.cat(expected)
    mixed = plain.clone()
    mixed[:, :, 5:25, 10:30] = plain[row.mix_index.long()][:, :, 5:25, 10:30]
    torch.testing.assert_close(out, mixed, atol=2e-5, rtol=0)
    assert not torch.allclose(out, plain, atol=1e-2)  # the box was pasted


def test_pack_groups_keeps_each_row_at_its_block() -> None:
    assert pack_groups([8, 9, 10, 11, 12], 4) == [[(0, 0), (1, 1), (2, 2), (3, 3)], [(0, 4)]]
    groups = pack_groups([1, 5, 6, 12, 15], 4)
    placed = sorted(i for g in groups for _b, i in g)
    assert placed == [0, 1, 2, 3, 4]
    for g in groups:
        for block, i in g:
            assert [1, 5, 6, 12, 15][i] % 4 == block
        assert len({b for b, _ in g}) == len(g)
    assert len(groups) == 2  # blocks 1, 1, 2, 0, 3: two forwards


# ----------------------------------------------------------- relabel with K
@needs_fmnist
def test_augmentation_does_not_depend_on_rows_per_forward(store_with_teacher: Store) -> None:
    images = make_real_images(store_with_teacher, ipc=2)  # 20 images, B=8: 2 full + 1 of 4
    stores = {}
    for k in (1, 3, 8):
        art = relabel(store_with_teacher, RelabelConfig(epochs=4, batch_size=8,
                                                        rows_per_forward=k), images)
        assert art.config["rows_per_forward"] == k
        labels = LabelStore.open(art.path)
        assert labels.attrs["rows_per_forward"] == k and labels.attrs["replay"] == 2
        stores[k] = labels.read(0, labels.rows)
    ids = {relabel(store_with_teacher, RelabelConfig(epochs=4, batch_size=8,
                                                     rows_per_forward=k), images).id
           for k in (1, 3, 8)}
    assert len(ids) == 3  # K is part of the identity
    for k in (3, 8):
        for name in AUGMENT_ARRAYS:
            assert np.array_equal(getattr(stores[k], name), getattr(stores[1], name)), name
        # the logits only differ in the forward's last bits
        np.testing.assert_allclose(stores[k].logits.astype(np.float32),
                                   stores[1].logits.astype(np.float32), rtol=2e-3, atol=2e-3)


@needs_fmnist
def test_drawing_processes_write_the_same_store_as_the_thread(store_with_teacher: Store
                                                              ) -> None:
    """2 drawing processes (a DataLoader, forwards in order) and the default thread write
    byte-identical files, at K = 3 (groups with empty blocks: 15 rows) and with --keep."""
    images = make_real_images(store_with_teacher, ipc=2)
    for config in (RelabelConfig(epochs=5, batch_size=8, rows_per_forward=3, seed=2),
                   RelabelConfig(epochs=40, batch_size=8, rows_per_forward=3, seed=2,
                                 keep=10.0)):
        ids, files = set(), []
        for workers in (0, 2):  # the same id: --force rebuilds it; read each build's bytes
            art = relabel(store_with_teacher, config, images, force=True, draw_workers=workers)
            assert art.metrics["rows_labelled"] == (15 if config.keep == 1 else 12)
            root = art.path / GROUP
            ids.add(art.id)
            files.append({p.relative_to(root): p.read_bytes()
                          for p in sorted(root.rglob("*")) if p.is_file()})
        assert len(ids) == 1  # the workers are not part of the identity
        assert len(files[0]) > 8 and files[0] == files[1]
    with pytest.raises(LpldError, match="--draw-workers must be at least 0"):
        relabel(store_with_teacher, RelabelConfig(epochs=5, batch_size=8), images,
                draw_workers=-1)


# ------------------------------------------------------------------ --keep
@needs_fmnist
def test_keep_is_byte_identical_to_relabel_then_random_prune(store_with_teacher: Store) -> None:
    images = make_real_images(store_with_teacher, ipc=2)  # 3 rows per epoch, 1 incomplete
    base = RelabelConfig(epochs=40, batch_size=8, rows_per_forward=3, seed=3)
    full = relabel(store_with_teacher, base, images)
    pruned = prune(store_with_teacher, PruneConfig(ratio=40.0, seed=3), full)
    kept = relabel(store_with_teacher, RelabelConfig(**{**base.__dict__, "keep": 40.0}), images)
    assert kept.id != pruned.id and pruned.metrics["rows"] == 3  # ⌊120 / 40⌋
    assert kept.metrics["rows_labelled"] == 3 and full.metrics["rows_labelled"] == 120
    a, b = pruned.path / GROUP, kept.path / GROUP
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) > 8
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert LabelStore.open(kept.path).attrs["parent_id"] == full.id
    assert kept.selectors["ratio"] == 40.0 and kept.selectors["metric"] == "random"
    # prune keeps working on such a store
    again = prune(store_with_teacher, PruneConfig(ratio=2.0, seed=1), kept)
    twice = prune(store_with_teacher, PruneConfig(ratio=2.0, seed=1), pruned)
    x, y = LabelStore.open(again.path), LabelStore.open(twice.path)
    assert x.rows == y.rows == 1
    for name in (*AUGMENT_ARRAYS, "logits"):
        assert np.array_equal(x.read(0, 1).arrays[name], y.read(0, 1).arrays[name]), name
    assert x.attrs["total_ratio"] == 80.0


@needs_fmnist
@pytest.mark.parametrize("encoding", [{"topk": 3, "topk_fill": "min"}, {"logits_dtype": "q8"}])
def test_keep_with_an_encoding_equals_encoded_relabel_then_prune(
        store_with_teacher: Store, encoding: dict) -> None:
    """`--keep 40x --topk 3` (or `--logits-dtype q8`) labels only the kept rows, encoded as
    they are computed: the files are those of the encoded full relabel pruned 40x."""
    images = make_real_images(store_with_teacher, ipc=2)
    base = RelabelConfig(epochs=40, batch_size=8, rows_per_forward=3, seed=3, **encoding)
    full = relabel(store_with_teacher, base, images)
    pruned = prune(store_with_teacher, PruneConfig(ratio=40.0, seed=3), full)
    kept = relabel(store_with_teacher, RelabelConfig(**{**base.__dict__, "keep": 40.0}), images)
    assert kept.metrics["rows_labelled"] == 3 and pruned.metrics["rows"] == 3
    a, b = pruned.path / GROUP, kept.path / GROUP
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    assert any("topk" in str(f) for f in files_a) == ("topk" in encoding)
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


# --------------------------------------------------------------- v1 stores
@needs_fmnist
def test_a_v1_store_still_trains_on_its_own_pixels(store_with_teacher: Store,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A round-1 store (float32 crop fractions, int32 indices, no `replay` attribute,
    affine_grid replay of one row at a time) is read and replayed as round 1 did."""
    import lpld_cli.train as train_module
    from lpld_cli.storage.labels import LabelRows, encode_logits

    store = store_with_teacher
    images = make_real_images(store, ipc=2)
    teacher = load_teacher(store.get(images.parents[0]))
    pixels, _, _ = load_image_set(images.path)
    # round 1's replay, written out: normalise the whole set, then crop/flip by
    # affine_grid on fractions, then paste the CutMix box
    stack = augment.normalise(pixels, teacher.data["mean"], teacher.data["std"])

    def v1_pixels(row: augment.Row) -> torch.Tensor:
        valid = row.valid
        x = augment.resized_crop(stack[row.image_index[:valid].long()],
                                 augment.crop_fractions(row.crop[:valid], 28),
                                 row.flip[:valid], 28)
        return augment.cutmix(x, row.mix_index[:valid], row.mix_box)

    rows = [r for e in range(2) for r in augment.epoch_rows(20, 8, 28, "cutmix", 0, e,
                                                            contract=1)]

    def build(staging) -> dict:
        labels = LabelStore.create(staging.path, rows=len(rows), batch_size=8, num_classes=10,
                                   attributes={"batches_per_epoch": 3, "epochs": 2,
                                               "image_size": 28, "mix": "cutmix",
                                               "images_id": images.id,
                                               "teacher_id": teacher.artifact_id,
                                               "num_images": 20, "seed": 0})
        logits = torch.zeros(len(rows), 8, 10)
        with torch.no_grad():
            for i, row in enumerate(rows):
                logits[i, :row.valid] = teacher.model(v1_pixels(row))
        labels.write(0, LabelRows(
            batch_id=np.arange(len(rows), dtype=np.int32),
            image_index=np.stack([r.image_index.numpy() for r in rows]),
            crop=np.stack([augment.crop_fractions(r.crop, 28).numpy() for r in rows]),
            flip=np.stack([r.flip.numpy() for r in rows]),
            mix_index=np.stack([r.mix_index.numpy() for r in rows]),
            mix_lambda=np.array([r.mix_lambda for r in rows], dtype=np.float32),
            mix_box=np.stack([r.mix_box.numpy() for r in rows]),
            logits=encode_logits(logits, "float16")))
        return {"rows": len(rows)}

    v1 = store.produce("labels", {"round-1 store": True}, [images.id, teacher.artifact_id],
                       build, selectors={"dataset": "fashion-mnist", "ipc": 2, "ratio": 1.0})
    pool = LabelPool.open(v1)
    assert pool.replay == 1 and pool.store.arrays["crop"].dtype == np.float32
    row, logits = pool.get(4)
    assert row.crop.dtype == torch.int32 and torch.equal(row.crop, rows[4].crop)
    seen = []
    real = train_module.student_batch

    def recording(x_all, row, size=None, contract=2):
        x = real(x_all, row, size, contract)
        seen.append((row, x))
        return x

    monkeypatch.setattr(train_module, "student_batch", recording)
    student = train(store, TrainConfig(width=8, depth=2, epochs=2, batch_size=8), images, v1,
                    None, eval_every=0)
    assert student.metrics["label_rows"] == 6 and 0 <= student.metrics["top1"] <= 1
    assert len(seen) == 6
    for row, x in seen:
        assert torch.equal(x, v1_pixels(row))


# ----------------------------------------------------------- precision, memory
def test_precision_is_in_the_identity_and_checked() -> None:
    cpu = torch.device("cpu")
    assert RelabelConfig().with_precision(cpu).precision == "fp32"
    assert RelabelConfig(precision="bf16").with_precision(cpu).precision == "bf16"
    with pytest.raises(LpldError, match="no autocast on meta"):
        check_precision(torch.device("meta"), "bf16")
    with pytest.raises(LpldError, match="unknown --precision 'fp8'"):
        RelabelConfig(precision="fp8").validate()
    with pytest.raises(LpldError, match="--rows-per-forward must be at least 1"):
        RelabelConfig(rows_per_forward=0).validate()
    with pytest.raises(LpldError, match="--keep must be at least 1x"):
        RelabelConfig(keep=0.5).validate()


def test_bf16_relabel_differs_from_fp32_under_another_id(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    teacher = synthetic_teacher(store, "convnet", classes=10, image_size=32, width=8)
    images = synthetic_images(store, teacher, per_class=2, classes=10, image_size=32)
    a = relabel(store, RelabelConfig(epochs=1, batch_size=5, mix="cutmix"), images)
    b = relabel(store, RelabelConfig(epochs=1, batch_size=5, mix="cutmix",
                                     precision="bf16"), images)
    assert a.id != b.id and a.config["precision"] == "fp32"
    la, lb = (LabelStore.open(x.path) for x in (a, b))
    assert lb.attrs["precision"] == "bf16"
    assert not np.array_equal(la.read(0, 4).logits, lb.read(0, 4).logits)


_RSS = textwrap.dedent("""
    import json, resource, sys
    from lpld_cli.relabel import RelabelConfig, relabel
    from lpld_cli.storage.store import Store
    store = Store(sys.argv[1])
    small, big = store.get(sys.argv[2]), store.get(sys.argv[3])
    config = RelabelConfig(epochs=1, batch_size=4, mix="cutmix", rows_per_forward=1)
    relabel(store, config, small)  # libraries, teacher, allocator warm
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    relabel(store, config, big)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"before_kb": before, "after_kb": after}))
""")


def test_relabel_holds_the_224px_set_as_uint8_only(tmp_path: Path) -> None:
    """Peak RSS grows by the uint8 set plus a fixed bound: a float32 copy (4x) fails it."""
    store = Store(tmp_path / "store")
    teacher = synthetic_teacher(store, "convnet", classes=10, image_size=224, width=4)
    small = synthetic_images(store, teacher, per_class=1, classes=10, seed=1)
    big = synthetic_images(store, teacher, per_class=40, classes=10, seed=2)
    set_bytes = 400 * 3 * 224 * 224  # 60 MB of uint8; as float32: 240 MB
    proc = subprocess.run([sys.executable, "-c", _RSS, str(store.root), small.id, big.id],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rss = json.loads(proc.stdout.strip().splitlines()[-1])
    grown = (rss["after_kb"] - rss["before_kb"]) * 1024
    assert grown < set_bytes + (48 << 20), (grown / 2**20, rss)
    assert grown < 2 * set_bytes  # far from any float32 copy (4x)
