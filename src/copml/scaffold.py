"""``copml init``: a new project from one of the reference applications."""

from __future__ import annotations

import shutil
from pathlib import Path

from copml.errors import CopmlError

EXAMPLES = Path(__file__).parent / "examples"
HISTORY_ROWS = 6000
# Generated x-rays: enough for both networks to learn, few enough to train in a minute.
XRAY_IMAGES = {"normal": 240, "bacteria": 200, "virus": 160}
XRAY_SIZE = 128


def init(
    directory: Path, example: str = "churn", *, seed: int = 7, generate: bool = True
) -> list[Path]:
    """Copy the example's spec and code and generate its starting dataset (``generate``
    False: the caller brings its own data)."""
    source = EXAMPLES / example
    if not source.is_dir():
        choices = ", ".join(sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir()))
        raise CopmlError(f"unknown example {example!r}; choose one of: {choices}")
    if (directory / "copml.yaml").exists():
        raise CopmlError(f"{directory / 'copml.yaml'} already exists; refusing to overwrite it")
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for file in sorted(source.iterdir()):
        if file.is_file() and file.suffix in (".yaml", ".py", ".md"):
            shutil.copy(file, directory / file.name)
            written.append(directory / file.name)
    (directory / ".gitignore").write_text(".copml/\n__pycache__/\noutputs/\n")
    if example == "churn" and generate:
        from copml.simulation import Population, as_source_csv

        data = directory / "data" / "customers.csv"
        data.parent.mkdir(exist_ok=True)
        as_source_csv(Population(seed=seed).history(HISTORY_ROWS)).to_csv(data, index=False)
        written.append(data)
    if example == "xray" and generate:
        from copml.vision.synthetic import generate

        images = directory / "data" / "images"
        generate(images, XRAY_IMAGES, size=XRAY_SIZE, seed=seed)
        written.append(images)
    return written
