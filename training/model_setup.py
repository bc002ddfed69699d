"""The model a run trains, built from the options: the preset, the user's JSON, the data's channels and classes;
and the objective (how it is trained) that goes with it."""

from __future__ import annotations

import argparse
import inspect
import json
from pathlib import Path
from typing import Any

from diffusers import UNet2DModel

from diffusers_cunet import ContinuousUNet2DModel
from diffusers_cunet.acceleration import check_capturable
from diffusers_cunet.guidance import NULL_CLASS_KEY
from diffusers_cunet.noise_schedule import make_noise_scheduler
from diffusers_cunet.objectives import DDPMObjective, EDMObjective, Objective
from diffusers_cunet.preconditioned_unet_2d import PreconditionedUNet2DModel
from diffusers_cunet.presets import DEFAULT_PRESET, preset_config
from training.baselines import UNET2D_PRESETS, unet2d_config
from training.data import infer_channels
from training.options import loss_weight_warmup_steps, names_with_hints

MODEL_CLASSES = {"cunet": ContinuousUNet2DModel, "unet2d": UNet2DModel}


def model_class_for(args: argparse.Namespace) -> type:
    """The class a run builds: an EDM-trained or guidable UNet2DModel records its preconditioning and null class,
    as a cUNet does; any other stays diffusers' own class (so `DDPMPipeline` and any diffusers code load it)."""
    if args.model_type == "unet2d" and (args.preconditioning != "none" or args.class_dropout_prob):
        return PreconditionedUNet2DModel
    return MODEL_CLASSES[args.model_type]


def data_channels(args: argparse.Namespace, dataset, image_column: str) -> int:
    """--channels, or (auto) the channels the data has: a colour folder never becomes a greyscale model."""
    return int(args.channels) if args.channels != "auto" else infer_channels(dataset, image_column)


