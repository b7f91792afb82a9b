"""The x-ray application: a pneumonia detector and a bacteria/virus model served as one
cascade (the ``cascade`` model kind), the images it reads, generated x-rays and its demo."""

from __future__ import annotations

from pathlib import Path

# Generated x-rays: enough for both networks to learn, few enough to train in a minute.
IMAGES = {"normal": 240, "bacteria": 200, "virus": 160}
SIZE = 128


def starting_data(directory: Path, seed: int) -> Path:
    """``copml init --example xray``'s dataset: generated chest-like x-rays."""
    from copml.apps.xray.vision.synthetic import generate

    images = directory / "data" / "images"
    generate(images, IMAGES, size=SIZE, seed=seed)
    return images
