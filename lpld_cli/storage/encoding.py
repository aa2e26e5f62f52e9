"""Label encodings: how a label store holds each slot's teacher logits (DESIGN §5, round 2).

Two families, exactly one per store:
- full logits: `logits` [R, B, C] in float16 / bfloat16 (raw bits in uint16) / float32, or
  q8 / q4 codes with a per-slot `logits_scale` [R, B]. The codes count down from the slot's
  largest logit, x̂ = −q·s: the slot's constant offset (its maximum) is never stored because
  softmax ignores a constant shift, so one fp16 scale per slot is the whole overhead and
  |x̂ − (x − max x)| ≤ s/2 with s = (max − min)/(2^bits − 1) rounded up to fp16;
- top-k (LPQLD's label quantization): `topk_values` [R, B, K] the K largest logits as fp16
  (sorted descending, pre-softmax, as LPQLD stores them) and `topk_index` [R, B, K] their
  classes in the narrowest unsigned type; the other C − K classes get
  `--topk-fill none` — no mass: p̂ = softmax over the K kept logits (LPQLD's "MR-k");
  `min`  — the slot's minimum logit, stored in `topk_fill` (LPQLD's "MRS", whose relabel
           computes the minimum but never saves it);
  `lme`  — the log-mean-exp of the dropped logits at `fill_temperature` T_f,
           f = T_f·(log Σ_tail exp(z/T_f) − log(C − K)), stored in `topk_fill`. At T_f the
           C − K copies of f carry exactly the dropped mass, so softmax([z_topk, f…]/T_f)
           is FKD's marginal smoothing ((1 − Σ top-k)/(C − K) per other class); at any other
           T it is still a logit, so temperature schedules stay defined.

Re-encoding (`prune`) only narrows: a full store becomes top-k or fewer bits, K becomes
K′ ≤ K, a fill is kept (exactly: lme is recomputed from its stored tail mass) or dropped.
Anything that would need information the source no longer has is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lpld_cli.errors import ConfigError

LOGITS_DTYPES = ("float16", "bfloat16", "float32", "q8", "q4")
TOPK_FILLS = ("none", "min", "lme")
# Bits per full logit, for the narrowing rule (float16 and bfloat16 are not comparable).
_BITS = {"float32": 32, "float16": 16, "bfloat16": 16, "q8": 8, "q4": 4}
_LEVELS = {"q8": 255, "q4": 15}
# Every label array an encoding may write; `report storage` counts them all as "logits".
LABEL_ARRAYS = ("logits", "logits_scale", "topk_values", "topk_index", "topk_fill",
                "topk_scale")


def index_dtype(num_classes: int) -> str:
    """The narrowest unsigned type that holds every class index."""
    if num_classes <= 1 << 8:
        return "uint8"
    if num_classes <= 1 << 16:
        return "uint16"
    return "uint32"


@dataclass(frozen=True)
class Encoding:
    """How one store encodes its labels (group attributes say the same)."""

    logits_dtype: str = "float16"  # full logits; for a top-k store: the values' dtype
    topk: int | None = None
    topk_fill: str = "none"
    fill_temperature: float | None = None  # lme only: the T at which it is FKD's smoothing

    @property
    def is_topk(self) -> bool:
        return self.topk is not None

    def validate(self, num_classes: int | None = None) -> None:
        """One-line errors for impossible encodings (num_classes when known)."""
        if self.logits_dtype not in LOGITS_DTYPES:
            raise ConfigError(f"unknown --logits-dtype {self.logits_dtype!r}",
                              f"choose one of: {', '.join(LOGITS_DTYPES)}")
        if self.topk_fill not in TOPK_FILLS:
            raise ConfigError(f"unknown --topk-fill {self.topk_fill!r}",
                              f"choose one of: {', '.join(TOPK_FILLS)}")
        if self.fill_temperature is not None and self.topk_fill != "lme":
            raise ConfigError("--fill-temperature applies to --topk-fill lme only")
        if self.topk is None:
            if self.topk_fill != "none":
                raise ConfigError("--topk-fill applies to top-k stores only",
                                  "add --topk K, or drop --topk-fill")
            return
        if self.topk < 1:
            raise ConfigError(f"--topk must be at least 1 (got {self.topk})",
                              "keep K ≥ 1 logits per slot, or omit --topk for full logits")
        if num_classes is not None and self.topk >= num_classes:
            raise ConfigError(f"--topk must be below the number of classes ({num_classes}), "
                              f"got {self.topk}", "omit --topk to store full logits")
        if self.logits_dtype != "float16":
            raise ConfigError(f"top-k values are stored as float16, not {self.logits_dtype}",
                              "use --logits-dtype float16 with --topk")
        if self.topk_fill == "lme":
            t = self.fill_temperature
            if t is None or not (math.isfinite(t) and t > 0):
                raise ConfigError("--topk-fill lme needs a positive fill temperature",
                                  "it is the temperature at which the fill reproduces FKD's "
                                  "marginal smoothing (default: the training --temperature)")

    # -------------------------------------------------------------- layout
    def schema(self, batch: int, classes: int) -> dict[str, tuple[str, tuple[int, ...],
                                                              tuple[str, ...]]]:
        """name -> (stored dtype, trailing shape after rows, dimension names)."""
        if self.is_topk:
            k = int(self.topk)  # type: ignore[arg-type]
            out = {"topk_values": ("float16", (batch, k), ("row", "slot", "rank")),
                   "topk_index": (index_dtype(classes), (batch, k), ("row", "slot", "rank"))}
            if self.topk_fill != "none":
                out["topk_fill"] = ("float16", (batch,), ("row", "slot"))
            return out
        d = self.logits_dtype
        if d in _LEVELS:
            width = classes if d == "q8" else (classes + 1) // 2
            return {"logits": ("uint8", (batch, width), ("row", "slot", "class")),
                    "logits_scale": ("float16", (batch,), ("row", "slot"))}
        return {"logits": ("uint16" if d == "bfloat16" else d, (batch, classes),
                           ("row", "slot", "class"))}

    def row_bytes(self, batch: int, classes: int) -> int:
        """Logical bytes of one stored row's label arrays."""
        return sum(math.prod(shape) * np.dtype(dtype).itemsize
                   for dtype, shape, _ in self.schema(batch, classes).values())

    def attributes(self) -> dict[str, Any]:
        """The group attributes that name this encoding."""
        return {"logits_dtype": self.logits_dtype, "topk": self.topk,
                "topk_fill": self.topk_fill if self.is_topk else None,
                "fill_temperature": self.fill_temperature if self.topk_fill == "lme" else None,
                "values_dtype": "float16" if self.is_topk else None}

    @classmethod
    def from_attributes(cls, attrs: dict[str, Any]) -> Encoding:
        topk = attrs.get("topk")
        return cls(logits_dtype=attrs.get("logits_dtype", "float16"),
                   topk=int(topk) if topk is not None else None,
                   topk_fill=attrs.get("topk_fill") or "none",
                   fill_temperature=attrs.get("fill_temperature"))

    def describe(self) -> str:
        """Short human name: `float16`, `q4`, `top-5`, `top-5 min`, `top-5 lme@T20`."""
        if not self.is_topk:
            return self.logits_dtype
        if self.topk_fill == "lme":
            return f"top-{self.topk} lme@T{self.fill_temperature:g}"
        return f"top-{self.topk}" + ("" if self.topk_fill == "none" else f" {self.topk_fill}")

    def check_narrowing(self, target: Encoding) -> None:
        """Raise unless `target` needs nothing this encoding lacks (re-encoding only narrows)."""
        def refuse(why: str) -> ConfigError:
            return ConfigError(f"cannot re-encode {self.describe()} labels as "
                               f"{target.describe()}: {why}",
                               "re-encoding only narrows; relabel to get a wider encoding")
        if not target.is_topk:
            if self.is_topk:
                raise refuse("a top-k store has no full logits (widening)")
            if target.logits_dtype == self.logits_dtype:
                return
            if _BITS[target.logits_dtype] >= _BITS[self.logits_dtype]:
                raise refuse("that is not fewer bits per logit (widening)")
            return
        if not self.is_topk:
            return  # full -> top-k: every fill is computable from full logits
        if target.topk > self.topk:  # type: ignore[operator]
            raise refuse(f"K {target.topk} > {self.topk} (widening)")
        if target.topk_fill == "none":
            return
        if target.topk_fill != self.topk_fill:
            raise refuse(f"the source has no {target.topk_fill} fill")
        if (target.topk_fill == "lme"
                and not math.isclose(target.fill_temperature or 0, self.fill_temperature or 0)):
            raise refuse(f"its lme fill is defined at T={self.fill_temperature:g} only")


