"""Image sets for the x-ray application: reading, validation, snapshot ids, profiles, arrays.

An image set is a table of files (relative path, label, subtype, sha256, size) under a root.
The table, not the folder, is what copml reasons about: the content hash over it is the
snapshot id, the profile of it is the drift reference, and validation reports every bad file
at once so a team fixes a delivery in one round instead of one error per run.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from copml import display
from copml.errors import DataValidationError, NotFoundError

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
MANIFEST = "manifest.csv"
COLUMNS = ["path", "label", "subtype", "sha256", "width", "height"]
HIST_BINS = 32
PSI_EPSILON = 1e-4
# Decoding is done by PIL's C code with the GIL released, so two threads use both cores;
# more threads only add contention on the 2-core machines this runs on.
WORKERS = 2

_SUBTYPE = re.compile(r"_(bacteria|virus)_", re.IGNORECASE)
_JPEG_SUFFIXES = (".jpeg", ".jpg")
_JPEG_EOI = b"\xff\xd9"

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class ImageSet:
    """Files of an image data set, one row each, with paths relative to ``root``.

    Relative paths keep the content hash independent of where the set lies, so a copy of
    the same files on another machine has the same snapshot id.
    """

    frame: pd.DataFrame
    root: Path

    def __len__(self) -> int:
        return len(self.frame)

    def files(self) -> list[Path]:
        """Absolute paths, in the frame's order (sorted by relative path)."""
        return [self.root / p for p in self.frame["path"]]


def _map(fn: Callable[[T], R], items: Iterable[T], description: str | None = None) -> list[R]:
    """Run ``fn`` over ``items`` on a small thread pool, keeping the order; one item inline
    (scoring loads one image per call, and a pool would cost more than the image). With a
    ``description``, a terminal shows images per second and the time left."""
    listed = list(items)
    if len(listed) <= 1:
        return [fn(item) for item in listed]
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        done = pool.map(fn, listed)
        if description is not None:
            done = display.counted(done, description, len(listed), "images", lambda _: 1)
        return list(done)


def subtype_from_name(name: str) -> str | None:
    """``person1_bacteria_2.jpeg`` → ``"bacteria"``; names without a subtype give None."""
    match = _SUBTYPE.search(name)
    return match.group(1).lower() if match else None


def _file_facts(path: Path) -> tuple[str | None, int | None, int | None]:
    """sha256 and header size of one file; None where it is missing or not an image.

    Only the header is read here (cheap); decoding is left to ``validate`` so reading a
    folder stays fast and a bad file is reported rather than raised.
    """
    try:
        data = path.read_bytes()
    except OSError:
        return None, None, None
    digest = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(path) as im:
            width, height = im.size
    except (OSError, UnidentifiedImageError, ValueError):
        return digest, None, None
    return digest, width, height


def _build(root: Path, rows: list[tuple[str, str, str | None]]) -> ImageSet:
    rows = sorted(rows)
    facts = _map(lambda r: _file_facts(root / r[0]), rows)
    frame = pd.DataFrame(
        {
            "path": [r[0] for r in rows],
            "label": [r[1] for r in rows],
            "subtype": pd.Series([r[2] for r in rows], dtype=object),
            "sha256": pd.Series([f[0] for f in facts], dtype=object),
            "width": pd.array([f[1] for f in facts], dtype="Int64"),
            "height": pd.array([f[2] for f in facts], dtype="Int64"),
        },
        columns=COLUMNS,
    )
    return ImageSet(frame=frame, root=root)


