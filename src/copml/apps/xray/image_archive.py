"""Content-addressed image files under ``COPML_HOME/images``: what snapshots and kept
predictions point at.

A snapshot of an image folder must stay what it was when the folder is edited, and an
audited x-ray must be the very image that was scored; a file named by the sha256 of its
bytes is both, and byte-identical images are stored once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from copml.errors import DataValidationError
from copml.snapshots import file_sha256

ARCHIVE = "images"


def directory(home: Path) -> Path:
    return home / ARCHIVE


def path_of(root: Path, sha256: str) -> Path:
    """Where the image with this hash lies in the archive (whether or not it is there)."""
    return root / sha256[:2] / sha256


def _place(root: Path, sha256: str, write: object) -> Path:
    """Write a new file beside its final name and rename it there: atomic, so a crash
    never leaves a half-written image under a hash."""
    target = path_of(root, sha256)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{sha256}.{os.getpid()}.tmp")
    write(tmp)  # type: ignore[operator]
    os.replace(tmp, target)
    return target


def put_file(root: Path, source: Path, sha256: str) -> Path:
    """Archive ``source`` whose sha256 the caller already knows."""
    return _place(root, sha256, lambda tmp: shutil.copyfile(source, tmp))


def put_bytes(root: Path, content: bytes) -> tuple[str, Path]:
    sha256 = hashlib.sha256(content).hexdigest()
    return sha256, _place(root, sha256, lambda tmp: tmp.write_bytes(content))


def get(root: Path, sha256: str) -> Path:
    """The archived file, verified: an altered image is refused, never silently used."""
    path = path_of(root, sha256)
    if not path.exists():
        raise DataValidationError(f"image {sha256[:12]}… is not in the archive {root}")
    if file_sha256(path) != sha256:
        raise DataValidationError(f"archived image {sha256[:12]}… was altered; refusing it")
    return path
