"""Sample-quality measures that need no download.

`DigitRecognizer` is a logistic-regression classifier fitted on scikit-learn's 8x8 digits: it tells which
generated digits are recognisable (the share classified with confidence >= 0.9), a cheap, honest signal for
the embedded data set.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


class DigitRecognizer:
    """Classifies images of digits (any size, values in [0, 1], white ink on black) as scikit-learn's digits."""

    def __init__(self, seed: int = 0):
        from sklearn.datasets import load_digits
        from sklearn.linear_model import LogisticRegression

        digits = load_digits()
        self.classifier = LogisticRegression(max_iter=5000, random_state=seed)
        self.classifier.fit(digits.data / 16.0, digits.target)

    @staticmethod
    def _features(images: torch.Tensor | np.ndarray) -> np.ndarray:
        array = images.detach().cpu().float().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        if array.ndim == 4 and array.shape[1] in (1, 3):  # (batch, channels, h, w) -> (batch, h, w, channels)
            array = array.transpose(0, 2, 3, 1)
        if array.ndim == 4:
            array = array.mean(axis=-1)
        small = [
            np.asarray(Image.fromarray((a * 255).clip(0, 255).astype(np.uint8)).resize((8, 8), Image.Resampling.BOX))
            for a in array
        ]
        return np.stack(small).reshape(len(small), 64) / 255.0

    def probabilities(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        return self.classifier.predict_proba(self._features(images))

    def confident_share(self, images: torch.Tensor | np.ndarray, threshold: float = 0.9) -> float:
        """Share of `images` that the classifier assigns to one digit with probability >= `threshold`."""
        return float((self.probabilities(images).max(axis=1) >= threshold).mean())
