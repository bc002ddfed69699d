"""Small pieces shared by the pipelines: their input checks, class labels, output types, solver-schedule loading."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from diffusers import DiffusionPipeline

from ..class_names import label_ids
from ..feature_cache import DeepFeatureCache, check_cache_schedule
from ..guidance import NULL_CLASS_KEY, GuidedNetwork
from ..step_schedule import SCHEDULE_FILE, SolverStepSchedule

OUTPUT_TYPES = ("pt", "np", "pil")


def check_output_type(output_type: str) -> None:
    """Raise before any sampling for an output type the pipelines cannot return."""
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {list(OUTPUT_TYPES)}, got {output_type!r}.")


def to_output_type(images: torch.Tensor, output_type: str):
    """Images in [0, 1] as tensors (`pt`), arrays (`np`) or PIL images (`pil`)."""
    check_output_type(output_type)
    if output_type == "pt":
        return images
    array = images.cpu().permute(0, 2, 3, 1).float().numpy()
    return DiffusionPipeline.numpy_to_pil(array) if output_type == "pil" else array


def class_labels_for(unet, class_labels, batch_size: int, device) -> torch.Tensor | None:
    """Validate `class_labels` (indices, or names from the model's `id2label`) against the model: required for a
    class-conditional model unless it has a null class, which then stands in (unconditional samples)."""
    config = unet.config
    num_embeds = getattr(config, "num_class_embeds", None)
    null_class = getattr(config, NULL_CLASS_KEY, None)
    classes = (num_embeds or 0) - (null_class is not None)  # the real classes; the null one is "no class"
    if class_labels is None:
        if null_class is not None:
            return torch.full((batch_size,), null_class, device=device, dtype=torch.long)
        if num_embeds:
            raise ValueError(f"class_labels are required: the model is conditioned on {classes} classes.")
        return None
    if not num_embeds:
        raise ValueError("class_labels were given but the model is not class-conditional.")
    if isinstance(class_labels, (str, int)):
        class_labels = [class_labels]
    if not torch.is_tensor(class_labels):
        class_labels = label_ids(getattr(config, "id2label", None), list(class_labels))
    labels = torch.as_tensor(class_labels, device=device).long().reshape(-1)
    if labels.shape[0] != batch_size:
        raise ValueError(f"Got {labels.shape[0]} class_labels for a batch of {batch_size}.")
    if labels.min() < 0 or labels.max() >= num_embeds:
        null = f" or {null_class}, the null class (unconditional)" if null_class is not None else ""
        raise ValueError(f"class_labels must lie in [0, {classes - 1}]{null}, got {labels.tolist()}.")
    return labels


def check_generator(generator, batch_size: int) -> None:
    """Raise for a list of generators whose length is not the batch size (diffusers' rule: one per image)."""
    if isinstance(generator, list) and len(generator) != batch_size:
        raise ValueError(f"Got a list of {len(generator)} generators for a batch of {batch_size}: give one per "
                         "image, or a single generator.")  # fmt: skip


def check_latents(latents, shape: tuple[int, ...]) -> torch.Tensor:
    """`latents` if it is a floating-point tensor of `shape`; a `ValueError` saying what was expected otherwise."""
    if not torch.is_tensor(latents):
        raise ValueError(f"latents must be a tensor of shape {shape}, got {type(latents).__name__}.")
    if tuple(latents.shape) != tuple(shape):
        raise ValueError(f"Unexpected latents shape {tuple(latents.shape)}: expected {tuple(shape)} "
                         "(batch_size, channels, height, width).")  # fmt: skip
    if not latents.is_floating_point():
        raise ValueError(f"latents must be a floating-point tensor, got {latents.dtype}.")
    return latents


def check_callback_inputs(names: list[str] | None, allowed: list[str]) -> list[str]:
    """The tensors a step callback asks for (`["latents"]` when `None`), each one the pipeline hands out."""
    names = list(allowed) if names is None else list(names)
    unknown = [name for name in names if name not in allowed]
    if unknown:
        raise ValueError(f"callback_on_step_end_tensor_inputs {unknown} are not among the pipeline's {allowed}.")
    return names


def check_steps(num_inference_steps) -> None:
    """Raise before any work for a step count that is not a positive integer."""
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}.")


HUB_OPTIONS = ("cache_dir", "revision", "token", "local_files_only", "proxies", "force_download")


def hub_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The Hugging Face Hub download options among `from_pretrained`'s, those that are set."""
    return {key: options[key] for key in HUB_OPTIONS if options.get(key) is not None}


def load_solver_schedule(name_or_path, **options):
    """The `SolverStepSchedule` saved with a pipeline, from a local folder or a Hub repository (through the cache,
    or a download), or `None` if it has none. `options` are `from_pretrained`'s (cache_dir, revision, token, ...)."""
    from pathlib import Path

    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    folder = Path(str(name_or_path))
    if folder.is_dir():
        return SolverStepSchedule.from_pretrained(folder) if (folder / SCHEDULE_FILE).is_file() else None
    try:
        path = hf_hub_download(str(name_or_path), SCHEDULE_FILE, **hub_options(options))
    except (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError):
        return None  # the repository has no schedule (or, offline, none was ever downloaded)
    except HFValidationError:
        return None  # not a repository id either (e.g. a folder that has since been removed)
    return SolverStepSchedule.from_pretrained(Path(path).parent)


def check_feature_cache(unet, cache_interval: int | None, cache_levels: int) -> DeepFeatureCache | None:
    """A fresh feature cache for one sampling run (`None` when `cache_interval` is `None`: reuse is off)."""
    check_cache_schedule(cache_interval, cache_levels)
    if cache_interval is None:
        return None
    if not hasattr(unet, "active_ode_blocks"):
        raise ValueError(f"Feature reuse (cache_interval) needs a ContinuousUNet2DModel, not {type(unet).__name__}.")
    cache = DeepFeatureCache(cache_levels)
    cache.check_fits(len(unet.config.block_out_channels))
    return cache


def check_guidance_options(guided: GuidedNetwork | None, cache_interval: int | None) -> None:
    """Raise for a guidance interval with feature reuse: the cached deep features would be of another batch."""
    if guided is not None and guided.interval is not None and cache_interval is not None:
        raise ValueError("guidance_interval cannot be combined with cache_interval; guide everywhere, or do not "
                         "reuse features.")  # fmt: skip
