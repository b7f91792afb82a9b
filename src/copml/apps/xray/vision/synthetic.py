"""Procedural chest x-ray-like images, so the x-ray application runs and tests without real data.

The images are drawn, not sampled from real x-rays: a bright body with a mediastinum and
spine, two dark lung fields, faint rib arcs, texture and noise, with position, scale and
exposure jitter. Pneumonia is an opacity inside the lungs: bacterial = a dense focal
(lobar) patch in one lung, viral = a diffuse bilateral patchy/interstitial haze. Opacity
strength and size vary and a few cases are deliberately ambiguous, so a simple model learns
the task well but not perfectly (about 95 % normal vs pneumonia, about 80 % bacteria vs
virus) and model comparisons and drift checks have something to show.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from copml.apps.xray.vision.images import ImageSet, read_folder
from copml.errors import CopmlError

DEFAULT_COUNTS = {"normal": 300, "bacteria": 300, "virus": 200}
_KIND_CODE = {"normal": 0, "bacteria": 1, "virus": 2}
_JPEG_QUALITY = 90
# Share of pneumonia images drawn as hard cases: an opacity too faint to see reliably, or
# (for the subtype) one that looks like the other kind. These cap the attainable accuracy.
_FAINT_SHARE = 0.03
_MIMIC_SHARE = 0.1
LUNG_OFFSET = 0.19  # lung centre distance from the midline, as a share of the width


class _Canvas:
    """Normalised pixel coordinates for one image size, shared by every image drawn."""

    def __init__(self, size: int) -> None:
        self.size = size
        axis = (np.arange(size, dtype=np.float32) + 0.5) / size
        self.y, self.x = np.meshgrid(axis, axis, indexing="ij")

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, soft: float = 0.08) -> np.ndarray:
        """1 inside the ellipse, 0 outside, with a smooth edge ``soft`` wide (relative)."""
        d = np.sqrt(((self.x - cx) / rx) ** 2 + ((self.y - cy) / ry) ** 2)
        return np.clip((1.0 + soft - d) / (2 * soft), 0.0, 1.0)

    def blob(self, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
        """A Gaussian bump with peak 1."""
        return np.exp(-(((self.x - cx) / rx) ** 2 + ((self.y - cy) / ry) ** 2))

    def smooth_noise(self, rng: np.random.Generator, grid: tuple[int, int]) -> np.ndarray:
        """Low-frequency noise in about [-1, 1]: a coarse random grid, bicubically enlarged.

        ``grid`` is (rows, cols); unequal values give streaky, interstitial-like texture.
        """
        coarse = rng.standard_normal(grid).astype(np.float32)
        img = Image.fromarray(coarse).resize((self.size, self.size), Image.Resampling.BICUBIC)
        return np.asarray(img, dtype=np.float32) * 0.6


def _draw(canvas: _Canvas, kind: str, rng: np.random.Generator) -> np.ndarray:
    """One image as floats in [0, 1] (1 = dense/white)."""
    s = rng.uniform(0.9, 1.08)
    cx = 0.5 + rng.normal(0, 0.025)
    cy = 0.5 + rng.normal(0, 0.025)
    img = np.full((canvas.size, canvas.size), 0.06, dtype=np.float32)

    body = canvas.ellipse(cx, cy + 0.1 * s, 0.5 * s, 0.62 * s, soft=0.06)
    img += 0.55 * body
    # Lungs: right lung (image left) is a little wider, the left one shorter (heart).
    lx_off = LUNG_OFFSET * s + rng.normal(0, 0.008)
    lungs = []
    shapes = ((0.15, 0.31, 0.0), (0.14, 0.29, -0.01))
    for side, (rx, ry, dy) in zip((-1, 1), shapes, strict=True):
        lung = canvas.ellipse(
            cx + side * lx_off,
            cy + dy * s + rng.normal(0, 0.01),
            rx * s * rng.uniform(0.93, 1.07),
            ry * s * rng.uniform(0.93, 1.07),
            soft=0.12,
        )
        lungs.append(lung)
    lung_mask = np.maximum(lungs[0], lungs[1])
    img -= 0.36 * lung_mask
    # Heart and spine brighten the middle, over the lung edges.
    img += 0.28 * canvas.blob(cx + 0.04 * s, cy + 0.15 * s, 0.1 * s, 0.13 * s)
    img += 0.18 * np.exp(-(((canvas.x - cx) / (0.035 * s)) ** 2)) * body
    # Ribs: faint arches over each lung, seen mostly against the dark lung fields.
    rib_space = 0.066 * s
    top = cy - 0.33 * s + rng.uniform(0, 0.02)
    curve = 2.2 + rng.normal(0, 0.2)
    lateral = np.abs(canvas.x - cx) - LUNG_OFFSET * s
    phase = (canvas.y - top - curve * lateral**2) / rib_space
    ribs = np.exp(-(((phase - np.round(phase)) / 0.12) ** 2)) * (phase > -0.5) * (phase < 9.5)
    img += 0.075 * ribs * (0.3 * body + 0.7 * lung_mask)
    # Vessels and tissue texture.
    img += 0.035 * canvas.smooth_noise(rng, (14, 14)) * lung_mask
    img += 0.03 * canvas.smooth_noise(rng, (5, 5))

    if kind != "normal":
        # Hard cases: bacterial pneumonia can be patchy and bilateral (bronchopneumonia) and
        # viral can be focal, so a share of each is drawn with the other kind's pattern.
        focal = (kind == "bacteria") != (rng.random() < _MIMIC_SHARE)
        if focal:
            img += _focal_opacity(canvas, rng, lungs, cx, cy, s)
        else:
            img += _diffuse_opacity(canvas, rng, lung_mask)

    # Exposure and contrast differ between machines and patients.
    contrast = rng.uniform(0.85, 1.15)
    img = (img - 0.35) * contrast + 0.35 + rng.normal(0, 0.035)
    img += rng.normal(0, 0.018, img.shape).astype(np.float32)
    return np.clip(img, 0.0, 1.0)


def _strength(rng: np.random.Generator, low: float, high: float) -> float:
    """An opacity strength; a share of cases are faint enough to be missed."""
    if rng.random() < _FAINT_SHARE:
        return float(rng.uniform(0.02, 0.06))
    return float(rng.uniform(low, high))


def _focal_opacity(
    canvas: _Canvas,
    rng: np.random.Generator,
    lungs: list[np.ndarray],
    cx: float,
    cy: float,
    s: float,
) -> np.ndarray:
    """Lobar pneumonia: one dense irregular patch in one lung."""
    side = int(rng.integers(0, 2))
    sign = -1 if side == 0 else 1
    px = cx + sign * LUNG_OFFSET * s + rng.uniform(-0.06, 0.06) * s
    py = cy + rng.uniform(-0.18, 0.2) * s
    r = rng.uniform(0.05, 0.12) * s
    strength = _strength(rng, 0.2, 0.45)
    edge = 1.0 + 0.35 * canvas.smooth_noise(rng, (9, 9))
    patch = canvas.blob(px, py, r * rng.uniform(0.8, 1.3), r * rng.uniform(0.8, 1.3))
    patch = np.clip(patch * edge * 1.4, 0.0, 1.0)
    return strength * patch * lungs[side]


def _diffuse_opacity(
    canvas: _Canvas,
    rng: np.random.Generator,
    lung_mask: np.ndarray,
) -> np.ndarray:
    """Viral pneumonia: patchy and interstitial haze over both lungs."""
    strength = _strength(rng, 0.12, 0.28)
    patchy = np.clip(canvas.smooth_noise(rng, (7, 7)) + 0.35, 0.0, None)
    streaks = np.abs(canvas.smooth_noise(rng, (28, 8)))
    haze = 0.55 * patchy + 0.45 * streaks + 0.25
    return strength * haze * lung_mask


def _file_names(counts: dict[str, int]) -> list[tuple[str, str, int]]:
    """(kind, relative path, index within kind), named like the real set's files."""
    names = []
    for i in range(counts["normal"]):
        names.append(("normal", f"NORMAL/IM-{i + 1:04d}-0001.jpeg", i))
    for i in range(counts["bacteria"]):
        names.append(("bacteria", f"PNEUMONIA/person{i + 1}_bacteria_{i + 1}.jpeg", i))
    offset = counts["bacteria"]
    for i in range(counts["virus"]):
        names.append(("virus", f"PNEUMONIA/person{offset + i + 1}_virus_{i + 1}.jpeg", i))
    return names