def identity_dict(config: dict[str, Any], unset: dict[str, Any]) -> dict[str, Any]:
    """`config` without the fields still at their `unset` value, so adding an option does
    not change the id of any artifact made without it."""
    return {k: v for k, v in config.items() if not (k in unset and v == unset[k])}


# ---------------------------------------------------------------- quantization
def _fp16_at_least(x: np.ndarray) -> np.ndarray:
    """x rounded to float16, upwards where rounding to nearest went below."""
    h = x.astype(np.float16)
    low = h.astype(np.float64) < x
    h[low] = np.nextafter(h[low], np.float16(np.inf))
    return h


def quantize(logits: torch.Tensor, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """q8/q4 codes [..., C] (uint8, unpacked) and the per-slot fp16 scale [...]."""
    levels = _LEVELS[dtype]
    x = logits.detach().double().cpu()
    top = x.max(-1).values
    spread = (top - x.min(-1).values).numpy()
    scale = _fp16_at_least(spread / levels)
    s = torch.from_numpy(scale.astype(np.float64)).unsqueeze(-1)
    codes = torch.where(s > 0, torch.round((top.unsqueeze(-1) - x) / s.clamp(min=1e-300)), 0)
    return codes.clamp(0, levels).to(torch.uint8).numpy(), scale


def dequantize(codes: np.ndarray, scale: np.ndarray) -> torch.Tensor:
    """x̂ = −q·s (the slot's maximum shifted to 0), float32."""
    return -(torch.from_numpy(codes.astype(np.float32))
             * torch.from_numpy(scale.astype(np.float32)).unsqueeze(-1))


def pack4(codes: np.ndarray) -> np.ndarray:
    """Two 4-bit codes per byte along the last axis (low nibble first; odd C padded)."""
    if codes.shape[-1] % 2:
        codes = np.concatenate([codes, np.zeros((*codes.shape[:-1], 1), np.uint8)], -1)
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)


