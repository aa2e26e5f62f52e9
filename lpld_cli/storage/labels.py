"""The label store: one Zarr v3 group per `labels` artifact (DESIGN §5, a public contract).

Rows are stored batches. Every array is chunked along rows only, a chunk holds
`rows_per_chunk` whole batches, and rows are written by chunk-aligned slices into
preallocated arrays (never `append`), so a writer (or a rank, later) owns whole
chunks and a crash can only lose the chunk being written.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
import zarr.codecs

from lpld_cli.errors import ArtifactCorruptedError, ConfigError
from lpld_cli.storage.encoding import LABEL_ARRAYS, LOGITS_DTYPES, Encoding, decode_full, encode

GROUP = "labels.zarr"
CODECS = ("zstd", "lz4", "gzip", "none")
# Target compressed chunk size at ImageNet scale (issue: ~1-8 MB per chunk).
TARGET_CHUNK_BYTES = 4 << 20
MAX_ROWS_PER_CHUNK = 256

# name -> (dtype, trailing shape as a function of (batch_size, num_classes), dimension names)
SCHEMA: dict[str, tuple[str, Any, tuple[str, ...]]] = {
    "batch_id": ("int32", lambda b, c: (), ("row",)),
    "image_index": ("int32", lambda b, c: (b,), ("row", "slot")),
    "crop": ("float32", lambda b, c: (b, 4), ("row", "slot", "box")),
    "flip": ("bool", lambda b, c: (b,), ("row", "slot")),
    "mix_index": ("int32", lambda b, c: (b,), ("row", "slot")),
    "mix_lambda": ("float32", lambda b, c: (), ("row",)),
    "mix_box": ("int32", lambda b, c: (4,), ("row", "box")),
    "logits": ("float16", lambda b, c: (b, c), ("row", "slot", "class")),
}
# The augmentation (and sampler) arrays every store holds; the label arrays follow the
# store's encoding (`storage.encoding`: full logits or top-k, exactly one of them).
AUGMENT_SCHEMA = {k: v for k, v in SCHEMA.items() if k != "logits"}
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


@dataclass
class LabelRows:
    """A block of rows in memory, one NumPy array per stored array (same names)."""

    batch_id: np.ndarray
    image_index: np.ndarray
    crop: np.ndarray
    flip: np.ndarray
    mix_index: np.ndarray
    mix_lambda: np.ndarray
    mix_box: np.ndarray
    # the label arrays: those of the store's encoding are set, the others are None
    logits: np.ndarray | None = None
    logits_scale: np.ndarray | None = None
    topk_values: np.ndarray | None = None
    topk_index: np.ndarray | None = None
    topk_fill: np.ndarray | None = None
    topk_scale: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.batch_id)

    @property
    def labels(self) -> dict[str, np.ndarray]:
        """The label arrays present (what `storage.encoding` decodes)."""
        return {name: getattr(self, name) for name in LABEL_ARRAYS
                if getattr(self, name) is not None}

    def with_labels(self, labels: dict[str, np.ndarray]) -> LabelRows:
        """The same augmentations with other label arrays (a re-encoding)."""
        return LabelRows(**{name: getattr(self, name) for name in AUGMENT_SCHEMA}, **labels)

    def take(self, index: np.ndarray | slice) -> LabelRows:
        return LabelRows(**{f.name: None if getattr(self, f.name) is None
                            else getattr(self, f.name)[index] for f in fields(self)})

    @staticmethod
    def concat(blocks: list[LabelRows]) -> LabelRows:
        return LabelRows(**{f.name: None if getattr(blocks[0], f.name) is None
                            else np.concatenate([getattr(b, f.name) for b in blocks])
                            for f in fields(LabelRows)})


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


def store_schema(encoding: Encoding, batch: int, classes: int
                 ) -> dict[str, tuple[str, tuple[int, ...], tuple[str, ...]]]:
    """Every array of a store with this encoding: name -> (dtype, trailing shape, dims)."""
    out = {name: (dtype, tuple(trailing(batch, classes)), dims)
           for name, (dtype, trailing, dims) in AUGMENT_SCHEMA.items()}
    out.update(encoding.schema(batch, classes))
    return out


class LabelStore:
    """A Zarr v3 label store on disk: create, open (validated), chunk-aligned read/write."""

    def __init__(self, path: Path, group: zarr.Group, artifact_id: str = "?") -> None:
        self.path = Path(path)
        self.group = group
        self.encoding = Encoding.from_attributes(dict(group.attrs))
        self.arrays = {name: group[name] for name in store_schema(
            self.encoding, int(group.attrs["batch_size"]), int(group.attrs["num_classes"]))}
        self.artifact_id = artifact_id

    # ------------------------------------------------------------------ create
    @classmethod
    def create(cls, folder: Path, rows: int, batch_size: int, num_classes: int, *,
               logits_dtype: str = "float16", codec: str = "zstd",
               rows_per_chunk: int | None = None, attributes: dict[str, Any] | None = None,
               encoding: Encoding | None = None) -> LabelStore:
        """Preallocate every array of DESIGN §5 in `folder/labels.zarr`.

        `encoding` (default: full logits in `logits_dtype`) decides the label arrays.
        """
        if rows < 1:
            raise ConfigError("a label store needs at least one row")
        enc = encoding or _full(logits_dtype)
        enc.validate(num_classes)
        chunk = rows_per_chunk or rows_per_chunk_for(batch_size, num_classes, enc)
        attrs = {**(attributes or {}), "num_classes": num_classes, "batch_size": batch_size,
                 "rows": rows, "rows_per_chunk": chunk, "codec": codec, **enc.attributes()}
        group = zarr.open_group(str(Path(folder) / GROUP), mode="w", zarr_format=3,
                                attributes=attrs)
        comp = compressor(codec)
        for name, (dtype, trailing, dims) in store_schema(enc, batch_size, num_classes).items():
            shape = (rows, *trailing)
            group.create_array(
                name, shape=shape, chunks=(chunk, *shape[1:]), dtype=dtype,
                compressors=[comp] if comp is not None else None,
                fill_value=-1 if name in ("batch_id", "image_index") else 0,
                dimension_names=dims)
        return cls(Path(folder) / GROUP, group)

    # -------------------------------------------------------------------- open
    @classmethod
    def open(cls, folder: Path, artifact_id: str = "?", mode: str = "r") -> LabelStore:
        """Open and check a store: every array present with the schema's shape and dtype.

        `mode="r+"` reopens a store being written (a resumed relabel in staging).
        """
        path = Path(folder) / GROUP
        try:
            group = zarr.open_group(str(path), mode=mode, zarr_format=3)
        except Exception:  # missing or unreadable zarr.json
            raise ArtifactCorruptedError(artifact_id, f"{GROUP}/zarr.json") from None
        attrs = dict(group.attrs)
        rows, b, c = attrs.get("rows"), attrs.get("batch_size"), attrs.get("num_classes")
        try:
            encoding = Encoding.from_attributes(attrs)
            encoding.validate(c)
        except (ConfigError, TypeError, ValueError):
            raise ArtifactCorruptedError(artifact_id, f"{GROUP}/zarr.json") from None
        schema = store_schema(encoding, b, c)
        for name, (dtype, trailing, _dims) in schema.items():
            try:
                array = group[name]
            except KeyError:
                raise ArtifactCorruptedError(artifact_id, f"{GROUP}/{name}") from None
            if tuple(array.shape) != (rows, *trailing) or str(array.dtype) != dtype:
                raise ArtifactCorruptedError(artifact_id, f"{GROUP}/{name}")
        # exactly one label family: no array of another encoding may sit beside it
        stray = [n for n in LABEL_ARRAYS if n not in schema and n in group]
        if stray:
            raise ArtifactCorruptedError(artifact_id, f"{GROUP}/{stray[0]}")
        return cls(path, group, artifact_id)

    # ------------------------------------------------------------- properties
    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    @property
    def rows(self) -> int:
        return int(self.group.attrs["rows"])

    @property
    def batch_size(self) -> int:
        return int(self.group.attrs["batch_size"])

    @property
    def num_classes(self) -> int:
        return int(self.group.attrs["num_classes"])

    @property
    def rows_per_chunk(self) -> int:
        return int(self.arrays["batch_id"].chunks[0])

    # ------------------------------------------------------------ read/write
    def write(self, start: int, block: LabelRows) -> None:
        """Write rows [start, start + len(block)); `start` must sit on a chunk boundary."""
        chunk = self.rows_per_chunk
        stop = start + len(block)
        if start % chunk or (stop % chunk and stop != self.rows):
            raise ValueError(f"rows {start}:{stop} are not chunk-aligned (chunk {chunk})")
        for name, array in self.arrays.items():
            array[start:stop] = getattr(block, name)

    def read(self, start: int, stop: int) -> LabelRows:
        """Rows [start, stop); a chunk that does not decode is reported as corruption."""
        block = {}
        for name in self.arrays:
            try:
                block[name] = self.arrays[name][start:stop]
            except Exception:  # codec or shape errors from a damaged chunk file
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

    def iter_chunks(self):
        """(start, rows) for every chunk, in order; memory stays one chunk."""
        for start in range(0, self.rows, self.rows_per_chunk):
            yield start, self.read(start, min(start + self.rows_per_chunk, self.rows))