def generate(
    root: Path,
    n_per_class: dict[str, int] | None = None,
    *,
    size: int = 224,
    seed: int = 0,
) -> ImageSet:
    """Write a synthetic x-ray set to ``root/NORMAL`` and ``root/PNEUMONIA``; return it read back.

    ``n_per_class`` has keys ``normal``, ``bacteria`` and ``virus`` (missing keys take the
    defaults 300/300/200). Each image's random stream depends only on (seed, kind, index),
    so the same arguments give byte-identical files and growing one class leaves the
    existing images unchanged. Images are RGB JPEGs with grey content, like the real set.
    """
    counts = dict(DEFAULT_COUNTS)
    if n_per_class:
        unknown = sorted(set(n_per_class) - set(DEFAULT_COUNTS))
        if unknown:
            raise CopmlError(
                f"unknown class(es) {unknown} for synthetic x-rays",
                [f"use {sorted(DEFAULT_COUNTS)}"],
            )
        counts.update(n_per_class)
    if any(n < 0 for n in counts.values()):
        raise CopmlError("image counts must not be negative", [str(counts)])
    root = Path(root)
    for folder in ("NORMAL", "PNEUMONIA"):
        existing = root / folder
        if existing.is_dir() and any(existing.iterdir()):
            raise CopmlError(
                f"{existing} already holds files",
                ["generate into an empty folder so the set holds only generated images"],
            )
        existing.mkdir(parents=True, exist_ok=True)
    canvas = _Canvas(size)
    for kind, rel, index in _file_names(counts):
        rng = np.random.default_rng([seed, _KIND_CODE[kind], index])
        grey = (_draw(canvas, kind, rng) * 255.0 + 0.5).astype(np.uint8)
        Image.fromarray(grey).convert("RGB").save(root / rel, format="JPEG", quality=_JPEG_QUALITY)
    return read_folder(root)
