"""What the training x-rays looked like, and how unlike them a new image is.

Cheap checks first (from the header and a small copy: mode and channels, size and aspect,
grey-level mean and spread), then a distance in model 1's own embedding (its globally
pooled features): the Mahalanobis distance to the training images under a shrunk
(Ledoit-Wolf) covariance, thresholded at the quantile of the holdout's distances that gives
the declared false-alarm rate. An image that fails any check is out of distribution.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from copml.apps.xray.vision import models
from copml.apps.xray.vision.images import colourfulness

# Checks with a range learnt from training data widen it by this share of its span: they
# catch what is far off (a flat grey, a 12,000-pixel side), the embedding the rest.
_PAD = 0.25
_MAX_FIT = 2000  # training images the covariance is fitted on (seeded sample)
_STATISTICS_ROWS = 128  # images per call when embedding for the profile (a statistic)
_MODE_SAMPLE = 300  # training files whose mode and colours are read
_GREY_MODES = ("L", "RGB")  # an x-ray stored either way, whatever the training set used


def _span(values: pd.Series | np.ndarray, pad: float = _PAD) -> list[float]:
    values = np.asarray(values, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    return [low - pad * (high - low), high + pad * (high - low)]


def _distances(embedded: np.ndarray, centre: np.ndarray, precision: np.ndarray) -> np.ndarray:
    d = embedded - centre
    return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, precision, d), 0.0))


def profile(
    detector: Any,
    arrays_of: Any,
    fit: pd.DataFrame,
    holdout: pd.DataFrame,
    *,
    false_alarm_rate: float,
    seed: int,
) -> dict[str, Any]:
    """The profile of the training images ``fit`` (with ``file``, ``width``, ``height``,
    ``intensity_mean``, ``intensity_std``); the embedding's threshold from ``holdout``.
    ``arrays_of(files)`` turns files into the networks' input."""
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(seed)
    both = pd.concat([fit, holdout], ignore_index=True)
    sample = both["file"].iloc[rng.permutation(len(both))[:_MODE_SAMPLE]]
    modes, colours = set(), []
    for file in sample:
        with Image.open(file) as im:
            modes.add(im.mode)
            colours.append(colourfulness(im))
    chosen = fit["file"].iloc[np.sort(rng.permutation(len(fit))[:_MAX_FIT])]
    embedded = models.embed(detector, arrays_of(list(chosen)), rows=_STATISTICS_ROWS)
    shrunk = LedoitWolf().fit(embedded)
    centre, precision = shrunk.location_, shrunk.precision_
    held = _distances(
        models.embed(detector, arrays_of(list(holdout["file"])), rows=_STATISTICS_ROWS),
        centre,
        precision,
    )
    aspect = both["width"] / both["height"]
    return {
        "modes": sorted(modes),
        "colour_max": max(colours) + 0.03,  # JPEG's chroma noise on a grey picture
        "width": _span(both["width"]),
        "height": _span(both["height"]),
        "aspect": _span(aspect),
        "intensity_mean": _span(both["intensity_mean"]),
        "intensity_std": _span(both["intensity_std"]),
        "embedding": {
            "centre": centre.tolist(),
            "precision": precision.tolist(),
            "threshold": float(np.quantile(held, 1 - false_alarm_rate)),
            "false_alarm_rate": false_alarm_rate,
            "holdout_images": len(held),
        },
    }


def prepared(profile: dict[str, Any] | None) -> dict[str, Any] | None:
    """``profile`` as read from JSON, its embedding's centre and precision as arrays once
    (a 192 x 192 list of lists converted per request would cost milliseconds)."""
    if profile is None:
        return None
    space = profile["embedding"]
    arrays = {k: np.asarray(space[k], dtype=np.float64) for k in ("centre", "precision")}
    return {**profile, "embedding": {**space, **arrays}}


def max_pixels(profile: dict[str, Any]) -> int:
    """Above this many pixels an image is far too large to be like the training set:
    it is decoded at a reduced scale only."""
    return int(profile["width"][1] * profile["height"][1]) + 1


def unlike(
    profile: dict[str, Any], columns: dict[str, list[Any]], detector: Any
) -> list[tuple[str, ...]]:
    """Per image (``columns`` as the server holds them: ``array`` and, where known,
    ``mode``, ``colour``, ``width``, ``height``, ``intensity_mean``, ``intensity_std``),
    the checks it fails."""
    arrays = np.stack(columns["array"])
    failed: list[list[str]] = [[] for _ in range(len(arrays))]
    for i, mode in enumerate(columns.get("mode", [])):
        if mode not in profile["modes"] and mode not in _GREY_MODES:
            failed[i].append(f"mode {mode} (trained on {', '.join(profile['modes'])})")
    for i, colour in enumerate(columns.get("colour", [])):
        if colour > profile["colour_max"]:
            failed[i].append(f"a colour image (channel spread {colour:.3f})")
    widths, heights = columns.get("width", []), columns.get("height", [])
    for i, (w, h) in enumerate(zip(widths, heights, strict=True)):
        if not _inside(w, profile["width"]) or not _inside(h, profile["height"]):
            failed[i].append(f"size {w} x {h}")
        elif not _inside(w / h, profile["aspect"]):
            failed[i].append(f"aspect {w / h:.2f}")
    for name in ("intensity_mean", "intensity_std"):
        for i, value in enumerate(columns.get(name, [])):
            if not _inside(value, profile[name]):
                failed[i].append(f"{name.replace('_', ' ')} {value:.3f}")
    space = profile["embedding"]
    distance = _distances(
        models.embed(detector, arrays), np.asarray(space["centre"]), np.asarray(space["precision"])
    )
    for i in np.flatnonzero(distance > space["threshold"]):
        failed[i].append(f"embedding distance {distance[i]:.1f} > {space['threshold']:.1f}")
    return [tuple(f) for f in failed]


def _inside(value: float, span: list[float]) -> bool:
    return span[0] <= value <= span[1]