def unpack4(packed: np.ndarray, classes: int) -> np.ndarray:
    out = np.empty((*packed.shape[:-1], packed.shape[-1] * 2), np.uint8)
    out[..., 0::2] = packed & 0x0F
    out[..., 1::2] = packed >> 4
    return out[..., :classes]


# ---------------------------------------------------------------- encode / decode
def encode(logits: torch.Tensor, enc: Encoding) -> dict[str, np.ndarray]:
    """Teacher logits [..., C] (any float tensor) to the stored arrays of `enc`."""
    logits = logits.detach()
    if enc.is_topk:
        x = logits.float().cpu()
        classes = x.shape[-1]
        k = int(enc.topk)  # type: ignore[arg-type]
        top = torch.topk(x, k, dim=-1)  # sorted descending
        out = {"topk_values": top.values.to(torch.float16).numpy(),
               "topk_index": top.indices.numpy().astype(index_dtype(classes))}
        if enc.topk_fill == "min":
            out["topk_fill"] = x.min(-1).values.to(torch.float16).numpy()
        elif enc.topk_fill == "lme":
            t = float(enc.fill_temperature)  # type: ignore[arg-type]
            tail = x.double().scatter(-1, top.indices, -math.inf) / t
            fill = t * (torch.logsumexp(tail, -1) - math.log(classes - k))
            out["topk_fill"] = fill.to(torch.float16).numpy()
        return out
    d = enc.logits_dtype
    if d in _LEVELS:
        codes, scale = quantize(logits, d)
        return {"logits": pack4(codes) if d == "q4" else codes, "logits_scale": scale}
    if d == "bfloat16":
        bits = logits.to(torch.bfloat16).cpu().view(torch.int16).numpy().view(np.uint16)
        return {"logits": bits}
    return {"logits": logits.to(getattr(torch, d)).cpu().numpy()}


def decode_full(arrays: dict[str, np.ndarray], enc: Encoding, classes: int) -> torch.Tensor:
    """A full-logits encoding back to float32 logits [..., C] (q8/q4: shifted, max at 0)."""
    if enc.is_topk:
        raise ValueError("a top-k encoding has no full logits")
    stored = np.ascontiguousarray(arrays["logits"])
    d = enc.logits_dtype
    if d in _LEVELS:
        codes = unpack4(stored, classes) if d == "q4" else stored
        return dequantize(codes, np.asarray(arrays["logits_scale"]))
    if d == "bfloat16":
        return torch.from_numpy(stored.view(np.int16)).view(torch.bfloat16).float()
    return torch.from_numpy(stored).float()


