"""A user's ImageFolder at its own geometry: size, channels and recipe read from the data.

`inspect_folder` reads every image's header (not its pixels) under `train/` and `val/`:
one square size and one kind of pixel (grey or colour) give the geometry; a folder that
mixes sizes or modes is an error unless `--image-size` / `--channels` say what to convert
to (then every image is resized to N×N / converted at load time). The recipe — every
stage's hyper-parameters — comes from the preset whose geometry is closest
(`recipe_for`), or from any preset by name (`--preset`).

Identity: the folder's content hash (`sha256`) names the data in the teacher's config,
so two different folders never share an artifact id.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from lpld_cli.errors import ConfigError, DataFormatError, DataNotFoundError

# torchvision's ImageFolder extensions (IMG_EXTENSIONS), lower case.
EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})
CHANNELS = (1, 3)


@dataclass(frozen=True)
class FolderInfo:
    """What `inspect_folder` read: geometry (after overrides), counts, and a content hash."""

    root: Path
    image_size: int
    channels: int
    classes: list[str]
    train_images: int
    val_images: int
    sizes: dict[str, int]  # "WxH" -> count, as found on disk
    modes: dict[str, int]  # PIL mode -> count, as found on disk
    sha256: str

    @property
    def resized(self) -> bool:
        return self.sizes != {f"{self.image_size}x{self.image_size}": self.train_images
                              + self.val_images}


def recipe_for(image_size: int) -> str:
    """The preset whose recipe suits this geometry (paper Appendix C / the CPU preset)."""
    if image_size <= 32:
        return "fashion-mnist"  # the BN ConvNet recipe, measured on 28-px images
    if image_size <= 64:
        return "tiny-imagenet"
    return "imagenet-1k"


def image_files(root: Path, split: str) -> list[tuple[str, Path]]:
    """(class name, path) of every image under root/split/<class>/, sorted like ImageFolder."""
    base = root / split
    out = []
    for class_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        out += [(class_dir.name, p) for p in sorted(class_dir.rglob("*"))
                if p.is_file() and p.suffix.lower() in EXTENSIONS]
    return out


def inspect_folder(root: str | Path, image_size: int | None = None,
                   channels: int | None = None) -> FolderInfo:
    """Geometry and content hash of an ImageFolder with train/ and val/ class folders."""
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DataNotFoundError(f"{root / split} does not exist",
                                    "imagefolder needs train/ and val/ class folders under --data")
    if image_size is not None and image_size < 8:
        raise ConfigError(f"--image-size must be at least 8 (got {image_size})")
    if channels is not None and channels not in CHANNELS:
        raise ConfigError(f"--channels must be 1 or 3 (got {channels})")
    train, val = image_files(root, "train"), image_files(root, "val")
    classes = sorted({c for c, _ in train})
    if not train:
        raise DataNotFoundError(f"no images under {root / 'train'}",
                                f"expected train/<class>/<image> with one of {EXTENSIONS}")
    if {c for c, _ in val} - set(classes):
        raise DataFormatError(f"{root}: val/ has classes that train/ lacks")
    sizes: Counter[str] = Counter()
    modes: Counter[str] = Counter()
    example: dict[str, Path] = {}
    digest = hashlib.sha256()
    for _, path in train + val:
        try:
            with Image.open(path) as img:
                size, mode = f"{img.width}x{img.height}", img.mode
        except (OSError, UnidentifiedImageError):
            raise DataFormatError(f"{path} is not a readable image",
                                  "remove it or replace it") from None
        sizes[size] += 1
        modes[mode] += 1
        example.setdefault(size, path)
        example.setdefault(mode, path)
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    if image_size is None:
        image_size = _one_size(root, sizes, example)
    if channels is None:
        channels = _one_kind(root, modes, example)
    return FolderInfo(root, image_size, channels, classes, len(train), len(val), dict(sizes),
                      dict(modes), digest.hexdigest())


def _one_size(root: Path, sizes: Counter[str], example: dict[str, Path]) -> int:
    if len(sizes) > 1:
        found = ", ".join(f"{s}: {n}" for s, n in sizes.most_common(4))
        odd = example[sizes.most_common()[-1][0]].relative_to(root)
        raise DataFormatError(f"images in {root} differ in size ({found}; e.g. {odd})",
                              "pass --image-size N to resize every image to N×N")
    (size,) = sizes
    w, h = (int(x) for x in size.split("x"))
    if w != h:
        raise DataFormatError(f"images in {root} are {w}x{h}, not square",
                              "pass --image-size N to resize every image to N×N")
    return w


def _one_kind(root: Path, modes: Counter[str], example: dict[str, Path]) -> int:
    kinds = {1 if m in GREY_MODES else 3 for m in modes}
    if len(kinds) > 1:
        found = ", ".join(f"{m}: {n}" for m, n in modes.most_common())
        odd = example[modes.most_common()[-1][0]].relative_to(root)
        raise DataFormatError(f"images in {root} mix grey and colour ({found}; e.g. {odd})",
                              "pass --channels 1 or --channels 3 to convert every image")
    return kinds.pop()


def describe(info: FolderInfo, recipe: str, borrowed: bool) -> str:
    """One line for stderr: what was found and which recipe runs."""
    kind = "grey" if info.channels == 1 else "RGB"
    found = ", ".join(f"{s}" for s in info.sizes)
    resize = f" (resized from {found})" if info.resized else ""
    how = "--preset" if borrowed else "chosen by image size"
    return (f"imagefolder {info.root}: {info.train_images} train / {info.val_images} val images, "
            f"{len(info.classes)} classes, {info.image_size}x{info.image_size} {kind}{resize}; "
            f"recipe {recipe} ({how})")
