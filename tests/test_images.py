"""Image sets for the x-ray application: synthetic generation, reading, validation, hashing,
profiles and drift, on generated images and (when present) the real chest x-ray set."""

from __future__ import annotations

import csv
import hashlib
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from conftest import shared_file
from copml.apps.xray.vision import images as img
from copml.apps.xray.vision.synthetic import generate
from copml.errors import CopmlError, DataValidationError

SMALL = {"normal": 12, "bacteria": 10, "virus": 8}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> img.ImageSet:
    """A small generated set; copy it before changing files."""
    return generate(tmp_path_factory.mktemp("xray") / "set", SMALL, seed=0)


def _copy(images: img.ImageSet, dest: Path) -> Path:
    shutil.copytree(images.root, dest)
    return dest


def test_generated_set_reads_back_with_labels_and_subtypes(small_set: img.ImageSet) -> None:
    again = img.read_folder(small_set.root)
    frame = again.frame
    assert list(frame.columns) == ["path", "label", "subtype", "sha256", "width", "height"]
    assert list(frame["path"]) == sorted(frame["path"])
    assert Counter(frame["label"]) == {"NORMAL": 12, "PNEUMONIA": 18}
    assert Counter(frame["subtype"].fillna("none")) == {"none": 12, "bacteria": 10, "virus": 8}
    assert frame.loc[frame["label"] == "NORMAL", "subtype"].isna().all()
    assert set(frame["width"]) == {224} and set(frame["height"]) == {224}
    assert any(p.startswith("PNEUMONIA/person") and "_virus_" in p for p in frame["path"])
    assert img.validate(again, size=(224, 224), labels=["NORMAL", "PNEUMONIA"]) is again
    with Image.open(again.files()[0]) as im:
        assert im.mode == "RGB" and im.format == "JPEG"


def test_default_synthetic_set_is_learnable_but_not_trivial(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    images = generate(tmp_path / "set")
    frame = images.frame
    assert Counter(frame["subtype"].fillna("none")) == {"none": 300, "bacteria": 300, "virus": 200}
    x = img.load_arrays(images, size=16).reshape(len(images), -1)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=2000))
    pneumonia = (frame["label"] == "PNEUMONIA").to_numpy()
    detect = cross_val_score(model, x, pneumonia, cv=5).mean()
    virus = (frame["subtype"][pneumonia] == "virus").to_numpy()
    subtype = cross_val_score(model, x[pneumonia], virus, cv=5).mean()
    assert 0.82 <= detect <= 0.97, detect
    assert 0.70 <= subtype <= 0.90, subtype


def test_content_hash_depends_on_files_and_labels_not_location(tmp_path: Path) -> None:
    counts = {"normal": 3, "bacteria": 3, "virus": 2}
    first = generate(tmp_path / "a", counts, seed=7)
    second = generate(tmp_path / "elsewhere" / "b", counts, seed=7)
    other = generate(tmp_path / "c", counts, seed=8)
    assert img.content_sha256(first) == img.content_sha256(second)
    assert list(first.frame["sha256"]) == list(second.frame["sha256"])
    assert img.content_sha256(first) != img.content_sha256(other)

    relabelled = img.ImageSet(frame=first.frame.copy(), root=first.root)
    relabelled.frame.loc[0, "label"] = "PNEUMONIA"
    assert img.content_sha256(relabelled) != img.content_sha256(first)


def test_generate_refuses_a_folder_with_files_and_unknown_classes(tmp_path: Path) -> None:
    generate(tmp_path / "set", {"normal": 1, "bacteria": 1, "virus": 0})
    with pytest.raises(CopmlError, match="already holds files"):
        generate(tmp_path / "set", {"normal": 1, "bacteria": 1, "virus": 0})
    with pytest.raises(CopmlError, match="unknown class"):
        generate(tmp_path / "other", {"covid": 3})


