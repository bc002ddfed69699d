"""Sample-quality measures that need no download.

`DigitRecognizer` is an RBF support-vector machine (calibrated probabilities) fitted on scikit-learn's 8x8 digits,
their 16x16 round trip and random blobs ("not a digit"): it tells which generated digits are recognisable (the share
classified as one digit with confidence >= 0.9), a cheap signal for the embedded data set.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from evaluation.distances import fid_and_kid


def _resize(image: np.ndarray, size: int, resample: Image.Resampling) -> np.ndarray:
    """A greyscale image in [0, 1] resized to `size` x `size` through 8-bit PIL, back in [0, 1]."""
    pil = Image.fromarray((image * 255).clip(0, 255).astype(np.uint8))
    return np.asarray(pil.resize((size, size), resample), dtype=np.float64) / 255.0


def blob_images(count: int, size: int = 16, seed: int = 0) -> np.ndarray:
    """`count` images in [0, 1] of smooth random blobs (blurred noise, thresholded): what an undertrained digit
    model draws. They teach `DigitRecognizer` a "not a digit" class. Shape `(count, size, size)`."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        field = gaussian_filter(rng.normal(size=(size, size)), sigma=rng.uniform(1.0, 3.0))
        field = (field - field.min()) / (field.max() - field.min() + 1e-9)
        images.append(np.clip((field - rng.uniform(0.3, 0.6)) * rng.uniform(2.0, 4.0), 0.0, 1.0))
    return np.stack(images)


class DigitRecognizer:
    """Classifies images of digits (any size, values in [0, 1], white ink on black) as scikit-learn's digits, or as
    "not a digit": an RBF support-vector machine with calibrated probabilities (sigmoid, by cross-validation),
    fitted on the digits, their 16x16 round trip and as many random blobs, so smooth shapes that are no digit do
    not count as recognisable. On digits it has not seen it is right 98.7% of the time and confident (p >= 0.9) for
    98.4% of them (5-fold cross-validation, `cross_validated_scores`); on the last 300 digits, written by people
    none of the others come from, when fitted on the rest, 94%.

    `training_digits` fits it on the first N digits only (benchmarks keep their held-out digits out of it too)."""

    NOT_A_DIGIT = 10

    def __init__(self, seed: int = 0, training_digits: int | None = None):
        pieces = _training_pieces(seed)
        images, labels = _training_set(pieces, np.arange(len(pieces[0].target))[:training_digits])
        self.classifier = make_digit_classifier().fit(images, labels)

    @staticmethod
    def cross_validated_scores(folds: int = 5, seed: int = 0) -> dict[str, float]:
        """Accuracy and confident share (p >= 0.9, a digit) on real 16x16 digits the classifier did not see."""
        from sklearn.model_selection import StratifiedKFold

        pieces = _training_pieces(seed)  # computed once, shared by the folds
        digits, round_trip, _ = pieces
        accuracy, confident = [], []
        for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(digits.data, digits.target):
            images, labels = _training_set(pieces, train)
            best, sure = _confident(make_digit_classifier().fit(images, labels).predict_proba(round_trip[test]))
            accuracy.append(float((best == digits.target[test]).mean()))
            confident.append(float(sure.mean()))
        return {"accuracy": float(np.mean(accuracy)), "confident_share": float(np.mean(confident))}

    @staticmethod
    def _features(images: torch.Tensor | np.ndarray) -> np.ndarray:
        array = images.detach().cpu().float().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        if array.ndim == 4 and array.shape[1] in (1, 3):  # (batch, channels, h, w) -> (batch, h, w, channels)
            array = array.transpose(0, 2, 3, 1)
        if array.ndim == 4:
            array = array.mean(axis=-1)
        small = [_resize(a, 8, Image.Resampling.BOX) for a in array]
        return np.stack(small).reshape(len(small), 64)

    def probabilities(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        """Class probabilities, `(len(images), 11)`: digits 0-9, then "not a digit"."""
        return self.classifier.predict_proba(self._features(images))

    def confident_share(self, images: torch.Tensor | np.ndarray, threshold: float = 0.9) -> float:
        """Share of `images` that the classifier assigns to one digit (not to "not a digit") with probability
        >= `threshold`."""
        _, sure = _confident(self.probabilities(images), threshold)
        return float(sure.mean())

    def class_coverage(self, images: torch.Tensor | np.ndarray, threshold: float = 0.9) -> float:
        """Share of the ten digits that at least one of `images` is confidently recognised as (a model that draws
        only ones scores 0.1)."""
        best, sure = _confident(self.probabilities(images), threshold)
        return len(set(best[sure].tolist())) / 10


@functools.lru_cache(maxsize=4)
def fitted_recognizer(seed: int = 0, training_digits: int | None = None) -> DigitRecognizer:
    """The `DigitRecognizer` of `seed` and `training_digits`, fitted once per process: the fit is deterministic and
    costs seconds, and every digits run's export and each benchmark would otherwise repeat it."""
    return DigitRecognizer(seed=seed, training_digits=training_digits)


def make_digit_classifier():
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.svm import SVC

    return CalibratedClassifierCV(SVC(C=10, gamma="scale"), ensemble=False)


def _confident(probabilities: np.ndarray, threshold: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """Each image's most probable class, and whether that is a digit held with probability >= `threshold`."""
    best = probabilities.argmax(axis=1)
    return best, (best != DigitRecognizer.NOT_A_DIGIT) & (probabilities.max(axis=1) >= threshold)


def _training_pieces(seed: int) -> tuple[Any, np.ndarray, np.ndarray]:
    """scikit-learn's digits, the 8x8 features of their 16x16 round trip (bicubic up, box down), and the features
    of twice as many random blobs (the "not a digit" class)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    upscaled = np.stack([_resize(image / 16.0, 16, Image.Resampling.BICUBIC) for image in digits.images])
    blobs = DigitRecognizer._features(blob_images(2 * len(digits.target), seed=seed + 1))
    return digits, DigitRecognizer._features(upscaled), blobs


def _training_set(pieces: tuple[Any, np.ndarray, np.ndarray], chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels the recognizer is fitted on: the `chosen` digits as they are and as they come back
    from 16x16, plus the blobs labelled "not a digit"."""
    digits, round_trip, blobs = pieces
    features = np.concatenate([digits.data[chosen] / 16.0, round_trip[chosen], blobs])
    labels = np.concatenate([digits.target[chosen], digits.target[chosen], np.full(len(blobs), 10)])
    return features, labels


class DigitFeatureNet(torch.nn.Module):
    """A small CNN digit classifier whose 64-d penultimate layer serves as the feature space of Fréchet
    distance and KID on digits (no Inception download). Takes images in [0, 1], any size, 1 or 3 channels."""

    num_features = 64

    def __init__(self, size: int = 16):
        super().__init__()
        self.size = size
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(1, 32, 3, padding=1),
            torch.nn.SiLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(32, 64, 3, padding=1),
            torch.nn.SiLU(),
            torch.nn.AdaptiveAvgPool2d(4),
            torch.nn.Flatten(),
            torch.nn.Linear(64 * 16, self.num_features),
            torch.nn.SiLU(),
        )
        self.head = torch.nn.Linear(self.num_features, 10)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        images = images.float()
        if images.shape[1] == 3:
            images = images.mean(dim=1, keepdim=True)
        if images.shape[-1] != self.size:
            images = torch.nn.functional.interpolate(images, size=(self.size, self.size), mode="bilinear")
        return images * 2 - 1

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Features of `images` (values in [0, 1]); what torchmetrics' FID/KID call."""
        return self.body(self._prepare(images))

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward(images))


