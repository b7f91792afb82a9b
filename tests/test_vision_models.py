"""The x-ray application's models on tiny synthetic images (a bright blob marks positives)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from copml.apps.xray.vision import models  # noqa: E402

# One thread: tests run beside other test workers, where two OpenMP threads per process collapse.
FAST = {
    "epochs": 4,
    "batch_size": 32,
    "lr": 3e-3,
    "channels": (8, 16, 16, 32),
    "device": "cpu",
    "threads": 1,
}


def blobs(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noisy 64×64 grey images; positives carry a bright Gaussian blob at a random place."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = rng.uniform(0.0, 0.5, size=(n, 64, 64)).astype(np.float32)
    yy, xx = np.mgrid[0:64, 0:64]
    for i in np.flatnonzero(labels):
        cy, cx = rng.integers(16, 48, size=2)
        images[i] += 0.5 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 5.0**2))
    return np.clip(images, 0.0, 1.0), labels


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return blobs()


@pytest.fixture(scope="module")
def trained(data: tuple[np.ndarray, np.ndarray]) -> models.CompactCNN:
    images, labels = data
    return models.train_cnn(images, labels, seed=7, **FAST)


def test_cnn_separates_blobs(trained: models.CompactCNN) -> None:
    test_images, test_labels = blobs(100, seed=1)
    scores = models.predict_proba(trained, test_images)
    assert scores.shape == (100,)
    assert ((scores >= 0) & (scores <= 1)).all()
    assert models.metrics(test_labels, scores, 0.5)["roc_auc"] > 0.9


def test_same_seed_same_predictions(
    data: tuple[np.ndarray, np.ndarray], trained: models.CompactCNN
) -> None:
    images, labels = data
    again = models.train_cnn(images, labels, seed=7, **FAST)
    np.testing.assert_array_equal(
        models.predict_proba(trained, images), models.predict_proba(again, images)
    )


def test_progress_reports_each_epoch(data: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = data
    seen: list[tuple[int, dict[str, float]]] = []
    models.train_cnn(
        images[:64],
        labels[:64],
        seed=1,
        progress=lambda e, figures: seen.append((e, figures)),
        validation=(images[64:96], labels[64:96]),
        **{**FAST, "epochs": 2},
    )
    assert [e for e, _ in seen] == [1, 2]
    for _, figures in seen:
        assert set(figures) == {"loss", "val_recall", "val_specificity", "val_roc_auc"}
        assert np.isfinite(figures["loss"]) and 0 <= figures["val_roc_auc"] <= 1


def test_training_restores_torch_settings(data: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = data
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    models.train_cnn(images[:32], labels[:32], seed=0, **{**FAST, "epochs": 1, "threads": 1})
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic


def test_threshold_for_recall_on_hand_made_scores() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.4, 0.75, 0.5, 0.3, 0.2, 0.1])
    labels = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
    # Recall 0.8 needs 4 of the 5 positives: the 4th highest positive score, 0.6.
    assert models.threshold_for_recall(scores, labels, 0.8) == (0.6, 0.8, 0.8)
    # Recall 1.0 needs all: threshold 0.4 lets through 0.75 and 0.5 of the negatives.
    assert models.threshold_for_recall(scores, labels, 1.0) == (0.4, 1.0, 0.6)
    # Recall 0.6 needs 3 positives (0.7); anything above it needs 4 (0.6).
    assert models.threshold_for_recall(scores, labels, 0.6)[0] == 0.7
    assert models.threshold_for_recall(scores, labels, 0.61)[0] == 0.6


def test_threshold_for_recall_float_slack() -> None:
    # 0.55 * 100 is 55.00000000000001 in floats: 55 positives of 100 must still be enough.
    scores = np.arange(100, 0, -1) / 100
    threshold, recall, _ = models.threshold_for_recall(scores, np.ones(100), 0.55)
    assert (threshold, recall) == (0.46, 0.55)


def test_threshold_for_recall_with_ties() -> None:
    scores = np.array([0.5, 0.5, 0.5, 0.9, 0.5])
    labels = np.array([1, 1, 1, 1, 0])
    threshold, recall, specificity = models.threshold_for_recall(scores, labels, 0.5)
    assert (threshold, recall, specificity) == (0.5, 1.0, 0.0)


def test_metrics_at_threshold() -> None:
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    scores = np.array([0.9, 0.8, 0.6, 0.2, 0.7, 0.3, 0.1, 0.05])
    m = models.metrics(labels, scores, 0.5)
    assert m["recall"] == 0.75
    assert m["specificity"] == 0.75
    assert m["accuracy"] == 0.75
    assert m["balanced_accuracy"] == 0.75
    assert m["roc_auc"] == pytest.approx(13 / 16)
    assert m["n"] == 8


def test_save_load_round_trip(
    tmp_path: Path, data: tuple[np.ndarray, np.ndarray], trained: models.CompactCNN
) -> None:
    images, _ = data
    target = models.save(trained, tmp_path / "cnn")
    assert sorted(p.name for p in target.iterdir()) == ["architecture.json", "model.pt"]
    loaded = models.load(target)
    assert loaded.channels == trained.channels
    np.testing.assert_array_equal(
        models.predict_proba(trained, images), models.predict_proba(loaded, images)
    )


def test_init_weights_are_loaded(
    tmp_path: Path, data: tuple[np.ndarray, np.ndarray], trained: models.CompactCNN
) -> None:
    images, labels = data
    target = models.save(trained, tmp_path / "init")
    warm = models.train_cnn(images[:64], labels[:64], seed=3, init_weights=target, **FAST)
    cold = models.train_cnn(images[:64], labels[:64], seed=3, **FAST)
    assert not torch.equal(warm.features[0].weight, cold.features[0].weight)


def test_uint8_images_accepted(data: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = data
    as_bytes = (images[:64] * 255).astype(np.uint8)
    model = models.train_cnn(as_bytes, labels[:64], seed=0, **{**FAST, "epochs": 1})
    assert models.predict_proba(model, as_bytes[:, None]).shape == (64,)


def test_baseline_fits(data: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = data
    small = images.reshape(len(images), 32, 2, 32, 2).mean(axis=(2, 4))
    pipeline = models.baseline(small, labels)
    scores = pipeline.predict_proba(small)[:, 1]
    assert scores.shape == (len(labels),)
    assert models.metrics(labels, scores, 0.5)["roc_auc"] > 0.8