@dataclass
class SoftTarget:
    """A batch's teacher signal as training reads it: full logits, or the top-k triple."""

    logits: torch.Tensor | None = None  # [B, C]
    values: torch.Tensor | None = None  # [B, K] float32, descending
    index: torch.Tensor | None = None  # [B, K] int64
    fill: torch.Tensor | None = None  # [B] float32 (min / lme), None for "none"

    def __getitem__(self, rows: slice) -> SoftTarget:
        def cut(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[rows]
        return SoftTarget(cut(self.logits), cut(self.values), cut(self.index), cut(self.fill))

    def to(self, device: torch.device, non_blocking: bool = False) -> SoftTarget:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)
        return SoftTarget(move(self.logits), move(self.values), move(self.index),
                          move(self.fill))

    def pin_memory(self) -> SoftTarget:
        def pin(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.pin_memory()
        return SoftTarget(pin(self.logits), pin(self.values), pin(self.index), pin(self.fill))

    def dense(self, classes: int) -> torch.Tensor:
        """Full logits [B, C]: stored, or top-k values over the fill (−inf for "none")."""
        if self.logits is not None:
            return self.logits
        assert self.values is not None and self.index is not None
        base = (self.fill.unsqueeze(-1) if self.fill is not None
                else torch.tensor(-math.inf, device=self.values.device))
        out = base.expand(*self.values.shape[:-1], classes).clone()
        return out.scatter(-1, self.index, self.values)


def decode_target(arrays: dict[str, np.ndarray], enc: Encoding, classes: int) -> SoftTarget:
    """Stored label arrays (one row [B, …] or a block) to the training target."""
    if not enc.is_topk:
        return SoftTarget(logits=decode_full(arrays, enc, classes))
    fill = arrays.get("topk_fill")
    return SoftTarget(
        values=torch.from_numpy(np.asarray(arrays["topk_values"], np.float32)),
        index=torch.from_numpy(np.asarray(arrays["topk_index"]).astype(np.int64)),
        fill=None if fill is None else torch.from_numpy(np.asarray(fill, np.float32)))


def dense_logits(arrays: dict[str, np.ndarray], enc: Encoding, classes: int) -> torch.Tensor:
    """Float32 logits [..., C] of any encoding (what prune's metrics score)."""
    return decode_target(arrays, enc, classes).dense(classes)


def reencode(arrays: dict[str, np.ndarray], source: Encoding, target: Encoding,
             classes: int) -> dict[str, np.ndarray]:
    """Narrow stored arrays from `source` to `target` (ConfigError when that would widen)."""
    source.check_narrowing(target)
    if target == source:
        return dict(arrays)
    if not source.is_topk:
        return encode(decode_full(arrays, source, classes), target)
    k = int(target.topk)  # type: ignore[arg-type]
    out = {"topk_values": np.ascontiguousarray(arrays["topk_values"][..., :k]),
           "topk_index": np.ascontiguousarray(arrays["topk_index"][..., :k])}
    if target.topk_fill == "min":
        out["topk_fill"] = arrays["topk_fill"]
    elif target.topk_fill == "lme":
        # The tail at T_f gains the dropped kept logits: exact in real arithmetic.
        t = float(source.fill_temperature)  # type: ignore[arg-type]
        n_old = classes - int(source.topk)  # type: ignore[arg-type]
        fill = torch.from_numpy(np.asarray(arrays["topk_fill"], np.float64)) / t
        dropped = torch.from_numpy(np.asarray(arrays["topk_values"][..., k:], np.float64)) / t
        mass = torch.logsumexp(torch.cat([fill.unsqueeze(-1) + math.log(n_old), dropped], -1),
                               -1)
        out["topk_fill"] = (t * (mass - math.log(classes - k))).to(torch.float16).numpy()
    return out


def tail_mass(logits: torch.Tensor, k: int, temperature: float) -> torch.Tensor:
    """Per slot, 1 − Σ top-k softmax(z/T): the probability mass a top-k encoding drops."""
    p = torch.softmax(logits.double() / temperature, -1)
    return (1 - torch.topk(p, k, dim=-1).values.sum(-1)).clamp(min=0)