def train_digit_feature_net(
    images: torch.Tensor, labels: torch.Tensor, epochs: int = 15, seed: int = 0
) -> DigitFeatureNet:
    """Fit a `DigitFeatureNet` on `images` in [0, 1] (N, 1, H, W) with integer `labels` (a few seconds on a CPU)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = DigitFeatureNet(size=images.shape[-1])
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), 64):
            batch = order[start : start + 64]
            loss = torch.nn.functional.cross_entropy(net.logits(images[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return net.eval()


@torch.no_grad()
def frechet_and_kid(
    real: torch.Tensor, fake: torch.Tensor, feature_net: torch.nn.Module, kid_subset_size: int = 100
) -> dict[str, float]:
    """Fréchet distance and KID (mean, std) of `fake` vs `real` images in [0, 1], in `feature_net`'s space
    (`evaluation.distances.fid_and_kid` on its features)."""
    scores = fid_and_kid(feature_net(real.float()), feature_net(fake.float()), kid_subset_size)
    return {"frechet_distance": scores.pop("fid"), **scores}


DIGITS = 1797  # scikit-learn's 8x8 digits (`sklearn.datasets.load_digits`)
HELD_OUT_DIGITS = 300  # the last 300 of scikit-learn's digits: never trained on by benchmarks and step searches


@dataclass(frozen=True)
class HeldOutDigits:
    """The digits split for scoring: training images and labels, the held-out real images, and the feature
    network (fitted on the training part) in whose space Fréchet distance and KID are measured."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    real: torch.Tensor
    feature_net: DigitFeatureNet


@functools.lru_cache(maxsize=4)
def held_out_digits(resolution: int, held_out: int = HELD_OUT_DIGITS, seed: int = 0) -> HeldOutDigits:
    """Split the digits at `resolution` (images in [0, 1]) and fit the feature network on the training part (once
    per process and setting: the fit is deterministic and costs seconds; callers only read what it returns)."""
    from training.data import digits_images

    images, labels = digits_images(resolution)
    if not 0 < held_out < len(images):
        raise ValueError(f"held_out must be between 1 and {len(images) - 1}, got {held_out}.")
    train_images, train_labels = images[:-held_out], labels[:-held_out]
    feature_net = train_digit_feature_net(train_images, train_labels, seed=seed)
    return HeldOutDigits(train_images, train_labels, images[-held_out:], feature_net)
