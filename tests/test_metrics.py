"""The digit recognizer behind the 'recognisable samples' number of training runs and benchmarks."""

from __future__ import annotations

import torch

from evaluation.digits import DigitRecognizer, blob_images
from training.data import digits_images


def test_real_digits_are_recognised_and_blobs_are_not():
    recognizer = DigitRecognizer(seed=0)
    real, _ = digits_images(16)  # real digits, upscaled as the demo trains on them
    blobs = torch.from_numpy(blob_images(300, size=16, seed=1234))[:, None].float()  # not the fitted ones
    assert recognizer.confident_share(real) > 0.95
    real_with_labels, labels = digits_images(16)
    assert recognizer.class_coverage(real_with_labels) == 1.0
    assert recognizer.class_coverage(real_with_labels[labels == 1]) == 0.1  # a model that draws only ones
    assert recognizer.class_coverage(blobs) == 0.0
    assert recognizer.confident_share(blobs) < 0.05  # the old digits-only classifier recognised ~23% of these
    noise = torch.rand(200, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    assert recognizer.confident_share(noise) < 0.05


def test_the_recognizer_is_a_strong_judge_of_digits_it_has_not_seen():
    """The bar set for judging `make demo`: >= 97% right on held-out real digits (5-fold cross-validation)."""
    scores = DigitRecognizer.cross_validated_scores(folds=5, seed=0)
    assert scores["accuracy"] >= 0.97 and scores["confident_share"] >= 0.95


def test_benchmarks_can_keep_their_held_out_digits_out_of_the_recognizer():
    real, labels = digits_images(16)
    recognizer = DigitRecognizer(seed=0, training_digits=1497)
    accuracy = (recognizer.probabilities(real[1497:]).argmax(axis=1) == labels[1497:].numpy()).mean()
    assert 0.9 < accuracy < 0.97  # unseen writers are harder than cross-validation suggests (94% measured)


def test_the_digit_counts_the_reports_print_are_the_data_sets():
    from evaluation.digits import DIGITS, HELD_OUT_DIGITS
    from training.data import digits_images

    assert len(digits_images(8)[0]) == DIGITS and 0 < HELD_OUT_DIGITS < DIGITS
