"""The label store is plain Zarr v3 (DESIGN §5): any reader opens it without lpld.

lpld only *makes* the store here (fixture); every check reads it with zarr-python,
tensorstore or the JSON metadata, against the schema table written out below.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts
import zarr

from tests.conftest import needs_fmnist

pytestmark = needs_fmnist

R, B, C, CHUNK = 15, 8, 10, 4  # 5 epochs x 3 batches of 8 over 20 images; 4 rows per chunk
SHARD = 8  # two chunks per shard file: 2 shards along rows
# DESIGN §5 (replay v2, lossless narrow types), written out: name -> (dtype, shape)
SCHEMA = {
    "batch_id": ("int32", (R,)),
    "image_index": ("int8", (R, B)),  # 20 images and −1
    "crop": ("uint8", (R, B, 4)),  # integer pixel boxes of the 28-px image
    "flip": ("bool", (R, B)),
    "mix_index": ("uint8", (R, B)),  # partner slot < 8
    "mix_lambda": ("float32", (R,)),
    "mix_box": ("uint8", (R, 4)),
    "logits": ("float16", (R, B, C)),
}


@pytest.fixture(scope="module")
def label_store(teacher_store, tmp_path_factory) -> Path:
    """Path of a labels.zarr made by lpld relabel (the only lpld use in this file)."""
    from lpld_cli.relabel import RelabelConfig, relabel
    from lpld_cli.storage.store import Store
    from tests.conftest import make_real_images

    root = tmp_path_factory.mktemp("label-store")
    shutil.copytree(teacher_store.root / "objects", root / "objects")
    store = Store(root)
    images = make_real_images(store, ipc=2)
    art = relabel(store, RelabelConfig(epochs=5, batch_size=B, rows_per_chunk=CHUNK,
                                       rows_per_shard=SHARD), images)
    return art.path / "labels.zarr"


def test_zarr_python_reads_every_array(label_store: Path) -> None:
    group = zarr.open_group(str(label_store), mode="r")
    assert group.metadata.zarr_format == 3
    assert sorted(group.array_keys()) == sorted(SCHEMA)
    attrs = dict(group.attrs)
    for key in ("num_classes", "batch_size", "batches_per_epoch", "epochs", "image_size", "mix",
                "logits_dtype", "images_id", "teacher_id"):
        assert key in attrs, key
    assert (attrs["num_classes"], attrs["batch_size"], attrs["batches_per_epoch"],
            attrs["epochs"], attrs["image_size"]) == (C, B, 3, 5, 28)
    for name, (dtype, shape) in SCHEMA.items():
        array = group[name]
        assert str(array.dtype) == dtype, name
        assert array.shape == shape, name
        assert array.chunks == (CHUNK, *shape[1:]), name  # whole batches per chunk
        assert array.shards == (SHARD, *shape[1:]), name
    batch_id = group["batch_id"][:]
    np.testing.assert_array_equal(batch_id, np.arange(R))
    index = group["image_index"][:]
    assert index.min() == -1 and index.max() == 19  # 20 images, last batch of 4 padded
    np.testing.assert_array_equal(index[2, 4:], [-1] * 4)


def test_metadata_names_a_native_codec_and_dimensions(label_store: Path) -> None:
    for name in SCHEMA:
        meta = json.loads((label_store / name / "zarr.json").read_text())
        assert meta["zarr_format"] == 3 and meta["node_type"] == "array"
        (sharding,) = meta["codecs"]  # the Zarr v3 sharding codec, whole chunks inside
        assert sharding["name"] == "sharding_indexed"
        config = sharding["configuration"]
        assert config["chunk_shape"][0] == CHUNK
        codecs = [c["name"] for c in config["codecs"]]
        assert codecs == ["bytes", "blosc", "crc32c"], codecs  # every chunk checksummed
        blosc = next(c for c in config["codecs"] if c["name"] == "blosc")
        assert blosc["configuration"]["cname"] == "zstd"
        assert "crc32c" in [c["name"] for c in config["index_codecs"]]
        assert meta["dimension_names"][0] == "row"
        # One file per shard, every shard written: ceil(15 / 8) = 2 along rows.
        shards = [p for p in (label_store / name / "c").rglob("*") if p.is_file()]
        assert len(shards) == 2, name


def test_tensorstore_reads_the_same_values(label_store: Path) -> None:
    group = zarr.open_group(str(label_store), mode="r")
    for name, (dtype, shape) in SCHEMA.items():
        array = ts.open({"driver": "zarr3",
                         "kvstore": {"driver": "file", "path": str(label_store / name)}},
                        read=True).result()
        assert tuple(array.shape) == shape, name
        assert array.dtype.numpy_dtype == np.dtype(dtype), name
        assert tuple(array.chunk_layout.read_chunk.shape) == (CHUNK, *shape[1:]), name
        assert tuple(array.chunk_layout.write_chunk.shape) == (SHARD, *shape[1:]), name
        np.testing.assert_array_equal(array.read().result(), group[name][:], err_msg=name)


def test_logits_are_real_teacher_outputs(label_store: Path) -> None:
    group = zarr.open_group(str(label_store), mode="r")
    logits = group["logits"][:].astype(np.float32)
    index = group["image_index"][:]
    filled = logits[index >= 0]
    assert np.isfinite(filled).all() and filled.std() > 0.1
    assert (logits[index < 0] == 0).all()
    # Ten classes seen as the argmax somewhere: the teacher discriminates.
    assert len(np.unique(filled.argmax(1))) >= 5


def test_a_flipped_byte_fails_its_checksum_without_the_manifest(label_store: Path,
                                                                tmp_path: Path) -> None:
    """crc32c on every chunk: zarr-python and tensorstore both refuse a damaged one."""
    copy = tmp_path / "copy.zarr"
    shutil.copytree(label_store, copy)
    shard = copy / "logits" / "c" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0x10  # inside the first chunks, not the index at the end
    shard.chmod(0o644)
    shard.write_bytes(bytes(data))
    with pytest.raises(Exception, match="(?i)checksum"):
        zarr.open_array(str(copy / "logits"), mode="r")[:]
    with pytest.raises(Exception, match="(?i)checksum|crc|digest"):
        ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(copy / "logits")}},
                read=True).result().read().result()
    np.testing.assert_array_equal(zarr.open_array(str(copy / "logits"), mode="r")[8:],
                                  zarr.open_array(str(label_store / "logits"), mode="r")[8:])


@pytest.mark.parametrize(("rows", "chunk", "shards"), [
    (600, 38, 16),  # Fashion-MNIST IPC10, E=300: ceil(600/16) rows per chunk, one per shard
    (200, 13, 16),
    (40, 8, 5),  # shards of at least 8 rows
    (5, 5, 1),  # a few rows (e.g. relabel --keep 40x of 200): one file per array
])
def test_default_layout_gives_every_rank_of_a_node_work(rows: int, chunk: int,
                                                        shards: int) -> None:
    """At least 16 shards of 8 rows or more where the rows allow (a fixed rule, never the
    world size), so torchrun ranks share a small store too; a hand computation."""
    from lpld_cli.storage.labels import Layout

    layout = Layout(rows, 50, 10, "float16", "zstd", 2, 100, 28)
    assert (layout.chunk(), layout.shards()) == (chunk, shards)
    assert layout.shard() == chunk  # one chunk per shard


def test_default_layout_at_imagenet_1k_ipc200_holds_a_few_thousand_files() -> None:
    """ImageNet-1K IPC200, 300 epochs of batches of 1024: 58,800 rows of ~2 MB of fp16
    logits; ~4 MB chunks (2 rows), ~256 MB shards, at most 512 shards per array."""
    from lpld_cli.storage.labels import Layout

    rows = 300 * -(-200_000 // 1024)
    layout = Layout(rows, 1024, 1000, "float16", "zstd", 2, 200_000, 224)
    assert layout.chunk() == (4 << 20) // layout.row_bytes() == 2
    assert 256 <= layout.shards() <= 512
    assert layout.files() == len(layout.specs()) * (layout.shards() + 1) + 1
    assert layout.files() < 5000