def test_validation_reports_every_problem_naming_each_file(
    small_set: img.ImageSet, tmp_path: Path
) -> None:
    root = _copy(small_set, tmp_path / "bad")
    files = sorted((root / "PNEUMONIA").glob("*.jpeg"))
    truncated, not_image, wrong_size, original = files[0], files[1], files[2], files[3]
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    not_image.write_text("path,label\nthis is a csv, not an x-ray\n")
    Image.new("RGB", (100, 120), "grey").save(wrong_size, format="JPEG")
    duplicate = root / "NORMAL" / "copy-of-a-pneumonia.jpeg"
    shutil.copyfile(original, duplicate)
    normal = sorted((root / "NORMAL").glob("IM-*.jpeg"))[0]
    same_label_copy = root / "NORMAL" / "IM-9999-0001.jpeg"
    shutil.copyfile(normal, same_label_copy)
    (root / "OTHER").mkdir()
    stray = root / "OTHER" / "x.jpeg"
    Image.new("RGB", (224, 224), "white").save(stray, format="JPEG")

    images = img.read_folder(root)
    with pytest.raises(DataValidationError) as caught:
        img.validate(images, size=(224, 224), labels=["NORMAL", "PNEUMONIA"])
    problems = caught.value.details
    assert len(problems) == 6, problems

    def about(rel: str) -> list[str]:
        return [p for p in problems if rel in p]

    rel = lambda p: p.relative_to(root).as_posix()  # noqa: E731
    assert any("decoded" in p or "truncated" in p for p in about(rel(truncated)))
    assert any("cannot be decoded" in p for p in about(rel(not_image)))
    assert any("size 100x120, expected 224x224" in p for p in about(rel(wrong_size)))
    dup = [p for p in problems if p.startswith("identical files with different labels")]
    assert len(dup) == 1 and rel(original) in dup[0] and rel(duplicate) in dup[0]
    dup = [p for p in problems if p.startswith("duplicate files (same sha256)")]
    assert len(dup) == 1 and rel(normal) in dup[0] and rel(same_label_copy) in dup[0]
    assert any("unknown label 'OTHER'" in p for p in about(rel(stray)))
    assert "6 problem(s)" in str(caught.value)


def test_same_label_duplicates_are_reported_unless_allowed(
    small_set: img.ImageSet, tmp_path: Path
) -> None:
    root = _copy(small_set, tmp_path / "dups")
    source = sorted((root / "NORMAL").glob("*.jpeg"))[0]
    shutil.copyfile(source, root / "NORMAL" / "IM-9999-0001.jpeg")
    images = img.read_folder(root)
    with pytest.raises(DataValidationError) as caught:
        img.validate(images)
    assert caught.value.details == [
        "duplicate files (same sha256): NORMAL/IM-0001-0001.jpeg, NORMAL/IM-9999-0001.jpeg"
    ]
    assert img.validate(images, allow_duplicates=True) is images


