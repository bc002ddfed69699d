"""Render the Hub model card (README.md) of a trained pipeline from the template in `model_cards/`."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from diffusers_cunet.flops import count_forward_flops, count_parameters
from diffusers_cunet.guidance import null_class_of
from diffusers_cunet.pipelines.scheduler_support import DDPM_PIPELINE_SCHEDULERS

TEMPLATE = "cunet_template.md"


def template_path() -> Path:
    return Path(str(resources.files("diffusers_cunet.model_cards") / TEMPLATE))


def render_model_card(
    unet,
    *,
    repo_id: str,
    dataset_name: str,
    hub_dataset: str | None = None,
    training_settings: dict[str, Any],
    metrics: dict[str, Any],
    grid_path: str = "samples.png",
    grid_caption: str = "Samples of the trained model.",
    machine: str | None = None,
    shipped_code: tuple[str, ...] = (),
) -> ModelCard:
    """A `ModelCard` describing `unet` (its size, solver and cost) and the run that trained it.

    `dataset_name` is shown in the text; `hub_dataset`, the id of a Hub data set, goes into the card's metadata
    (omit it for local folders and the embedded digits); `shipped_code`, the code files saved with the pipeline
    that let diffusers load it without the package."""

    config = unet.config
    conditional = bool(config.get("num_class_embeds"))
    null_class = null_class_of(unet)  # the last embedding: the classes asked for are those below it
    solver = getattr(unet, "solver", None)  # None for a baseline UNet2DModel trained with the same script
    if solver is None:
        solver_text = "none (residual blocks)"
    elif solver.is_adaptive:
        solver_text = solver.method
    else:
        solver_text = f"{solver.method}, {solver.steps} step(s) on [0, 1]"
    card_data = ModelCardData(
        library_name="diffusers",
        license="apache-2.0",
        datasets=[hub_dataset] if hub_dataset else None,  # Hub data sets only: never a local path
        tags=[
            "diffusers",
            "diffusers-cunet",
            "continuous-unet",
            "neural-ode",
            "class-conditional-image-generation" if conditional else "unconditional-image-generation",
        ],
        pipeline_tag=None if conditional else "unconditional-image-generation",
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path()),
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        dataset_name=dataset_name,
        grid_path=grid_path,
        grid_caption=grid_caption,
        class_conditional=conditional,
        null_class=null_class,
        shipped_code=" and ".join(f"`{name}`" for name in shipped_code),
        preconditioning=(config.get("preconditioning") or {}).get("type"),
        num_classes=null_class if null_class is not None else config.get("num_class_embeds"),
        class_names=list((config.get("id2label") or {}).values()),
        parameters=f"{count_parameters(unet):,}",
        block_out_channels=", ".join(str(c) for c in config.block_out_channels),
        sample_size=config.sample_size,
        in_channels=config.in_channels,
        ode_order=config.get("ode_order", "none"),
        solver=solver_text,
        evaluations_per_call=(unet.evaluations_per_call() or "adaptive") if solver else 0,
        gflops=f"{count_forward_flops(unet) / 1e9:.3f}",
        training_settings=training_settings,
        metrics=metrics,
        ddpm_pipeline_schedulers=", ".join(f"`{name}`" for name in DDPM_PIPELINE_SCHEDULERS),
        machine=machine,
    )
