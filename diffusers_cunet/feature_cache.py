"""Training-free feature reuse across sampling steps for the continuous U-Net (after DeepCache, arXiv 2312.00858).

Between neighbouring denoising steps the deep, low-resolution features of a U-Net change little. A
`DeepFeatureCache` holds the decoder's features where they enter the top `levels` levels from below: on a
*refresh* call the model runs whole and stores them; on the calls in between it runs only the top `levels`
levels of the encoder and decoder (their ODE blocks, attention and convs) and takes the deeper part from the
cache. The pipelines refresh it every `cache_interval` steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class DeepFeatureCache:
    """The deep decoder features one sampling run reuses.

    Args:
        levels (`int`): the top (highest-resolution) levels recomputed on every call, 1 to the number of levels;
            the deeper levels and the bottleneck run only on refresh calls.
        refresh (`bool`): whether the next call runs the whole model and stores its deep features.
        features (`torch.Tensor`, *optional*): the stored features (set by the model on a refresh call).
    """

    levels: int
    refresh: bool = True
    features: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if isinstance(self.levels, bool) or not isinstance(self.levels, int) or self.levels < 1:
            raise ValueError(f"cache_levels must be a positive integer, got {self.levels!r}.")

    def check_fits(self, model_levels: int) -> None:
        """Raise unless the levels recomputed lie within a model of `model_levels` levels (the one check of
        `cache_levels` against a model, for the pipelines and the model's forward alike)."""
        if self.levels > model_levels:
            raise ValueError(
                f"cache_levels must be between 1 and {model_levels} (the model's levels), got {self.levels}."
            )

    @property
    def reusing(self) -> bool:
        """Whether the next call runs only the top levels (a cache that holds features and is not refreshing)."""
        return not self.refresh


def check_cache_schedule(cache_interval: int | None, cache_levels: int) -> None:
    """Raise for settings a pipeline cannot reuse features with (`cache_interval=None` turns reuse off)."""
    if cache_interval is None:
        return
    if isinstance(cache_interval, bool) or not isinstance(cache_interval, int) or cache_interval < 1:
        raise ValueError(f"cache_interval must be a positive integer or None, got {cache_interval!r}.")
    DeepFeatureCache(cache_levels)  # its own check of the levels