def model_arguments(args: argparse.Namespace, n_classes: int | None, channels: int | None = None,
                    class_names: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    cunet = args.model_type == "cunet"
    preset = args.model_preset or DEFAULT_PRESET
    config = preset_config(preset) if cunet else dict(UNET2D_PRESETS[preset])
    model_class = model_class_for(args)
    user_config = read_model_config(args.model_config, model_class) if args.model_config is not None else {}
    if channels is not None and "in_channels" not in user_config:
        config.update(in_channels=channels, out_channels=channels)
    config.update(user_config)
    solver_options = {
        "ode_order": args.ode_order,
        "solver_method": args.solver_method,
        "solver_steps": args.solver_steps,
    }
    given = [f"--{k}" for k, v in solver_options.items() if v is not None]
    if args.solver_steps_choices:
        given.append("--solver_steps_choices")
    if args.block_skip_prob or args.block_skip_blocks:
        given.append("--block_skip_prob")
    if given and not cunet:
        raise ValueError(f"{', '.join(given)} only apply to --model_type cunet.")
    if cunet and args.solver_steps_choices:  # the saved model runs at full effort unless a schedule says otherwise
        solver_options["solver_steps"] = max(args.solver_steps_choices)
    overrides = {
        **(solver_options if cunet else {}),
        "num_class_embeds": n_classes,
        **null_class_options(args, n_classes),
    }
    config.update({k: v for k, v in overrides.items() if v is not None})
    if class_names and "id2label" in inspect.signature(model_class.__init__).parameters:
        config["id2label"] = {str(index): name for index, name in enumerate(class_names)}
    if args.block_out_channels:
        if cunet:
            config["block_out_channels"] = tuple(args.block_out_channels)
            if len(config["attention_levels"]) != len(config["block_out_channels"]):
                config["attention_levels"] = (False,) * (len(config["block_out_channels"]) - 1) + (True,)
        else:
            config.update(
                unet2d_config(config["sample_size"], config["in_channels"], tuple(args.block_out_channels),
                              config.get("layers_per_block", 2), config.get("norm_num_groups", 8))
            )  # fmt: skip
    if args.resolution is not None:
        config["sample_size"] = args.resolution
    if args.preconditioning != "none":
        config["preconditioning"] = preconditioning_config(args)
    return config


def null_class_options(args: argparse.Namespace, n_classes: int | None) -> dict[str, Any]:
    """The class embeddings and null class of a run with `--class_dropout_prob` (one embedding more than the data set
    has classes, the last one "no class"), or nothing."""
    if not args.class_dropout_prob:
        return {}
    if not n_classes:
        raise ValueError("--class_dropout_prob needs class labels: name their column with --class_column.")
    return {"num_class_embeds": n_classes + 1, NULL_CLASS_KEY: n_classes}


def read_model_config(path: str, model_class: type) -> dict[str, Any]:
    """The `--model_config` JSON (a file, or inline): constructor arguments of `model_class`, every name checked
    against it."""
    inline = path.lstrip().startswith("{")  # inline JSON (or a YAML mapping, which the options pass as JSON)
    file = Path(path)
    if not inline and not file.is_file():
        raise ValueError(f"--model_config {path!r} does not exist.")
    try:
        config = json.loads(path if inline else file.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"--model_config {path!r} is not valid JSON: {error}") from error
    if not isinstance(config, dict):
        raise ValueError(f"--model_config {path!r} must hold a JSON object of {model_class.__name__} arguments.")
    accepted = [name for name in inspect.signature(model_class.__init__).parameters if name != "self"]
    unknown = sorted(name for name in config if name not in accepted and not name.startswith("_"))
    if unknown:
        text = names_with_hints(unknown, accepted)
        raise ValueError(f"--model_config {path!r}: {model_class.__name__} takes no argument(s) {text}.")
    return {name: value for name, value in config.items() if not name.startswith("_")}


def skippable_blocks(args: argparse.Namespace, model) -> tuple[str, ...]:
    """The ODE blocks `--block_skip_prob` may skip (checked against the model's), or `()` when it is off."""
    if not args.block_skip_prob:
        return ()
    names = tuple(model.ode_block_names)
    chosen = tuple(args.block_skip_blocks or names)
    unknown = [name for name in chosen if name not in names]
    if unknown:
        raise ValueError(f"--block_skip_blocks: no ODE block(s) {names_with_hints(unknown, names)} in this model.")
    return chosen


def build_model(model_class: type, config: dict[str, Any], source: str | None):
    """`model_class(**config)`, a wrong value type reported as a `ValueError` that names where the config came from."""
    try:
        return model_class(**config)
    except TypeError as error:
        where = f"--model_config {source!r}" if source else "the model options"
        raise ValueError(f"{model_class.__name__} cannot be built from {where}: {error}") from error


def preconditioning_config(args: argparse.Namespace) -> dict[str, Any]:
    config = {"type": args.preconditioning, "sigma_data": args.sigma_data}
    if args.preconditioning == "edm-fdm":
        config.update(momentum=args.fdm_momentum, beta_min=args.fdm_beta_min, beta_d=args.fdm_beta_d)
        config["normalize_input"] = args.fdm_normalize_input
    return config


def fit_to_images(config: dict[str, Any], args: argparse.Namespace, image_size: int, warn) -> None:
    """The data decides the resolution: given no --model_preset and no --resolution, the model takes the images'
    size (their short side); otherwise a model of another size than the images is said aloud, never silent. The
    embedded digits (8x8) keep the default preset's 16x16, their documented recipe."""
    if args.dataset_name == "digits" and not args.train_data_dir:
        return
    if args.resolution is None and args.model_preset is None:
        factor = 2 ** (len(config["block_out_channels"]) - 1)
        if image_size % factor:
            raise ValueError(
                f"The images are {image_size} pixels on their short side, which the {DEFAULT_PRESET} model's "
                f"{len(config['block_out_channels'])} levels cannot take (a multiple of {factor} is needed): pass "
                "--resolution (e.g. the nearest multiple) or a --model_preset."
            )
        config["sample_size"] = image_size
    elif image_size != config["sample_size"]:
        how = "padded or cropped" if args.image_fit == "pad" else "resized (short side) and cropped"
        size = config["sample_size"]
        warn(f"The images are {image_size} pixels on their short side and the model's sample size is {size}: "
             f"every image is {how} to {size}x{size}.")  # fmt: skip


def check_resolution(resolution: int, config: dict[str, Any]) -> None:
    factor = 2 ** (len(config["block_out_channels"]) - 1)
    if resolution < factor or resolution % factor:
        raise ValueError(
            f"--resolution {resolution} cannot be taken by a model with {len(config['block_out_channels'])} levels: "
            f"it must be a positive multiple of {factor}."
        )


def compile_in_place(unet, args) -> None:
    """`--torch_compile`: compile the forward pass in place, so the module, its state dict and accelerate's
    checkpoints are the same as without compiling. A cUNet must be one graph (each break would stall a GPU)."""
    is_cunet = isinstance(unet, ContinuousUNet2DModel)
    if is_cunet:
        check_capturable(unet, "--torch_compile")
    mode = None if args.torch_compile_mode == "default" else args.torch_compile_mode
    unet.compile(fullgraph=is_cunet, mode=mode, backend=args.torch_compile_backend)


def make_objective(args: argparse.Namespace, model) -> Objective:
    """The training objective the options ask for; an EDM objective uses the model's own preconditioning (the
    one recorded in its config), so it is built once."""
    if args.preconditioning == "none":
        return DDPMObjective(make_noise_scheduler(args.num_train_timesteps, args.beta_schedule, args.prediction_type))
    return EDMObjective(model.preconditioning, args.edm_p_mean, args.edm_p_std, loss_weight_warmup_steps(args))
