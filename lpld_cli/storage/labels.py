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

GROUP = "labels.zarr"
LOGITS_DTYPES = ("float16", "bfloat16", "float32")
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
# The seven components `report storage` breaks down (the paper's six + sampler order).
COMPONENTS: dict[str, tuple[str, ...]] = {
    "crop coords": ("crop",),
    "flip": ("flip",),
    "cutmix indices": ("mix_index",),
    "cutmix strength": ("mix_lambda",),
    "cutmix box": ("mix_box",),
    "logits": ("logits",),
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
    logits: np.ndarray

    def __len__(self) -> int:
        return len(self.batch_id)

    def take(self, index: np.ndarray | slice) -> LabelRows:
        return LabelRows(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @staticmethod
    def concat(blocks: list[LabelRows]) -> LabelRows:
        return LabelRows(**{f.name: np.concatenate([getattr(b, f.name) for b in blocks])
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


def rows_per_chunk_for(batch_size: int, num_classes: int, logits_dtype: str) -> int:
    """Whole batches per chunk, for ~4 MB of logits per chunk (capped for small stores)."""
    row_bytes = batch_size * num_classes * np.dtype(_numpy_dtype(logits_dtype)).itemsize
    return int(max(1, min(MAX_ROWS_PER_CHUNK, TARGET_CHUNK_BYTES // row_bytes)))


def _numpy_dtype(logits_dtype: str) -> str:
    """The stored dtype of `logits`. zarr-python 3.1 has no bfloat16 data type, so bfloat16
    logits are stored as their raw bits in uint16 (group attribute logits_dtype says so)."""
    if logits_dtype not in LOGITS_DTYPES:
        raise ConfigError(f"unknown --logits-dtype {logits_dtype!r}",
                          f"choose one of: {', '.join(LOGITS_DTYPES)}")
    return "uint16" if logits_dtype == "bfloat16" else logits_dtype


def encode_logits(logits: torch.Tensor, logits_dtype: str) -> np.ndarray:
    """Teacher logits (any float tensor) to the stored array: cast, then raw bits for bf16."""
    if logits_dtype == "bfloat16":
        return logits.detach().to(torch.bfloat16).cpu().view(torch.int16).numpy().view(np.uint16)
    return logits.detach().to(getattr(torch, _numpy_dtype(logits_dtype))).cpu().numpy()


def decode_logits(stored: np.ndarray, logits_dtype: str) -> torch.Tensor:
    """Stored logits back to a float32 tensor."""
    if logits_dtype == "bfloat16":
        bits = torch.from_numpy(np.ascontiguousarray(stored).view(np.int16))
        return bits.view(torch.bfloat16).float()
    return torch.from_numpy(np.ascontiguousarray(stored)).float()


class LabelStore:
    """A Zarr v3 label store on disk: create, open (validated), chunk-aligned read/write."""

    def __init__(self, path: Path, group: zarr.Group, artifact_id: str = "?") -> None:
        self.path = Path(path)
        self.group = group
        self.arrays = {name: group[name] for name in SCHEMA}
        self.artifact_id = artifact_id

    # ------------------------------------------------------------------ create
    @classmethod
    def create(cls, folder: Path, rows: int, batch_size: int, num_classes: int, *,
               logits_dtype: str = "float16", codec: str = "zstd",
               rows_per_chunk: int | None = None, attributes: dict[str, Any] | None = None
               ) -> LabelStore:
        """Preallocate every array of DESIGN §5 in `folder/labels.zarr`."""
        if rows < 1:
            raise ConfigError("a label store needs at least one row")
        chunk = rows_per_chunk or rows_per_chunk_for(batch_size, num_classes, logits_dtype)
        attrs = {"num_classes": num_classes, "batch_size": batch_size, "rows": rows,
                 "rows_per_chunk": chunk, "logits_dtype": logits_dtype, "codec": codec,
                 **(attributes or {})}
        group = zarr.open_group(str(Path(folder) / GROUP), mode="w", zarr_format=3,
                                attributes=attrs)
        comp = compressor(codec)
        for name, (dtype, trailing, dims) in SCHEMA.items():
            shape = (rows, *trailing(batch_size, num_classes))
            group.create_array(
                name, shape=shape, chunks=(chunk, *shape[1:]),
                dtype=_numpy_dtype(logits_dtype) if name == "logits" else dtype,
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
        for name, (dtype, trailing, _dims) in SCHEMA.items():
            try:
                array = group[name]
            except KeyError:
                raise ArtifactCorruptedError(artifact_id, f"{GROUP}/{name}") from None
            want = (rows, *trailing(b, c))
            want_dtype = (_numpy_dtype(attrs.get("logits_dtype", dtype)) if name == "logits"
                          else dtype)
            if tuple(array.shape) != want or str(array.dtype) != want_dtype:
                raise ArtifactCorruptedError(artifact_id, f"{GROUP}/{name}")
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
        for name in SCHEMA:
            self.arrays[name][start:stop] = getattr(block, name)

    def read(self, start: int, stop: int) -> LabelRows:
        """Rows [start, stop); a chunk that does not decode is reported as corruption."""
        block = {}
        for name in SCHEMA:
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

    def iter_chunks(self):
        """(start, rows) for every chunk, in order; memory stays one chunk."""
        for start in range(0, self.rows, self.rows_per_chunk):
            yield start, self.read(start, min(start + self.rows_per_chunk, self.rows))
