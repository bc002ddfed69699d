"""Distances between real and generated images in a feature space: the one implementation every score uses.

- FID and KID: torchmetrics' `FrechetInceptionDistance` / `KernelInceptionDistance` fed with features computed
  beforehand (the feature network is the caller's: the Fashion-MNIST judge, the digits feature net).
- Precision and recall (Kynkaanniemi et al. 2019, arXiv 1904.06991): the share of samples inside the real images'
  k-nearest-neighbour manifold (fidelity) and of real images inside the samples' (diversity).
"""

from __future__ import annotations

import torch

NEIGHBOURS = 3  # k of the precision/recall manifolds (the paper's default)


class _GivenFeatures(torch.nn.Identity):
    """The "feature network" of torchmetrics' FID/KID when the features are computed beforehand."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features


@torch.no_grad()
def fid_and_kid(real: torch.Tensor, fake: torch.Tensor, kid_subset_size: int = 1000) -> dict[str, float]:
    """FID and KID (mean, std over subsets of `kid_subset_size`, or fewer) between `real` and `fake` features
    (rows), by torchmetrics' estimators; the statistics are accumulated in float64."""
    import warnings

    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    features = _GivenFeatures(real.shape[1])
    with warnings.catch_warnings():  # KID keeps every feature in memory: a few MB here
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        fid = FrechetInceptionDistance(feature=features)
        kid = KernelInceptionDistance(feature=features, subset_size=min(kid_subset_size, len(real), len(fake)))
    for metric in (fid, kid):
        metric.update(real, real=True)
        metric.update(fake, real=False)
    kid_mean, kid_std = kid.compute()
    return {"fid": float(fid.compute()), "kid_mean": float(kid_mean), "kid_std": float(kid_std)}


def manifold_radii(features: torch.Tensor, k: int = NEIGHBOURS) -> torch.Tensor:
    """Each point's distance to its k-th nearest neighbour among the others (the radius of its ball)."""
    distances = torch.cdist(features, features)
    return distances.kthvalue(k + 1, dim=1).values  # the 0-th neighbour is the point itself


def in_manifold(points: torch.Tensor, manifold: torch.Tensor, radii: torch.Tensor, chunk: int = 1000) -> torch.Tensor:
    """Whether each of `points` lies within some ball of `manifold` (centres and radii)."""
    inside = [(torch.cdist(points[i : i + chunk], manifold) <= radii[None]).any(dim=1)
              for i in range(0, len(points), chunk)]  # fmt: skip
    return torch.cat(inside)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = NEIGHBOURS) -> dict[str, float]:
    """Improved precision and recall of `fake` against `real` features (equal counts give the unbiased reading)."""
    if len(real) <= k or len(fake) <= k:
        raise ValueError(f"Precision/recall with k={k} needs more than {k} real and fake images.")
    precision = in_manifold(fake, real, manifold_radii(real, k)).double().mean()
    recall = in_manifold(real, fake, manifold_radii(fake, k)).double().mean()
    return {"precision": float(precision), "recall": float(recall)}