def _clean(value: Any) -> str | None:
    """A manifest cell as a string, with empty cells as None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def _read_manifest(root: Path, manifest: Path) -> ImageSet:
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    missing = [c for c in ("path", "label") if c not in table.columns]
    if missing:
        raise DataValidationError(
            f"{manifest} lacks required column(s): {', '.join(missing)}",
            [f"columns present: {', '.join(table.columns)}"],
        )
    problems = []
    rows: list[tuple[str, str, str | None]] = []
    for line, rec in enumerate(table.to_dict("records"), start=2):
        path, label = _clean(rec["path"]), _clean(rec["label"])
        if path is None or label is None:
            problems.append(f"{manifest.name} line {line}: empty path or label")
            continue
        subtype = _clean(rec.get("subtype")) if "subtype" in table.columns else None
        rows.append((Path(path).as_posix(), label, subtype))
    if problems:
        raise DataValidationError(f"{manifest} has rows without a path or label", problems)
    images = _build(root, rows)
    paths = table["path"].map(lambda p: Path(p).as_posix())
    for extra in ("group", "split"):  # who the image belongs to; which part it is in
        if extra in table.columns:
            by_path = {p: _clean(v) for p, v in zip(paths, table[extra], strict=True)}
            images.frame[extra] = images.frame["path"].map(by_path)
    return images


def read_folder(root: Path) -> ImageSet:
    """Read an image set from ``root/manifest.csv`` or, without one, from class folders.

    A manifest wins because it can say what folders cannot (subtypes, a chosen subset);
    without it, ``root/<LABEL>/*.{jpeg,jpg,png}`` gives the labels and the file names give
    the subtypes (``personN_bacteria_M.jpeg``). Rows are sorted by path so every reader sees
    the same order.
    """
    root = Path(root)
    if not root.is_dir():
        raise NotFoundError(f"image folder {root} does not exist")
    manifest = root / MANIFEST
    if manifest.is_file():
        return _read_manifest(root, manifest)
    rows: list[tuple[str, str, str | None]] = []
    for label_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if label_dir.name.startswith("."):
            continue
        for file in sorted(label_dir.iterdir()):
            if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES:
                rel = file.relative_to(root).as_posix()
                rows.append((rel, label_dir.name, subtype_from_name(file.name)))
    if not rows:
        raise DataValidationError(
            f"no images under {root}",
            [f"expected {root}/<LABEL>/*.jpeg (or .jpg, .png) or {root}/{MANIFEST}"],
        )
    return _build(root, rows)


def listing(root: Path) -> ImageSet:
    """Every image file under ``root`` (any depth), labelled by its folder when it has one:
    what ``copml score FOLDER`` scores, labelled or not."""
    root = Path(root)
    if not root.is_dir():
        raise NotFoundError(f"image folder {root} does not exist")
    rows: list[tuple[str, str, str | None]] = []
    for file in sorted(root.rglob("*")):
        if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES:
            rel = file.relative_to(root)
            label = rel.parent.name if rel.parent != Path(".") else ""
            rows.append((rel.as_posix(), label, subtype_from_name(file.name)))
    if not rows:
        raise DataValidationError(f"no images (.jpeg, .jpg, .png) under {root}")
    return _build(root, rows)


def _decode_problem(path: Path) -> str | None:
    """Why ``path`` cannot be used as an image, or None when it decodes completely.

    ``Image.open`` only reads the header; ``load()`` decodes every pixel, which is what
    catches a truncated JPEG. The end-of-image marker check also catches truncation when
    some other code has set PIL's ``LOAD_TRUNCATED_IMAGES``.
    """
    try:
        with Image.open(path) as im:
            im.load()
    except FileNotFoundError:
        return "file is missing"
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        return f"cannot be decoded ({exc})"
    if path.suffix.lower() in _JPEG_SUFFIXES:
        with path.open("rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - 64))
            tail = fh.read()
        if not tail.rstrip(b"\x00\r\n ").endswith(_JPEG_EOI):
            return "is truncated (no JPEG end-of-image marker)"
    return None


def decode(content: bytes, size: int) -> tuple[np.ndarray, int, int]:
    """An uploaded image as the networks' input (grey, ``size``², 0-1) with its width and
    height; ``DataValidationError`` saying why when it is not a complete image."""
    found = read_upload(content, size)
    return found.grey, found.width, found.height


@dataclass(frozen=True)
class Upload:
    """An uploaded image as the networks see it, with what its header and colours say."""

    grey: np.ndarray
    width: int
    height: int
    mode: str  # PIL's: "L", "RGB", "RGBA", "P", "CMYK", …
    colour: float  # mean spread between the colour channels (0-1): 0 for a grey picture


def read_upload(content: bytes, size: int, max_pixels: int | None = None) -> Upload:
    """:func:`decode`, plus the image's mode and colourfulness. An image of more than
    ``max_pixels`` (read from its header, before any pixel is decoded) is decoded at a
    reduced scale where the format allows (JPEG: an eighth), so that a 12,000 × 12,000
    picture costs milliseconds, not a second and hundreds of MB."""
    import io

    try:
        with Image.open(io.BytesIO(content)) as im:
            width, height = im.size
            mode, jpeg = im.mode, im.format == "JPEG"
            if max_pixels is not None and width * height > max_pixels:
                im.draft(im.mode, (size * 2, size * 2))
            im.load()
            grey = grey_array(im, size)
            colour = colourfulness(im)
    except UnidentifiedImageError:
        raise DataValidationError("not an image file (expected JPEG or PNG)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataValidationError(f"not a readable image ({exc})") from None
    if jpeg and not content[-64:].rstrip(b"\x00\r\n ").endswith(_JPEG_EOI):
        raise DataValidationError("a truncated JPEG (no end-of-image marker)")
    return Upload(grey, width, height, mode, colour)


def colourfulness(im: Image.Image, side: int = 32) -> float:
    """The mean spread between an image's colour channels on a small copy (0-1): an x-ray
    stored as RGB has R = G = B (a few levels apart after JPEG), a photograph does not."""
    if im.mode in ("L", "LA", "1", "I", "I;16", "F"):
        return 0.0
    small = np.asarray(im.convert("RGB").resize((side, side)), dtype=np.float32)
    return float((small.max(axis=2) - small.min(axis=2)).mean() / 255.0)


def grey_array(im: Image.Image, size: int) -> np.ndarray:
    """The one transform from a picture to the networks' input, at training and scoring."""
    grey = im.convert("L").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(grey, dtype=np.float32) / 255.0


def validate(
    images: ImageSet,
    *,
    size: tuple[int, int] | None = None,
    labels: list[str] | None = None,
    allow_duplicates: bool = False,
) -> ImageSet:
    """Check every file and raise one ``DataValidationError`` listing all problems.

    Checks: each file decodes completely; its (width, height) is ``size`` when given; its
    label is one of ``labels`` when given; no two paths hold the same bytes (a duplicate
    leaks between train and test splits and over-weights an image). ``allow_duplicates``
    exists because real sets have some (the x-ray set has 17 pairs in ``train``); a
    duplicate with two different labels is always reported. Returns ``images`` unchanged.
    """
    frame = images.frame
    paths = list(frame["path"])
    decode = _map(_decode_problem, images.files(), "checking images")
    problems: list[str] = []
    for i, path in enumerate(paths):
        if decode[i] is not None:
            problems.append(f"{path}: {decode[i]}")
            continue
        width, height = frame["width"].iat[i], frame["height"].iat[i]
        if size is not None and (width, height) != tuple(size):
            problems.append(f"{path}: size {width}x{height}, expected {size[0]}x{size[1]}")
    if labels is not None:
        allowed = set(labels)
        for path, label in zip(paths, frame["label"], strict=True):
            if label not in allowed:
                problems.append(f"{path}: unknown label {label!r} (allowed: {sorted(allowed)})")
    by_hash: dict[str, list[int]] = {}
    for i, digest in enumerate(frame["sha256"]):
        if isinstance(digest, str):
            by_hash.setdefault(digest, []).append(i)
    for rows in by_hash.values():
        if len(rows) < 2:
            continue
        names = ", ".join(paths[i] for i in rows)
        row_labels = {frame["label"].iat[i] for i in rows}
        if len(row_labels) > 1:
            problems.append(f"identical files with different labels {sorted(row_labels)}: {names}")
        elif not allow_duplicates:
            problems.append(f"duplicate files (same sha256): {names}")
    if problems:
        raise DataValidationError(
            f"{len(problems)} problem(s) in {len(frame)} images under {images.root}", problems
        )
    return images


def content_sha256(images: ImageSet) -> str:
    """The snapshot id: sha256 over sorted ``path, label, subtype, file sha256`` lines.

    It depends on the relative paths, labels and bytes only, so the same files and labels
    give the same id wherever they lie, and relabelling an image changes it.
    """
    frame = images.frame
    missing = [p for p, d in zip(frame["path"], frame["sha256"], strict=True) if d is None]
    if missing:
        raise DataValidationError("cannot hash an image set with missing files", missing)
    lines = sorted(
        "\t".join((path, label, subtype if isinstance(subtype, str) else "", digest))
        for path, label, subtype, digest in zip(
            frame["path"], frame["label"], frame["subtype"], frame["sha256"], strict=True
        )
    )
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def _grey_histogram(path: Path) -> np.ndarray:
    """256-bin grey-level histogram of one image (PIL counts in C, no pixel copy)."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L").histogram(), dtype=np.int64)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataValidationError(f"cannot profile {path}", [str(exc)]) from exc


def profile(images: ImageSet, sample: int = 500, seed: int = 0) -> dict[str, Any]:
    """A JSON-ready summary of the set: the reference that incoming images are compared to.

    Counts and sizes cover every row; the grey-level histogram (32 bins, proportions) and
    mean/std intensity (0–1 scale) come from a seeded sample so profiling a large set is
    cheap and the same set always gives the same profile.
    """
    frame = images.frame
    n = len(frame)
    rng = np.random.default_rng(seed)
    k = min(sample, n)
    chosen = np.sort(rng.choice(n, size=k, replace=False)) if k else np.array([], dtype=int)
    files = images.files()
    total = np.zeros(256, dtype=np.int64)
    for hist in _map(_grey_histogram, [files[i] for i in chosen]):
        total += hist
    pixels = int(total.sum())
    levels = np.arange(256, dtype=np.float64) / 255.0
    if pixels:
        mean = float((levels * total).sum() / pixels)
        std = float(math.sqrt(max(0.0, (levels**2 * total).sum() / pixels - mean**2)))
        proportions = (total.reshape(HIST_BINS, -1).sum(axis=1) / pixels).tolist()
    else:
        mean, std, proportions = 0.0, 0.0, [0.0] * HIST_BINS
    sizes = Counter(
        f"{w}x{h}" if not (pd.isna(w) or pd.isna(h)) else "unreadable"
        for w, h in zip(frame["width"], frame["height"], strict=True)
    )
    subtypes = Counter(s for s in frame["subtype"] if isinstance(s, str))
    return {
        "n_images": n,
        "labels": {str(k): int(v) for k, v in sorted(Counter(frame["label"]).items())},
        "subtypes": {k: int(v) for k, v in sorted(subtypes.items())},
        "sizes": {k: int(v) for k, v in sorted(sizes.items())},
        "histogram": {"bins": HIST_BINS, "range": [0, 255], "proportions": proportions},
        "intensity": {"mean": mean, "std": std},
        "sample": {"n": int(k), "seed": seed},
    }


def intensity_psi(reference: dict[str, Any], current: dict[str, Any]) -> float:
    """Population stability index between two profiles' intensity histograms.

    Each bin gets ``PSI_EPSILON`` added (then renormalised) so an empty bin in either
    profile gives a large but finite value instead of infinity. Rule of thumb: < 0.1 stable,
    0.1–0.25 moderate shift, > 0.25 a shift to act on.
    """
    ref = np.asarray(reference["histogram"]["proportions"], dtype=np.float64)
    cur = np.asarray(current["histogram"]["proportions"], dtype=np.float64)
    if ref.shape != cur.shape:
        raise ValueError(f"histograms differ in bins: {ref.size} vs {cur.size}")
    ref = (ref + PSI_EPSILON) / (ref.sum() + PSI_EPSILON * ref.size)
    cur = (cur + PSI_EPSILON) / (cur.sum() + PSI_EPSILON * cur.size)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def statistics(arrays: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each image's grey levels (0-1): the per-image figures
    monitored for drift, cheap enough to compute for every scored image."""
    flat = arrays.reshape(len(arrays), -1)
    return flat.mean(axis=1).astype(np.float64), flat.std(axis=1).astype(np.float64)


class _Decoded:
    """Images decoded and resized, by file and side, for the life of the process.

    A training decodes its images for model 1, its calibration, the holdout, the
    out-of-distribution profile and model 2; a retraining in the same process (the
    operations loop, the demo) decodes the same files again. Keyed by the file's path,
    size and modification time, so a changed file is decoded anew; bounded in bytes,
    the least recently used dropped first."""

    def __init__(self, limit_bytes: int = 256 << 20) -> None:
        self._limit = limit_bytes
        self._held = 0
        self._arrays: OrderedDict[tuple[str, int, int, int], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(path: Path, side: int) -> tuple[str, int, int, int]:
        stat = path.stat()
        return (str(path), side, stat.st_mtime_ns, stat.st_size)

    def get(self, key: tuple[str, int, int, int]) -> np.ndarray | None:
        with self._lock:
            found = self._arrays.get(key)
            if found is not None:
                self._arrays.move_to_end(key)
            return found

    def put(self, key: tuple[str, int, int, int], array: np.ndarray) -> None:
        with self._lock:
            if key in self._arrays:
                return
            self._arrays[key] = array
            self._held += array.nbytes
            while self._held > self._limit and self._arrays:
                _, dropped = self._arrays.popitem(last=False)
                self._held -= dropped.nbytes


_DECODED = _Decoded()


def load_arrays(images: ImageSet, size: int = 64) -> np.ndarray:
    """Grey float32 arrays in [0, 1], shape (n, size, size), in the frame's order.

    Each image is converted to grey ("L") and resized with PIL's bilinear filter, the same
    way at training and scoring time so a model sees the same pixels in both; decoded once
    per process (:class:`_Decoded`).
    """
    files = images.files()
    out = np.empty((len(files), size, size), dtype=np.float32)

    def load(i: int) -> None:
        try:
            key = _Decoded.key(files[i], size)
            if (found := _DECODED.get(key)) is not None:
                out[i] = found
                return
            with Image.open(files[i]) as im:
                out[i] = grey_array(im, size)
            _DECODED.put(key, out[i].copy())
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise DataValidationError(f"cannot load {files[i]}", [str(exc)]) from exc

    _map(load, range(len(files)), "decoding images")
    return out
