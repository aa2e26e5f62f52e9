"""The label store: one Zarr v3 group per `labels` artifact (DESIGN §5, a public contract).

Rows are stored batches. Every array is split along rows only: a chunk holds
`rows_per_chunk` whole batches, and (stores made from round 2 on) the Zarr v3 sharding
codec packs `rows_per_shard` rows (whole chunks) of an array into one file, so a
store at ImageNet scale holds a few thousand files. Rows are written by whole shards
into preallocated arrays (never `append`): a writer (or a rank) owns whole shards and a
crash can only lose the shard being written. Every chunk carries a crc32c checksum, so
a damaged chunk fails on read even without the manifest, and every chunk is written
(write_empty_chunks), so presence means written.

Replay contracts (group attribute `replay`; absent: 1): v1 stores keep round 1's
dtypes (float32 crop fractions, int32 indices); v2 stores hold the same augmentation
losslessly in the narrowest types: crop boxes as integer pixels of the stored image,
image indices and CutMix partners in the smallest integer type that fits.

The label arrays follow the store's encoding (`storage.encoding.Encoding`, named by the
group attributes): full logits (float16 / bfloat16 bits / float32, or q8 / q4 codes with a
per-slot scale) or LPQLD's top-k arrays, exactly one family per store.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
import zarr.codecs

from lpld_cli.errors import ArtifactCorruptedError, ConfigError
from lpld_cli.storage.encoding import (
    LABEL_ARRAYS,
    LOGITS_DTYPES,
    Encoding,
    SoftTarget,
    decode_full,
    decode_target,
    encode,
)

GROUP = "labels.zarr"
CODECS = ("zstd", "lz4", "gzip", "none")
# Target compressed chunk size at ImageNet scale (issue: ~1-8 MB per chunk).
TARGET_CHUNK_BYTES = 4 << 20
MAX_ROWS_PER_CHUNK = 256
# Shards: ~256 MB of rows per file, at most MAX_SHARDS files per array, and at least
# MIN_SHARDS of MIN_SHARD_ROWS rows or more where the rows allow, so that up to MIN_SHARDS
# torchrun ranks share even a small store's work (fixed numbers: the layout never depends
# on the world size), while a store of a few rows stays one file per array.
TARGET_SHARD_BYTES = 256 << 20
MAX_SHARDS = 512
MIN_SHARDS = 16
MIN_SHARD_ROWS = 8
# The rule that sizes default chunks and shards, recorded in the identity of every label
# store (relabel, prune): a new rule writes other files, so it must name other artifacts.
# 1: bytes only; 3: and at least MIN_SHARDS shards of MIN_SHARD_ROWS rows or more.
LAYOUT_RULE = 3
# Attributes LabelStore.create sets itself (never copied from a parent).
LAYOUT_ATTRS = ("num_classes", "batch_size", "rows", "rows_per_chunk", "rows_per_shard",
                "logits_dtype", "codec", "replay", "topk", "topk_fill", "fill_temperature",
                "values_dtype")
AUGMENT_ARRAYS = ("batch_id", "image_index", "crop", "flip", "mix_index", "mix_lambda",
                  "mix_box")


@dataclass(frozen=True)
class ArraySpec:
    """One stored array: dtype, shape after the row axis, dimension names."""

    dtype: str
    trailing: tuple[int, ...]
    dims: tuple[str, ...]
    fill: int = 0


def _narrowest(limit: int, signed: bool) -> str:
    """The smallest integer dtype holding 0..limit (and −1 when signed)."""
    for bits in (8, 16, 32):
        if (signed and limit < 2 ** (bits - 1)) or (not signed and limit < 2 ** bits):
            return f"{'int' if signed else 'uint'}{bits}"
    return "int64" if signed else "uint64"


def augment_specs(batch_size: int, replay: int, num_images: int | None = None,
                  image_size: int | None = None) -> dict[str, ArraySpec]:
    """The augmentation arrays of a store of this replay contract."""
    b = batch_size
    if replay == 1:
        index, crop, partner, box = "int32", "float32", "int32", "int32"
    else:
        if num_images is None or image_size is None:
            raise ValueError("a v2 label store needs num_images and image_size")
        index = _narrowest(num_images - 1, signed=True)
        crop = box = _narrowest(image_size, signed=False)
        partner = _narrowest(b - 1, signed=False)
    return {
        "batch_id": ArraySpec("int32", (), ("row",), -1),
        "image_index": ArraySpec(index, (b,), ("row", "slot"), -1),
        "crop": ArraySpec(crop, (b, 4), ("row", "slot", "box")),
        "flip": ArraySpec("bool", (b,), ("row", "slot")),
        "mix_index": ArraySpec(partner, (b,), ("row", "slot")),
        "mix_lambda": ArraySpec("float32", (), ("row",)),
        "mix_box": ArraySpec(box, (4,), ("row", "box")),
    }


# --------------------------------------------------------------------- labels
def label_specs(encoding: Encoding, batch_size: int, num_classes: int) -> dict[str, ArraySpec]:
    """The label arrays of a store with this encoding (`storage.encoding`)."""
    return {name: ArraySpec(dtype, trailing, dims)
            for name, (dtype, trailing, dims) in encoding.schema(batch_size,
                                                                 num_classes).items()}


def _full(logits_dtype: str) -> Encoding:
    if logits_dtype not in LOGITS_DTYPES:
        raise ConfigError(f"unknown --logits-dtype {logits_dtype!r}",
                          f"choose one of: {', '.join(LOGITS_DTYPES)}")
    return Encoding(logits_dtype=logits_dtype)


def encode_logits(logits: torch.Tensor, logits_dtype: str) -> np.ndarray:
    """Teacher logits to a float `logits` array (bf16 as raw uint16 bits: zarr-python 3.1
    has no bfloat16 type; group attribute logits_dtype says so)."""
    return encode(logits, _full(logits_dtype))["logits"]


def decode_logits(stored: np.ndarray, logits_dtype: str) -> torch.Tensor:
    """A stored float `logits` array back to a float32 tensor."""
    return decode_full({"logits": stored}, _full(logits_dtype), int(stored.shape[-1]))


# ------------------------------------------------------------------- layout
@dataclass(frozen=True)
class Layout:
    """Everything that fixes a store's arrays and files (LAYOUT_ATTRS + the image set)."""

    rows: int
    batch_size: int
    num_classes: int
    logits_dtype: str = "float16"
    codec: str = "zstd"
    replay: int = 1
    num_images: int | None = None
    image_size: int | None = None
    # None: ~4 MB of logits per chunk, ~256 MB per shard file, 16 to 512 shards
    rows_per_chunk: int | None = None
    rows_per_shard: int | None = None
    # the label encoding beyond logits_dtype (storage.encoding): top-k instead of full logits
    topk: int | None = None
    topk_fill: str = "none"
    fill_temperature: float | None = None

    @property
    def encoding(self) -> Encoding:
        return Encoding(self.logits_dtype, self.topk, self.topk_fill, self.fill_temperature)

    def with_encoding(self, encoding: Encoding) -> Layout:
        return replace(self, logits_dtype=encoding.logits_dtype, topk=encoding.topk,
                       topk_fill=encoding.topk_fill, fill_temperature=encoding.fill_temperature)

    def specs(self) -> dict[str, ArraySpec]:
        return {**augment_specs(self.batch_size, self.replay, self.num_images, self.image_size),
                **label_specs(self.encoding, self.batch_size, self.num_classes)}

    def row_bytes(self) -> int:
        return sum(math.prod(s.trailing) * np.dtype(s.dtype).itemsize
                   for s in self.specs().values())

    def chunk(self) -> int:
        if self.rows_per_chunk is not None:
            return min(self.rows_per_chunk, self.rows)
        return min(rows_per_chunk_for(self.batch_size, self.num_classes, self.encoding),
                   max(MIN_SHARD_ROWS, math.ceil(self.rows / MIN_SHARDS)), max(1, self.rows))

    def shard(self) -> int:
        """Rows per shard file: whole chunks, ~TARGET_SHARD_BYTES, at most MAX_SHARDS and
        (rows allowing) at least MIN_SHARDS shards."""
        chunk = self.chunk()
        chunks = math.ceil(self.rows / chunk)
        if self.rows_per_shard is not None:
            if self.rows_per_shard % chunk:
                raise ConfigError(f"--rows-per-shard {self.rows_per_shard} is not a multiple "
                                  f"of the {chunk} rows per chunk")
            return min(self.rows_per_shard, chunks * chunk)
        by_bytes = max(1, TARGET_SHARD_BYTES // (chunk * self.row_bytes()))
        per = max(min(by_bytes, math.ceil(chunks / MIN_SHARDS)), math.ceil(chunks / MAX_SHARDS))
        return min(per, chunks) * chunk

    def shards(self) -> int:
        return math.ceil(self.rows / self.shard())

    def files(self) -> int:
        """Files of the store: one per shard per array, a zarr.json per array and group."""
        arrays = len(self.specs())
        return arrays * (self.shards() + 1) + 1

    def attributes(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "batch_size": self.batch_size,
                "rows": self.rows, "rows_per_chunk": self.chunk(),
                "rows_per_shard": self.shard(), "codec": self.codec, "replay": self.replay,
                **self.encoding.attributes()}


class LabelRows:
    """A block of rows in memory: one NumPy array per stored array (same names)."""

    def __init__(self, **arrays: np.ndarray) -> None:
        self.arrays = arrays

    def __getattr__(self, name: str) -> np.ndarray:
        try:
            return self.__dict__["arrays"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    @property
    def labels(self) -> dict[str, np.ndarray]:
        """The label arrays present (what `storage.encoding` decodes)."""
        return {k: v for k, v in self.arrays.items() if k in LABEL_ARRAYS}

    def with_labels(self, labels: dict[str, np.ndarray]) -> LabelRows:
        """The same augmentations with other label arrays (a re-encoding)."""
        return LabelRows(**{k: v for k, v in self.arrays.items() if k not in LABEL_ARRAYS},
                         **labels)

    def take(self, index: np.ndarray | slice) -> LabelRows:
        return LabelRows(**{k: v[index] for k, v in self.arrays.items()})

    @staticmethod
    def concat(blocks: list[LabelRows]) -> LabelRows:
        names = blocks[0].arrays
        return LabelRows(**{k: np.concatenate([b.arrays[k] for b in blocks]) for k in names})

    @staticmethod
    def empty(layout: Layout, rows: int) -> LabelRows:
        return LabelRows(**{k: np.zeros((rows, *s.trailing), dtype=s.dtype)
                            for k, s in layout.specs().items()})


def compressor(codec: str) -> zarr.codecs.BloscCodec | zarr.codecs.GzipCodec | None:
    """A zarr-native codec: zstd (default) or lz4 via Blosc with byte shuffle, gzip, none."""
    if codec in ("zstd", "lz4"):
        return zarr.codecs.BloscCodec(cname=codec, clevel=5, shuffle="shuffle")
    if codec == "gzip":
        return zarr.codecs.GzipCodec(level=5)
    if codec == "none":
        return None
    raise ConfigError(f"unknown --codec {codec!r}", f"choose one of: {', '.join(CODECS)}")


def rows_per_chunk_for(batch_size: int, num_classes: int,
                       logits_dtype: str | Encoding = "float16") -> int:
    """Whole batches per chunk, for ~4 MB of labels per chunk (capped for small stores)."""
    enc = logits_dtype if isinstance(logits_dtype, Encoding) else _full(logits_dtype)
    row_bytes = enc.row_bytes(batch_size, num_classes)
    return int(max(1, min(MAX_ROWS_PER_CHUNK, TARGET_CHUNK_BYTES // row_bytes)))


class LabelStore:
    """A Zarr v3 label store on disk: create, open (validated), shard-aligned read/write."""

    def __init__(self, path: Path, group: zarr.Group, layout: Layout,
                 artifact_id: str = "?") -> None:
        self.path = Path(path)
        self.group = group
        self.layout = layout
        self.specs = layout.specs()
        self.arrays = {name: group[name] for name in self.specs}
        self.encoding = layout.encoding
        self.artifact_id = artifact_id

    # ------------------------------------------------------------------ create
    @classmethod
    def create(cls, folder: Path, rows: int, batch_size: int, num_classes: int, *,
               logits_dtype: str = "float16", codec: str = "zstd",
               rows_per_chunk: int | None = None, rows_per_shard: int | None = None,
               replay: int = 1, num_images: int | None = None, image_size: int | None = None,
               attributes: dict[str, Any] | None = None,
               encoding: Encoding | None = None) -> LabelStore:
        """Preallocate every array of DESIGN §5 in `folder/labels.zarr`.

        `replay` 1 keeps round 1's dtypes (what `prune` of a v1 store writes); relabel
        writes 2 (needs `num_images` and `image_size` for the narrow types). `encoding`
        (default: full logits in `logits_dtype`) decides the label arrays.
        """
        layout = Layout(rows, batch_size, num_classes, logits_dtype, codec, replay,
                        num_images, image_size, rows_per_chunk, rows_per_shard)
        if encoding is not None:
            layout = layout.with_encoding(encoding)
        return cls.create_layout(folder, layout, attributes)

    @classmethod
    def create_layout(cls, folder: Path, layout: Layout,
                      attributes: dict[str, Any] | None = None) -> LabelStore:
        if layout.rows < 1:
            raise ConfigError("a label store needs at least one row")
        layout.encoding.validate(layout.num_classes)
        extra = {k: v for k, v in (attributes or {}).items() if k not in LAYOUT_ATTRS}
        if layout.num_images is not None:
            extra.setdefault("num_images", layout.num_images)
        if layout.image_size is not None:
            extra.setdefault("image_size", layout.image_size)
        attrs = {**layout.attributes(), **extra}
        group = zarr.open_group(str(Path(folder) / GROUP), mode="w", zarr_format=3,
                                attributes=attrs)
        comp = compressor(layout.codec)
        chunk, shard = layout.chunk(), layout.shard()
        for name, spec in layout.specs().items():
            shape = (layout.rows, *spec.trailing)
            group.create_array(
                name, shape=shape, chunks=(chunk, *spec.trailing),
                shards=(shard, *spec.trailing), dtype=spec.dtype,
                compressors=[*([comp] if comp is not None else []),
                             zarr.codecs.Crc32cCodec()],
                fill_value=spec.fill, dimension_names=spec.dims,
                config={"write_empty_chunks": True})
        return cls(Path(folder) / GROUP, group, layout)

    # -------------------------------------------------------------------- open
    @classmethod
    def open(cls, folder: Path, artifact_id: str = "?", mode: str = "r") -> LabelStore:
        """Open and check a store: every array present with the layout's shape and dtype.

        `mode="r+"` reopens a store being written (a resumed relabel in staging).
        """
        path = Path(folder) / GROUP
        try:
            group = zarr.open_group(str(path), mode=mode, zarr_format=3)
            attrs = dict(group.attrs)
            layout = Layout(int(attrs["rows"]), int(attrs["batch_size"]),
                            int(attrs["num_classes"]), attrs.get("logits_dtype", "float16"),
                            attrs.get("codec", "zstd"), int(attrs.get("replay", 1)),
                            attrs.get("num_images"), attrs.get("image_size"),
                            int(attrs["rows_per_chunk"]), attrs.get("rows_per_shard"))
            layout = layout.with_encoding(Encoding.from_attributes(attrs))
            layout.encoding.validate(layout.num_classes)
            specs = layout.specs()
        except Exception:  # missing or unreadable zarr.json, or attributes that do not fit
            raise ArtifactCorruptedError(artifact_id, f"{GROUP}/zarr.json") from None
        for name, spec in specs.items():
            try:
                array = group[name]
            except KeyError:
                raise ArtifactCorruptedError(artifact_id, f"{GROUP}/{name}") from None
            if tuple(array.shape) != (layout.rows, *spec.trailing) or \
                    str(array.dtype) != spec.dtype:
                raise ArtifactCorruptedError(artifact_id, f"{GROUP}/{name}")
        # exactly one label family: no array of another encoding may sit beside it
        stray = [n for n in LABEL_ARRAYS if n not in specs and n in group]
        if stray:
            raise ArtifactCorruptedError(artifact_id, f"{GROUP}/{stray[0]}")
        return cls(path, group, layout, artifact_id)

    # ------------------------------------------------------------- properties
    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    @property
    def rows(self) -> int:
        return self.layout.rows

    @property
    def batch_size(self) -> int:
        return self.layout.batch_size

    @property
    def num_classes(self) -> int:
        return self.layout.num_classes

    @property
    def replay(self) -> int:
        return self.layout.replay

    @property
    def rows_per_chunk(self) -> int:
        return int(self.layout.rows_per_chunk or self.layout.chunk())

    @property
    def rows_per_shard(self) -> int:
        """Rows of one file per array: the unit of writing (a chunk in unsharded stores)."""
        shards = self.arrays["batch_id"].shards
        return int(shards[0]) if shards else self.rows_per_chunk

    def shard_range(self, k: int) -> tuple[int, int]:
        step = self.rows_per_shard
        return k * step, min((k + 1) * step, self.rows)

    @property
    def num_shards(self) -> int:
        return math.ceil(self.rows / self.rows_per_shard)

    def encode(self, logits: torch.Tensor) -> dict[str, np.ndarray]:
        """Teacher logits [..., C] to this store's label arrays."""
        return encode(logits, self.encoding)

    def target(self, block: LabelRows) -> SoftTarget:
        """A block's labels decoded to float32: full logits [r, B, C] or the top-k triple."""
        return decode_target(block.labels, self.encoding, self.num_classes)

    def logits(self, block: LabelRows) -> torch.Tensor:
        """A block's logits as float32 [r, B, C] (a top-k store's over its fill, −inf for
        fill "none"): what prune's metrics score."""
        return self.target(block).dense(self.num_classes)

    # ------------------------------------------------------------ read/write
    def write(self, start: int, block: LabelRows) -> None:
        """Write rows [start, start + len(block)), chunk-aligned. Whole shards (the last may
        be short) write each file once; part of a shard rewrites its file."""
        step = self.rows_per_chunk
        stop = start + len(block)
        if start % step or (stop % step and stop != self.rows):
            raise ValueError(f"rows {start}:{stop} are not chunk-aligned (chunk {step})")
        for name in self.specs:
            self.arrays[name][start:stop] = getattr(block, name)

    def read(self, start: int, stop: int, names: tuple[str, ...] | None = None) -> LabelRows:
        """Rows [start, stop); a chunk that does not decode (or fails its crc32c) is
        reported as corruption."""
        block = {}
        for name in names or tuple(self.specs):
            try:
                block[name] = self.arrays[name][start:stop]
            except Exception:  # codec, checksum or shape errors from a damaged chunk file
                raise ArtifactCorruptedError(self.artifact_id, f"{GROUP}/{name}") from None
        return LabelRows(**block)

    def read_rows(self, index: np.ndarray) -> LabelRows:
        """Rows at `index` (any order), read chunk by chunk."""
        index = np.asarray(index, dtype=np.int64)
        order = np.argsort(index, kind="stable")
        sorted_index = index[order]
        blocks = []
        chunk = self.rows_per_chunk
        for first in np.unique(sorted_index // chunk):
            lo, hi = first * chunk, min((first + 1) * chunk, self.rows)
            wanted = sorted_index[(sorted_index >= lo) & (sorted_index < hi)]
            blocks.append(self.read(lo, hi).take(wanted - lo))
        gathered = LabelRows.concat(blocks)
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return gathered.take(inverse)

    def check_batch_ids(self, expected: np.ndarray) -> None:
        """Before promotion: every row written, holding the batch `expected` says.

        An unwritten chunk reads as the fill value (−1) without any error, so a writer
        that lost a chunk would otherwise promote holes.
        """
        written = np.asarray(self.arrays["batch_id"][:], dtype=np.int64)
        bad = np.flatnonzero(written != np.asarray(expected, dtype=np.int64))
        if bad.size:
            raise ArtifactCorruptedError(
                self.artifact_id, f"{GROUP}/batch_id",
                detail=f"{bad.size} of {self.rows} rows unwritten or misnumbered, "
                       f"first at row {int(bad[0])}",
                hint="nothing was promoted: run the same command again")

    def iter_chunks(self) -> Iterator[tuple[int, LabelRows]]:
        """(start, rows) for every chunk, in order; memory stays one chunk."""
        for start in range(0, self.rows, self.rows_per_chunk):
            yield start, self.read(start, min(start + self.rows_per_chunk, self.rows))

    def files(self) -> int:
        """Files under labels.zarr (shards/chunks and metadata)."""
        return sum(1 for p in self.path.rglob("*") if p.is_file())


def child_layout(parent: Layout, rows: int, rows_per_chunk: int | None = None) -> Layout:
    """The layout of a store holding `rows` of `parent`'s rows: the same arrays and types,
    chunks no larger than the parent's, shards sized afresh."""
    return replace(parent, rows=rows, rows_per_chunk=rows_per_chunk or min(parent.chunk(), rows),
                   rows_per_shard=None)


def pruned_attributes(parent: dict[str, Any], parent_id: str, fields: dict[str, Any]
                      ) -> dict[str, Any]:
    """The attributes of a store holding a subset of `parent`'s rows (prune, relabel --keep):
    the parent's own (layout aside), relabel's seed kept as relabel_seed, the parent id,
    the pruning `fields` and the lineage."""
    extra = {k: v for k, v in parent.items() if k not in LAYOUT_ATTRS}
    if "parent_id" not in parent and "seed" in parent:  # keep relabel's seed: ours replaces it
        extra["relabel_seed"] = parent["seed"]
    lineage = [*parent.get("lineage", []), parent_id]
    extra.update(parent_id=parent_id, **fields, lineage=lineage)
    return extra


# Kept for readers of round 1's names: the v1 schema and the seven report components.
SCHEMA = {name: (spec.dtype, spec.trailing, spec.dims)
          for name, spec in augment_specs(1, 1).items()}
SCHEMA["logits"] = ("float16", (1, 1), ("row", "slot", "class"))
# The seven components `report storage` breaks down (the paper's six + sampler order).
COMPONENTS: dict[str, tuple[str, ...]] = {
    "crop coords": ("crop",),
    "flip": ("flip",),
    "cutmix indices": ("mix_index",),
    "cutmix strength": ("mix_lambda",),
    "cutmix box": ("mix_box",),
    "logits": LABEL_ARRAYS,
    "sampler order": ("image_index", "batch_id"),
}
