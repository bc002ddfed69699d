"""The digit recognizer behind the 'recognisable samples' number of training runs and benchmarks."""

from __future__ import annotations

import torch

from training.data import digits_images
from training.metrics import DigitRecognizer, blob_images


def test_real_digits_are_recognised_and_blobs_are_not():
    recognizer = DigitRecognizer(seed=0)
    real, _ = digits_images(16)  # real digits, upscaled as the demo trains on them
    blobs = torch.from_numpy(blob_images(300, size=16, seed=1234))[:, None].float()  # not the fitted ones
    assert recognizer.confident_share(real) > 0.7
    assert recognizer.confident_share(blobs) < 0.05  # the old digits-only classifier recognised ~23% of these
    noise = torch.rand(200, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    assert recognizer.confident_share(noise) < 0.05
