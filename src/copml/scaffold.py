"""``copml init``: a new project from one of the reference applications (``copml.apps``),
each with its spec and code in ``apps/<name>/example/`` and its starting dataset."""

from __future__ import annotations

import shutil
from importlib import import_module
from pathlib import Path

from copml.errors import CopmlError

APPS = Path(__file__).parent / "apps"
EXAMPLES = {p.name: p / "example" for p in sorted(APPS.iterdir()) if (p / "example").is_dir()}


def init(
    directory: Path, example: str = "churn", *, seed: int = 7, generate: bool = True
) -> list[Path]:
    """Copy the example's spec and code and generate its starting dataset (``generate``
    False: the caller brings its own data)."""
    source = EXAMPLES.get(example)
    if source is None:
        raise CopmlError(f"unknown example {example!r}; choose one of: {', '.join(EXAMPLES)}")
    if (directory / "copml.yaml").exists():
        raise CopmlError(f"{directory / 'copml.yaml'} already exists; refusing to overwrite it")
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for file in sorted(source.iterdir()):
        if file.is_file() and file.suffix in (".yaml", ".py", ".md"):
            shutil.copy(file, directory / file.name)
            written.append(directory / file.name)
    (directory / ".gitignore").write_text(".copml/\n__pycache__/\noutputs/\n")
    if generate:
        app = import_module(f"copml.apps.{example}")
        written.append(app.starting_data(directory, seed))
    return written
