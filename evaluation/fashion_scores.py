"""Sample quality on Fashion-MNIST in the committed judge's feature space (`evaluation.fashion_judge`).

- FID, KID, precision and recall (`evaluation.distances`) on the judge's features (no Inception download).
- Class coverage: how many of the ten classes the judge confidently finds among the samples, and the confident share.

The floor of each score is the same measurement with as many real training images in place of the samples.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import torch

from evaluation.distances import fid_and_kid, precision_recall
from evaluation.fashion_judge import FashionJudge

CONFIDENT = 0.9  # the judge's probability for a sample to count as a recognisable garment


@torch.no_grad()
def judge_features(judge: FashionJudge, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """The judge's 128-d features of `images` (in [0, 1]), in float64."""
    return torch.cat([judge(images[i : i + batch_size]).double() for i in range(0, len(images), batch_size)])


def test_image_features(count: int | None = None, folder: str | os.PathLike | None = None) -> torch.Tensor:
    """The committed judge's features of the first `count` Fashion-MNIST test images (all 10,000 by default), the
    real side of every score: computed once per process and count (10,000 images cost the judge seconds, and a
    benchmark or search scores many models against them). Read it, never change it."""
    from training.fashion_mnist import required_folder

    return _test_image_features(count, required_folder(folder).resolve())


@functools.lru_cache(maxsize=4)
def _test_image_features(count: int | None, folder: Path) -> torch.Tensor:
    from evaluation.fashion_judge import load_judge
    from training.fashion_mnist import split_tensors

    return judge_features(load_judge(), split_tensors("test", folder)[0][:count])


def class_coverage(judge: FashionJudge, images: torch.Tensor) -> dict[str, Any]:
    """Confidently recognised samples and the classes among them, as counts beside their totals."""
    best, confidence = judge.predict(images)
    sure = confidence >= CONFIDENT
    return {
        "confident": int(sure.sum()),
        "confident_share": float(sure.double().mean()),
        "classes_found": len(set(best[sure].tolist())),
        "class_counts": torch.bincount(best, minlength=10).tolist(),
        "images": len(images),
    }


def sample_scores(judge: FashionJudge, real: torch.Tensor, fake: torch.Tensor,
                  real_features: torch.Tensor | None = None) -> dict[str, Any]:  # fmt: skip
    """Every score of `fake` samples against `real` test images (both in [0, 1], `(N, 1, 32, 32)` or 28x28):
    FID and KID against all of `real`, precision and recall against as many real images as samples.
    `real_features` (`judge_features(judge, real)`) saves computing them again for every model."""
    real_features = judge_features(judge, real) if real_features is None else real_features
    fake_features = judge_features(judge, fake)
    scores: dict[str, Any] = fid_and_kid(real_features, fake_features)
    count = min(len(real_features), len(fake_features))
    scores.update(precision_recall(real_features[:count], fake_features[:count]))
    scores.update(class_coverage(judge, fake))
    scores["samples"] = len(fake)
    scores["real_images"] = len(real_features)
    return scores


@torch.no_grad()
def generate(
    pipeline,
    count: int,
    steps: int,
    seed: int,
    batch_size: int = 250,
    class_labels: torch.Tensor | None = None,
    **call_options,
) -> tuple[torch.Tensor, float]:
    """`count` samples in [0, 1] from `pipeline` (ours, any scheduler) in batches, batch k seeded `seed + k`, and
    the sampling seconds per image (the median over batches: robust to a burst of other work on the machine).
    `class_labels` (one per sample) are handed out batch by batch; `call_options` go to every pipeline call (e.g.
    `solver_schedule`, `cache_interval`, `guidance_scale`)."""
    import time

    pipeline.set_progress_bar_config(disable=True)
    images, per_image = [], []
    for k, start in enumerate(range(0, count, batch_size)):
        size = min(batch_size, count - start)
        begin = time.perf_counter()
        if class_labels is not None:
            call_options["class_labels"] = class_labels[start : start + size]
        out = pipeline(batch_size=size, num_inference_steps=steps, output_type="pt",
                       generator=torch.Generator().manual_seed(seed + k), **call_options)  # fmt: skip
        per_image.append((time.perf_counter() - begin) / size)
        images.append(out.images.cpu())
    return torch.cat(images), sorted(per_image)[len(per_image) // 2]


def balanced_labels(count: int, classes: int = 10) -> torch.Tensor:
    """Labels 0, 1, ..., classes - 1, 0, 1, ...: every class equally often, as in the test set."""
    return torch.arange(count) % classes


@torch.no_grad()
def class_conditional_scores(
    pipeline,
    judge: FashionJudge,
    real_features: torch.Tensor,
    count: int,
    steps: int,
    seed: int = 0,
    batch_size: int = 250,
    guidance_scale: float = 1.0,
    guidance_interval: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """`count` samples of a class-conditional `pipeline` with balanced labels at `guidance_scale` (within
    `guidance_interval`, EDM sigmas, where given), scored as the benchmarks, the convergence queue and the shipped
    model's card all score them: every `sample_scores` entry against `real_features`, the share the judge puts in
    the class asked for (overall and per class), the sampling seconds per image (`generate`'s median) and the ODE
    evaluations per image (read from one extra single-image call)."""
    labels = balanced_labels(count)
    guidance = dict(guidance_scale=guidance_scale, guidance_interval=guidance_interval)
    images, seconds = generate(pipeline, count, steps, seed, batch_size, class_labels=labels, **guidance)
    predicted, _ = judge.predict(images)
    correct = predicted == labels
    probe = pipeline(batch_size=1, num_inference_steps=steps, output_type="pt", class_labels=labels[:1], **guidance)
    return {
        **sample_scores(judge, None, images, real_features=real_features),
        "guidance_scale": guidance_scale,
        "guidance_interval": list(guidance_interval) if guidance_interval else None,
        "class_accuracy": float(correct.double().mean()),
        "class_accuracy_per_class": [
            float(correct[labels == c].double().mean()) for c in range(int(labels.max()) + 1)
        ],
        "sampling_steps": steps,
        "sampling_s_per_image": seconds,
        "ode_evaluations_per_image": getattr(probe, "ode_evaluations", None),
    }