def test_truncated_jpeg_is_caught_even_when_pil_tolerates_truncation(
    small_set: img.ImageSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _copy(small_set, tmp_path / "trunc")
    target = sorted((root / "NORMAL").glob("*.jpeg"))[0]
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(DataValidationError) as caught:
        img.validate(img.read_folder(root))
    assert caught.value.details == [
        f"{target.relative_to(root).as_posix()}: is truncated (no JPEG end-of-image marker)"
    ]


def test_profile_and_intensity_psi_detect_exposure_drift(
    small_set: img.ImageSet, tmp_path: Path
) -> None:
    reference = img.profile(small_set, sample=20, seed=0)
    hist = reference["histogram"]["proportions"]
    assert len(hist) == 32 and sum(hist) == pytest.approx(1.0)
    assert reference["labels"] == {"NORMAL": 12, "PNEUMONIA": 18}
    assert reference["sizes"] == {"224x224": 30}
    assert reference["sample"] == {"n": 20, "seed": 0}
    assert 0.2 < reference["intensity"]["mean"] < 0.7 and reference["intensity"]["std"] > 0.05
    assert img.profile(small_set, sample=20, seed=0) == reference
    assert img.intensity_psi(reference, img.profile(small_set, sample=100)) < 0.02
    assert img.intensity_psi(reference, reference) == 0.0

    for name, factor in (("dark", 0.7), ("bright", 1.35)):
        root = _copy(small_set, tmp_path / name)
        for file in root.glob("*/*.jpeg"):
            with Image.open(file) as im:
                shifted = im.point(lambda v, f=factor: min(255, round(v * f)))
            shifted.save(file, format="JPEG", quality=90)
        current = img.profile(img.read_folder(root), sample=20, seed=0)
        psi = img.intensity_psi(reference, current)
        assert psi > 0.1, (name, psi)


def test_manifest_wins_over_folders_and_gives_subtypes(
    small_set: img.ImageSet, tmp_path: Path
) -> None:
    root = _copy(small_set, tmp_path / "manifest")
    chosen = [
        ("PNEUMONIA/person2_bacteria_2.jpeg", "PNEUMONIA", "bacteria"),
        ("NORMAL/IM-0001-0001.jpeg", "NORMAL", ""),
        ("PNEUMONIA/person11_virus_1.jpeg", "PNEUMONIA", "virus"),
    ]
    with (root / "manifest.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "subtype", "group"])
        for row in chosen:
            writer.writerow([*row, "g"])
    images = img.read_folder(root)
    assert list(images.frame["path"]) == sorted(r[0] for r in chosen)
    assert list(images.frame["subtype"]) == [r[2] or None for r in sorted(chosen)]
    by_path = dict(zip(small_set.frame["path"], small_set.frame["sha256"], strict=True))
    read = zip(images.frame["path"], images.frame["sha256"], strict=True)
    assert all(by_path[p] == d for p, d in read)
    img.validate(images, size=(224, 224))

    (root / "manifest.csv").write_text("path,label\nNORMAL/gone.jpeg,NORMAL\n")
    with pytest.raises(DataValidationError) as caught:
        img.validate(img.read_folder(root))
    assert caught.value.details == ["NORMAL/gone.jpeg: file is missing"]

    (root / "manifest.csv").write_text("file,class\nNORMAL/IM-0001-0001.jpeg,NORMAL\n")
    with pytest.raises(DataValidationError, match="path, label"):
        img.read_folder(root)


def test_load_arrays_gives_grey_unit_floats(small_set: img.ImageSet) -> None:
    arrays = img.load_arrays(small_set, size=48)
    assert arrays.shape == (30, 48, 48) and arrays.dtype == np.float32
    assert arrays.min() >= 0.0 and arrays.max() <= 1.0 and arrays.std() > 0.05
    with Image.open(small_set.files()[5]) as im:
        expected = np.asarray(im.convert("L").resize((48, 48), Image.Resampling.BILINEAR))
    np.testing.assert_allclose(arrays[5], expected / 255.0, atol=1e-6)


def test_real_chest_xray_train_folder() -> None:
    train = shared_file("chest-xray", "train")
    manifest = shared_file("chest-xray", "manifest.csv")
    with manifest.open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "train"]

    images = img.read_folder(train)
    frame = images.frame
    assert Counter(frame["label"]) == Counter(r["label"] for r in rows)
    assert len(images) == len(rows)

    # The real set has byte-identical pairs under different names (see its README): strict
    # validation names exactly those, and allowing duplicates leaves no other problem.
    by_hash = Counter(r["sha256"] for r in rows)
    pairs = sum(1 for n in by_hash.values() if n > 1)
    with pytest.raises(DataValidationError) as caught:
        img.validate(images, size=(224, 224), labels=["NORMAL", "PNEUMONIA"])
    assert len(caught.value.details) == pairs > 0
    assert all(p.startswith("duplicate files (same sha256):") for p in caught.value.details)
    img.validate(images, size=(224, 224), labels=["NORMAL", "PNEUMONIA"], allow_duplicates=True)

    # The snapshot id is stable: the same from a second read, and the same as one computed
    # from the manifest alone (the folder's paths, labels, subtypes and sha256 values).
    digest = img.content_sha256(images)
    assert img.content_sha256(img.read_folder(train)) == digest
    lines = sorted(
        "\t".join(
            (
                r["path"].removeprefix("train/"),
                r["label"],
                r["subtype"] if r["subtype"] in ("bacteria", "virus") else "",
                r["sha256"],
            )
        )
        for r in rows
    )
    assert hashlib.sha256("\n".join(lines).encode()).hexdigest() == digest
