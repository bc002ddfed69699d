#!/usr/bin/env python
"""Train a continuous U-Net (ContinuousUNet2DModel) on a `datasets` image set.

    accelerate launch training/train.py --config training/configs/digits.yaml --output_dir outputs/digits
    python training/train.py --dataset_name uoft-cs/cifar10 --model_preset cifar10-32 --output_dir outputs/c10

Options come from the command line, on top of an optional YAML `--config` (the command line wins). The run
writes checkpoints (`checkpoint-N/`, atomically), sample grids (`samples/`), tensorboard logs (`logs/`) and,
at the end, a diffusers `DDPMPipeline` with the EMA weights (a `ContinuousUNetPipeline` with an EDM scheduler
for `--preconditioning edm|edm-fdm`), a `samples.png` grid, `metrics.json` and a model card `README.md` into
`--output_dir`.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import inspect
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers import DDIMScheduler, DDPMPipeline, UNet2DModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from diffusers.utils import make_image_grid
from diffusers_cunet.pipelines import ContinuousUNetPipeline
from diffusers_cunet.pipelines.scheduler_support import loading_advice
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from diffusers_cunet import ContinuousUNet2DModel
from diffusers_cunet.acceleration import check_capturable
from diffusers_cunet.baselines import UNET2D_PRESETS, unet2d_config
from diffusers_cunet.checkpointing import (
    checkpoint_step,
    remove_partial_checkpoints,
    resolve_checkpoint,
    save_checkpoint,
)
from diffusers_cunet.flops import count_parameters
from diffusers_cunet.image_data import (
    EpochShuffleSampler,
    ImageTransform,
    collate,
    drop_unreadable_images,
    find_image_column,
    infer_channels,
    load_image_dataset,
    num_classes,
    prepare_dataset,
)
from diffusers_cunet.model_card import render_model_card
from diffusers_cunet.noise_schedule import BETA_SCHEDULES, PREDICTION_TYPES, make_noise_scheduler
from diffusers_cunet.preconditioning import PRECONDITIONING_TYPES, edm_scheduler, loss_weight_cap
from diffusers_cunet.presets import PRESETS, preset_config

logger = logging.getLogger("diffusers_cunet.train")

MODEL_CONFIG_FILE = "model_config.json"
MODEL_CLASSES = {"cunet": ContinuousUNet2DModel, "unet2d": UNet2DModel}
EMA_FOLDER = "unet_ema"
RUN_RECORD_FILE = "run_record.json"
NOT_UPLOADED = ("checkpoint-*/**", ".checkpoint-*/**", "logs/**", "process_logs/**", "samples/**")


# ----------------------------------------------------------------------------- options
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=str, default=None, help="YAML file of option defaults (command line wins).")
    data = p.add_argument_group("data")
    data.add_argument("--dataset_name", default="digits", help="Hub data set name, or 'digits' (embedded).")
    data.add_argument("--dataset_config_name", default=None)
    data.add_argument("--train_data_dir", default=None, help="Local image folder (datasets' imagefolder).")
    data.add_argument("--split", default="train")
    data.add_argument("--cache_dir", default=None)
    data.add_argument("--image_column", default=None, help="Image column; found automatically if omitted.")
    data.add_argument("--class_column", default=None, help="Column of class labels: trains class-conditionally.")
    data.add_argument("--resolution", type=int, default=None, help="Image size; the model's sample_size if omitted.")
    data.add_argument("--center_crop", action=argparse.BooleanOptionalAction, default=True)
    data.add_argument("--random_flip", action=argparse.BooleanOptionalAction, default=False)
    data.add_argument("--max_train_samples", type=int, default=None)
    data.add_argument(
        "--skip_bad_images",
        action="store_true",
        help="Leave out images that cannot be decoded (each named in a warning) instead of stopping before training.",
    )
    data.add_argument("--dataloader_num_workers", type=int, default=0)
    model = p.add_argument_group("model")
    model.add_argument(
        "--model_type",
        default="cunet",
        choices=sorted(MODEL_CLASSES),
        help="cunet: ContinuousUNet2DModel; unet2d: diffusers' UNet2DModel, the baseline, with the same recipe.",
    )
    model.add_argument("--model_preset", default="digits-16", choices=sorted(PRESETS))
    model.add_argument(
        "--channels",
        default="auto",
        choices=["auto", "1", "3"],
        help="Image channels of the model: auto follows the data (3 if any probed image has colour), unless "
        "--model_config sets in_channels.",
    )
    model.add_argument("--model_config", default=None, help="JSON file of model constructor arguments.")
    model.add_argument("--block_out_channels", type=int, nargs="+", default=None)
    model.add_argument("--ode_order", choices=["first", "second"], default=None)
    model.add_argument("--solver_method", default=None)
    model.add_argument("--solver_steps", type=int, default=None)
    model.add_argument(
        "--solver_steps_choices",
        type=int,
        nargs="+",
        default=None,
        help="Step-aware training: each batch runs the ODE blocks with a step count drawn from these, so the "
        "model works at every effort a solver schedule may pick (cUNet only).",
    )
    diffusion = p.add_argument_group("diffusion")
    diffusion.add_argument("--num_train_timesteps", type=int, default=1000)
    diffusion.add_argument("--beta_schedule", choices=BETA_SCHEDULES, default="squaredcos_cap_v2")
    diffusion.add_argument("--prediction_type", choices=PREDICTION_TYPES, default="epsilon")
    diffusion.add_argument(
        "--preconditioning",
        choices=["none", *PRECONDITIONING_TYPES],
        default="none",
        help="none: DDPM-style training on the discrete schedule above; edm: EDM preconditioning and loss "
        "(Karras et al. 2022); edm-fdm: EDM with FDM's momentum input scaling and loss-weight warm-up.",
    )
    diffusion.add_argument("--sigma_data", type=float, default=0.5, help="EDM: data standard deviation.")
    diffusion.add_argument("--edm_p_mean", type=float, default=-1.2, help="EDM: mean of log(sigma) in training.")
    diffusion.add_argument("--edm_p_std", type=float, default=1.2, help="EDM: std of log(sigma) in training.")
    diffusion.add_argument("--fdm_momentum", type=float, default=1.0, help="EDM-FDM: momentum multiplier m.")
    diffusion.add_argument("--fdm_beta_min", type=float, default=0.1, help="EDM-FDM: beta(t) slope at t = 0.")
    diffusion.add_argument("--fdm_beta_d", type=float, default=19.9, help="EDM-FDM: beta(t) curvature.")
    diffusion.add_argument(
        "--fdm_normalize_input",
        action="store_true",
        help="EDM-FDM, our variant: multiply EDM's c_in by FDM's factor instead of replacing it.",
    )
    diffusion.add_argument(
        "--loss_weight_warmup_steps",
        type=int,
        default=None,
        help="EDM losses: clip the loss weight at a cap growing from 5 to 500 over this many steps (FDM's warm-up). "
        "Default: 200 for edm-fdm, 0 (off) for edm.",
    )
    optim = p.add_argument_group("optimisation")
    optim.add_argument("--train_batch_size", type=int, default=64, help="Per process.")
    optim.add_argument("--max_train_steps", type=int, default=2000, help="Optimizer steps.")
    optim.add_argument("--learning_rate", type=float, default=1e-3)
    optim.add_argument("--lr_scheduler", default="cosine")
    optim.add_argument("--lr_warmup_steps", type=int, default=100)
    optim.add_argument("--adam_beta1", type=float, default=0.9)
    optim.add_argument("--adam_beta2", type=float, default=0.999)
    optim.add_argument("--adam_weight_decay", type=float, default=0.0)
    optim.add_argument("--adam_epsilon", type=float, default=1e-8)
    optim.add_argument("--gradient_accumulation_steps", type=int, default=1)
    optim.add_argument("--max_grad_norm", type=float, default=1.0)
    optim.add_argument(
        "--mixed_precision",
        choices=["no", "fp16", "bf16"],
        default=None,
        help="Default: accelerate's setting (`accelerate launch --mixed_precision`, `accelerate config`), else no.",
    )
    optim.add_argument("--gradient_checkpointing", action="store_true")
    optim.add_argument(
        "--torch_compile",
        action="store_true",
        help="Compile the model in place (nn.Module.compile, so checkpoints keep their keys); a cUNet must compile "
        "as one graph, which needs a fixed-grid solver without the adjoint.",
    )
    optim.add_argument(
        "--torch_compile_mode", choices=["default", "reduce-overhead", "max-autotune-no-cudagraphs"], default="default"
    )
    optim.add_argument("--torch_compile_backend", default="inductor", help="e.g. aot_eager to debug on a CPU.")
    optim.add_argument("--use_ema", action=argparse.BooleanOptionalAction, default=True)
    optim.add_argument("--ema_max_decay", type=float, default=0.999)
    optim.add_argument("--ema_inv_gamma", type=float, default=1.0)
    optim.add_argument("--ema_power", type=float, default=0.75)
    optim.add_argument("--seed", type=int, default=0)
    out = p.add_argument_group("validation, checkpoints and output")
    out.add_argument("--output_dir", default="outputs/cunet")
    out.add_argument("--validation_steps", type=int, default=500, help="Sample a grid every N steps (0: only at end).")
    out.add_argument("--num_validation_images", type=int, default=64)
    out.add_argument("--validation_inference_steps", type=int, default=50, help="DDIM steps for sample grids.")
    out.add_argument("--checkpointing_steps", type=int, default=500)
    out.add_argument("--checkpoints_total_limit", type=int, default=2)
    out.add_argument("--resume_from_checkpoint", default=None, help="'latest' or a checkpoint folder.")
    out.add_argument("--logging_steps", type=int, default=10)
    out.add_argument("--report_to", choices=["tensorboard", "none"], default="tensorboard")
    out.add_argument("--push_to_hub", action="store_true")
    out.add_argument("--hub_model_id", default=None)
    out.add_argument("--hub_token", default=None)
    out.add_argument("--hub_private", action="store_true")
    out.add_argument(
        "--record_process_log",
        action="store_true",
        help="Write, per process, the example indices of every step and a digest of the final weights to "
        "<output_dir>/process_logs/ (to check data sharding and replica synchronisation).",
    )
    return p


def names_with_hints(unknown: list[str], known: list[str]) -> str:
    """`'lr' (did you mean 'learning_rate'?), ...` for the names in `unknown`."""
    hints = {name: difflib.get_close_matches(name, known, n=1) for name in unknown}
    return ", ".join(f"{name!r}" + (f" (did you mean {hints[name][0]!r}?)" if hints[name] else "") for name in unknown)


def config_tokens(parser: argparse.ArgumentParser, path: Path) -> list[str]:
    """The options of a YAML `--config` file as command-line tokens, each value checked as the command line checks
    it (type, choices, flags), with errors naming the file: a config can set nothing the command line refuses."""
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        parser.error(f"{path} is not valid YAML: {error}")
    if not isinstance(values, dict):
        parser.error(f"{path} must be a mapping of option names to values, got {type(values).__name__}.")
    actions = {action.dest: action for action in parser._actions if action.dest not in ("help", "config")}
    unknown = sorted(set(values) - set(actions))
    if unknown:
        parser.error(f"Unknown option(s) in {path}: {names_with_hints(unknown, list(actions))}.")
    tokens: list[str] = []
    for name, value in values.items():
        action = actions[name]
        flag = next(option for option in action.option_strings if option.startswith("--"))
        where = f"{path}: {name}"
        if action.nargs == 0 or isinstance(action, argparse.BooleanOptionalAction):
            if not isinstance(value, bool):
                parser.error(f"{where} must be true or false, got {value!r}.")
            if isinstance(action, argparse.BooleanOptionalAction):
                tokens.append(flag if value else f"--no-{flag[2:]}")
            elif value:
                tokens.append(flag)
            continue
        if value is None:
            continue
        items = value if isinstance(value, list) else [value]
        if isinstance(value, list) and action.nargs is None:
            parser.error(f"{where} takes one value, got the list {value!r}.")
        texts = []
        for item in items:
            text = str(item).lower() if isinstance(item, bool) else str(item)
            try:
                converted = action.type(text) if action.type else text
            except (TypeError, ValueError):
                parser.error(f"{where}: {item!r} is not a valid {getattr(action.type, '__name__', 'value')}.")
            if action.choices is not None and converted not in action.choices:
                choices = ", ".join(map(str, action.choices))
                parser.error(f"{where}: {item!r} is not one of the choices ({choices}).")
            texts.append(text)
        tokens += [flag, *texts]
    return tokens


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    first, _ = parser.parse_known_args(argv)
    if first.config is not None:
        path = Path(first.config)
        if not path.is_file():
            parser.error(f"--config {first.config!r} does not exist.")
        argv = config_tokens(parser, path) + argv  # later tokens win: the command line overrides the file
    args = parser.parse_args(argv)
    positive = ["train_batch_size", "max_train_steps", "gradient_accumulation_steps", "num_validation_images"]
    for name in positive:
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be positive, got {getattr(args, name)}.")
    if args.preconditioning == "none":
        edm_only = [name for name in ("loss_weight_warmup_steps",) if getattr(args, name) is not None]
        edm_only += ["fdm_normalize_input"] if args.fdm_normalize_input else []
        if edm_only:
            parser.error(f"--{edm_only[0]} applies to --preconditioning edm or edm-fdm only.")
    else:
        if args.prediction_type != "epsilon":
            parser.error("--prediction_type applies to DDPM-style training (--preconditioning none) only.")
        if args.model_type != "cunet":
            parser.error("--preconditioning edm|edm-fdm is recorded in the ContinuousUNet2DModel config: cunet only.")
        if args.fdm_normalize_input and args.preconditioning != "edm-fdm":
            parser.error("--fdm_normalize_input applies to --preconditioning edm-fdm only.")
        if args.loss_weight_warmup_steps is None:
            args.loss_weight_warmup_steps = 200 if args.preconditioning == "edm-fdm" else 0
        if args.loss_weight_warmup_steps < 0:
            parser.error(f"--loss_weight_warmup_steps must be >= 0, got {args.loss_weight_warmup_steps}.")
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id (e.g. org/cunet-digits).")
    return args


# ----------------------------------------------------------------------------- building blocks
def data_channels(args: argparse.Namespace, dataset, image_column: str) -> int:
    """--channels, or (auto) the channels the data has: a colour folder never becomes a greyscale model."""
    return int(args.channels) if args.channels != "auto" else infer_channels(dataset, image_column)


def model_arguments(args: argparse.Namespace, n_classes: int | None, channels: int | None = None) -> dict[str, Any]:
    cunet = args.model_type == "cunet"
    config = preset_config(args.model_preset) if cunet else dict(UNET2D_PRESETS[args.model_preset])
    model_class = MODEL_CLASSES[args.model_type]
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
    if given and not cunet:
        raise ValueError(f"{', '.join(given)} only apply to --model_type cunet.")
    if cunet and args.solver_steps_choices:  # the saved model runs at full effort unless a schedule says otherwise
        solver_options["solver_steps"] = max(args.solver_steps_choices)
    overrides = {**(solver_options if cunet else {}), "num_class_embeds": n_classes}
    config.update({k: v for k, v in overrides.items() if v is not None})
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


def read_model_config(path: str, model_class: type) -> dict[str, Any]:
    """The `--model_config` JSON: constructor arguments of `model_class`, every name checked against it."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"--model_config {path!r} does not exist.")
    try:
        config = json.loads(file.read_text())
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


def sampling_scheduler(model, noise_scheduler):
    """The fast sampler for grids and the saved pipeline: DDIM on the training schedule, or DPM-Solver++ (2M)
    on EDM's sigmas for a preconditioned model."""
    if getattr(model, "preconditioning", None) is not None:
        return edm_scheduler(model, "dpmsolver++")
    return DDIMScheduler.from_config(noise_scheduler.config)


def check_data_folder(data_dir: Path, output_dir: Path) -> None:
    """Refuse a data folder that holds a training output (its sample grids would become training images) or that
    would receive this run's output."""
    if data_dir.is_dir():
        outputs = sorted(path.parent for path in data_dir.rglob("model_index.json"))
        if outputs:
            raise ValueError(
                f"--train_data_dir {str(data_dir)!r} contains a saved pipeline ({outputs[0]}): its sample grids would "
                "be trained on as images. Move training outputs out of the data folder."
            )
    if output_dir.resolve().is_relative_to(data_dir.resolve()):
        raise ValueError(
            f"--output_dir {str(output_dir)!r} lies inside --train_data_dir {str(data_dir)!r}: the run's sample grids "
            "would become training images of the next run. Choose an output folder outside the data."
        )


def check_resolution(resolution: int, config: dict[str, Any]) -> None:
    factor = 2 ** (len(config["block_out_channels"]) - 1)
    if resolution < factor or resolution % factor:
        raise ValueError(
            f"--resolution {resolution} cannot be taken by a model with {len(config['block_out_channels'])} levels: "
            f"it must be a positive multiple of {factor}."
        )


def check_checkpoint_matches(checkpoint: Path, model_config: dict[str, Any]) -> None:
    """Refuse, before any compute, a checkpoint written for another architecture."""
    saved_path = checkpoint / MODEL_CONFIG_FILE
    if not saved_path.is_file():
        raise ValueError(f"{checkpoint} is not a checkpoint of this training script: {MODEL_CONFIG_FILE} is missing.")
    saved = json.loads(saved_path.read_text())
    current = json.loads(json.dumps(model_config))
    keys = sorted(k for k in set(saved) | set(current) if not k.startswith("_") and not k.startswith("solver_"))
    different = {k: (saved.get(k), current.get(k)) for k in keys if saved.get(k) != current.get(k)}
    if different:
        details = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in different.items())
        raise ValueError(f"Checkpoint {checkpoint} belongs to another model ({details}).")


def sample_grid(
    unet, noise_scheduler, args, n_classes: int | None, device, progress: str | None = None
) -> tuple[torch.Tensor, Any]:
    """Draw `num_validation_images` with a fast sampler and return them in [0, 1] with their image grid; a bar
    named `progress` shows the sampling steps (None: no bar)."""
    pipeline = ContinuousUNetPipeline(unet=unet, scheduler=sampling_scheduler(unet, noise_scheduler))
    pipeline.set_progress_bar_config(disable=progress is None, desc=progress, leave=False)
    labels = torch.arange(args.num_validation_images) % n_classes if n_classes else None
    images = pipeline(
        batch_size=args.num_validation_images,
        generator=torch.Generator(device="cpu").manual_seed(args.seed),
        num_inference_steps=args.validation_inference_steps,
        output_type="pt",
        class_labels=labels,
    ).images
    pil = ContinuousUNetPipeline.numpy_to_pil(images.cpu().permute(0, 2, 3, 1).numpy())
    # A thin grey frame around each sample: digits fill their whole cell and would otherwise run together.
    pil = [ImageOps.expand(image.convert("RGB"), border=1, fill=(128, 128, 128)) for image in pil]
    columns = math.ceil(math.sqrt(len(pil)))
    rows = math.ceil(len(pil) / columns)
    pil += [Image.new("RGB", pil[0].size, (128, 128, 128))] * (rows * columns - len(pil))
    scale = max(1, 64 // pil[0].width)  # small images are enlarged (nearest neighbour) to be seen
    grid = make_image_grid(pil, rows=rows, cols=columns)
    return images, grid.resize((grid.width * scale, grid.height * scale), resample=Image.Resampling.NEAREST)


def step_generator(seed: int, micro_step: int, process_index: int, device) -> torch.Generator:
    """Noise and timesteps of a micro-batch depend only on (seed, step, process): resumed runs repeat them."""
    generator = torch.Generator(device=device)
    generator.manual_seed((seed * 1_000_003 + micro_step) * 131 + process_index)
    return generator


# ----------------------------------------------------------------------------- the two losses
def ddpm_loss(unet, noise_scheduler, clean, noise, timesteps, prediction_type: str, model_kwargs) -> torch.Tensor:
    """MSE of the network's prediction (noise, velocity or clean image) at discrete `timesteps`."""
    noisy = noise_scheduler.add_noise(clean, noise, timesteps)
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(clean, noise, timesteps)
    else:
        target = clean
    prediction = unet(noisy, timesteps, **model_kwargs).sample
    return F.mse_loss(prediction.float(), target.float())


def edm_loss(unet, preconditioning, clean, noise, sigma, weight_cap: float, model_kwargs) -> torch.Tensor:
    """EDM's loss lambda(sigma) |D(clean + sigma n; sigma) - clean|^2 at noise levels `sigma` (one per image; drawn
    log-normally by the caller); lambda = 1 / c_out^2 is clipped at `weight_cap` during FDM's warm-up."""
    noisy = clean + sigma[:, None, None, None] * noise
    denoised = preconditioning.denoise(unet, noisy, sigma, **model_kwargs)
    weight = preconditioning.loss_weight(sigma).clamp(max=weight_cap)[:, None, None, None]
    return (weight * (denoised.float() - clean.float()) ** 2).mean()


# ----------------------------------------------------------------------------- training
def requested_processes(parent_pid: int | None = None) -> int | None:
    """The process count `accelerate launch` was asked for, when it started this script: its `--num_processes`,
    else the one in its config file. None when not started by `accelerate launch` or when it cannot be read
    (the launcher passes no such count to its workers, so the launcher's command line is read from /proc)."""
    try:
        command = Path(f"/proc/{parent_pid or os.getppid()}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return None
    by_module = "accelerate.commands.launch" in command  # python -m accelerate.commands.launch
    by_cli = "launch" in command and any(Path(part).name == "accelerate" for part in command)
    if not (by_module or by_cli):
        return None
    config_file = None
    for i, part in enumerate(command):
        name, _, value = part.partition("=")
        if name in ("--num_processes", "--num-processes"):
            value = value or (command[i + 1] if i + 1 < len(command) else "")
            return int(value) if value.isdigit() else None
        if name in ("--config_file", "--config-file"):
            config_file = value or (command[i + 1] if i + 1 < len(command) else None)
    from accelerate.commands.config import default_config_file

    config_path = Path(config_file or default_config_file)
    if not config_path.is_file():
        return None
    try:
        count = (yaml.safe_load(config_path.read_text()) or {}).get("num_processes")
    except yaml.YAMLError:
        return None
    return count if isinstance(count, int) else None


def warn_if_fewer_processes(num_processes: int, parent_pid: int | None = None) -> str | None:
    """A warning (also returned) when `accelerate launch` was asked for more processes than it started: without
    `--multi_gpu` (or a multi-process config) it silently runs one, e.g. `--cpu --num_processes 2`."""
    requested = requested_processes(parent_pid)
    if requested is None or requested <= num_processes:
        return None
    message = (
        f"accelerate launch was asked for {requested} processes but started {num_processes}. For several processes "
        f"on one machine add --multi_gpu (on a machine without GPUs: ACCELERATE_USE_CPU=1 accelerate launch "
        f"--multi_gpu --num_processes {requested} ..., DDP over gloo); see the README."
    )
    logger.warning(message)
    return message


def compile_in_place(unet, args) -> None:
    """`--torch_compile`: compile the forward pass in place, so the module, its state dict and accelerate's
    checkpoints are the same as without compiling. A cUNet must be one graph (each break would stall a GPU)."""
    is_cunet = isinstance(unet, ContinuousUNet2DModel)
    if is_cunet:
        check_capturable(unet, "--torch_compile")
    mode = None if args.torch_compile_mode == "default" else args.torch_compile_mode
    unet.compile(fullgraph=is_cunet, mode=mode, backend=args.torch_compile_backend)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if args.lr_warmup_steps >= args.max_train_steps:
        logger.warning(
            "--lr_warmup_steps %d is not shorter than --max_train_steps %d: the learning rate never reaches "
            "--learning_rate %g. Lower the warm-up (e.g. to a tenth of the run).",
            args.lr_warmup_steps,
            args.max_train_steps,
            args.learning_rate,
        )
    output_dir = Path(args.output_dir)

    # 1. Everything that can be wrong with the input is checked before any compute or any file is written.
    if args.train_data_dir:
        check_data_folder(Path(args.train_data_dir), output_dir)
    if args.push_to_hub:
        check_hub_access(args.hub_model_id, args.hub_token)
    dataset = load_image_dataset(
        None if args.train_data_dir else args.dataset_name,
        args.dataset_config_name,
        args.train_data_dir,
        args.split,
        args.cache_dir,
    )
    image_column = find_image_column(dataset.column_names, args.image_column)
    n_classes = num_classes(dataset, args.class_column) if args.class_column else None
    if args.max_train_samples is not None:
        dataset = dataset.select(range(min(args.max_train_samples, len(dataset))))
    source = args.train_data_dir or args.dataset_name
    dataset = drop_unreadable_images(dataset, image_column, args.skip_bad_images, source, warn=logger.warning)
    model_config = model_arguments(args, n_classes, data_channels(args, dataset, image_column))
    resolution = model_config["sample_size"]
    check_resolution(resolution, model_config)
    model_class = MODEL_CLASSES[args.model_type]
    set_seed(args.seed)  # before the model: identical initial weights in every run and every process
    unet = build_model(model_class, model_config, args.model_config)  # validates architecture and solver
    if args.torch_compile:
        compile_in_place(unet, args)
    checkpoint = resolve_checkpoint(output_dir, args.resume_from_checkpoint)
    if checkpoint is None and args.resume_from_checkpoint == "latest":
        logger.warning("--resume_from_checkpoint latest: no checkpoint in %s yet, starting from step 0.", output_dir)
    if checkpoint is not None:
        check_checkpoint_matches(checkpoint, dict(unet.config))
        done = checkpoint_step(checkpoint)
        if done >= args.max_train_steps:
            # Nothing is lost: a finished run is not trained further, and nothing in output_dir is rewritten.
            message = (f"{checkpoint} is already at step {done} (--max_train_steps {args.max_train_steps}): nothing "
                       f"to do, {output_dir} left as it is. Raise --max_train_steps to train further.")  # fmt: skip
            logger.warning(message)
            print(message)
            return {"global_step": done, "output_dir": str(output_dir), "already_done": True}

    # 2. Accelerator, seeded model, data, optimisation.
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
    )
    if accelerator.is_main_process:
        warn_if_fewer_processes(accelerator.num_processes)
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    noise_scheduler = make_noise_scheduler(args.num_train_timesteps, args.beta_schedule, args.prediction_type)
    preconditioning = getattr(unet, "preconditioning", None)
    transform = ImageTransform(
        resolution,
        model_config["in_channels"],
        image_column,
        args.center_crop,
        args.random_flip,
        args.class_column,
        seed=args.seed,
    )
    train_data = prepare_dataset(dataset, transform)
    sampler = EpochShuffleSampler(len(train_data), seed=args.seed)
    dataloader = torch.utils.data.DataLoader(
        train_data,
        batch_size=args.train_batch_size,
        sampler=sampler,
        collate_fn=collate,
        num_workers=args.dataloader_num_workers,
        drop_last=len(train_data) >= args.train_batch_size,
    )
    optimizer = torch.optim.AdamW(
        unet.parameters(),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )
    # A prepared scheduler steps once per process per optimizer step, hence the factor.
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )
    unet, optimizer, dataloader, lr_scheduler = accelerator.prepare(unet, optimizer, dataloader, lr_scheduler)
    ema = None
    if args.use_ema:
        ema = EMAModel(
            accelerator.unwrap_model(unet).parameters(),
            decay=args.ema_max_decay,
            use_ema_warmup=True,
            inv_gamma=args.ema_inv_gamma,
            power=args.ema_power,
            model_cls=model_class,
            model_config=accelerator.unwrap_model(unet).config,
        )
        ema.to(accelerator.device)

    # 3. Checkpoint hooks: the EMA weights go in as safetensors, with the model config to check on resume and the
    # run's record (loss history, time, images), so a resumed run reports the whole run, not only its last part.
    history: list[dict[str, float]] = []
    train_time, images_seen = 0.0, 0

    def save_hook(models, weights, folder):
        if accelerator.is_main_process:
            Path(folder, MODEL_CONFIG_FILE).write_text(
                json.dumps(dict(accelerator.unwrap_model(unet).config), indent=2)
            )
            record = {"history": history, "train_time": train_time, "images_seen": images_seen}
            Path(folder, RUN_RECORD_FILE).write_text(json.dumps(record))
            if ema is not None:
                ema.save_pretrained(str(Path(folder, EMA_FOLDER)))

    def load_hook(models, folder):
        if ema is not None:
            loaded = EMAModel.from_pretrained(str(Path(folder, EMA_FOLDER)), model_class)
            ema.load_state_dict(loaded.state_dict())
            ema.to(accelerator.device)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)

    steps_per_epoch = math.ceil(len(dataloader) / args.gradient_accumulation_steps)
    num_epochs = math.ceil(args.max_train_steps / steps_per_epoch)
    global_step = 0
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        remove_partial_checkpoints(output_dir)
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        global_step = checkpoint_step(checkpoint)
        logger.info("Resumed from %s at step %d", checkpoint, global_step)
        if (checkpoint / RUN_RECORD_FILE).is_file():  # checkpoints of older versions have none
            record = json.loads((checkpoint / RUN_RECORD_FILE).read_text())
            history, train_time, images_seen = record["history"], record["train_time"], record["images_seen"]
    start_step = global_step
    if accelerator.is_main_process and args.report_to != "none":
        accelerator.init_trackers(
            "train_cunet", config={k: v for k, v in vars(args).items() if v is not None and not isinstance(v, list)}
        )

    total_batch = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info(
        "%d examples, %d processes, batch %d per process (%d total), %d steps, %s parameters",
        len(train_data),
        accelerator.num_processes,
        args.train_batch_size,
        total_batch,
        args.max_train_steps,
        f"{count_parameters(accelerator.unwrap_model(unet)):,}",
    )

    # 4. The loop.
    progress = tqdm(
        total=args.max_train_steps, initial=global_step, desc="training", disable=not accelerator.is_local_main_process
    )
    first_epoch = global_step // steps_per_epoch
    batches_to_skip = (global_step % steps_per_epoch) * args.gradient_accumulation_steps
    micro_step = global_step * args.gradient_accumulation_steps
    seen_indices: list[list[int]] = []
    losses: list[float] = []
    tick = time.perf_counter()
    for epoch in range(first_epoch, num_epochs):
        transform.epoch = epoch
        loader = dataloader
        if epoch == first_epoch and batches_to_skip:
            loader = accelerator.skip_first_batches(dataloader, batches_to_skip)
        # Through the loader, not the sampler: accelerate's loaders reset the sampler's epoch to their own
        # iteration count when they start, and a loader made by skip_first_batches starts counting at 0.
        loader.set_epoch(epoch)
        unet.train()
        for batch in loader:
            with accelerator.accumulate(unet):
                clean = batch["pixel_values"]
                generator = step_generator(args.seed, micro_step, accelerator.process_index, "cpu")
                noise = torch.randn(clean.shape, generator=generator).to(clean.device, clean.dtype)
                if preconditioning is not None:
                    log_sigma = args.edm_p_mean + args.edm_p_std * torch.randn(clean.shape[0], generator=generator)
                    level = log_sigma.exp().to(clean.device)
                else:
                    level = torch.randint(
                        0, noise_scheduler.config.num_train_timesteps, (clean.shape[0],), generator=generator
                    ).to(clean.device)
                model_kwargs = {"class_labels": batch.get("class_labels")}
                if args.solver_steps_choices:
                    pick = int(torch.randint(len(args.solver_steps_choices), (1,), generator=generator))
                    model_kwargs["solver"] = {"steps": args.solver_steps_choices[pick]}
                if preconditioning is not None:
                    cap = loss_weight_cap(global_step, args.loss_weight_warmup_steps)
                    loss = edm_loss(unet, preconditioning, clean, noise, level, cap, model_kwargs)
                else:
                    loss = ddpm_loss(unet, noise_scheduler, clean, noise, level, args.prediction_type, model_kwargs)
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(unet.parameters(), args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            micro_step += 1
            images_seen += clean.shape[0] * accelerator.num_processes
            losses.append(accelerator.reduce(loss.detach(), reduction="mean").item())
            if args.record_process_log:
                seen_indices.append(batch["index"].tolist())
            if not accelerator.sync_gradients:
                continue

            global_step += 1
            if ema is not None:
                ema.step(accelerator.unwrap_model(unet).parameters())
            progress.update(1)
            if global_step % args.logging_steps == 0 or global_step == args.max_train_steps:
                recent = sum(losses[-args.logging_steps * args.gradient_accumulation_steps :]) / len(
                    losses[-args.logging_steps * args.gradient_accumulation_steps :]
                )
                logs = {"loss": recent, "lr": lr_scheduler.get_last_lr()[0]}
                if ema is not None:
                    logs["ema_decay"] = ema.cur_decay_value
                history.append({"step": global_step, **logs})
                progress.set_postfix(loss=f"{recent:.4f}", lr=f"{logs['lr']:.2e}")
                accelerator.log(logs, step=global_step)
            if args.checkpointing_steps and global_step % args.checkpointing_steps == 0:
                train_time += time.perf_counter() - tick
                save_checkpoint(accelerator, output_dir, global_step, args.checkpoints_total_limit)
                tick = time.perf_counter()
            if (
                args.validation_steps
                and global_step % args.validation_steps == 0
                and global_step < args.max_train_steps
            ):
                train_time += time.perf_counter() - tick
                validate(accelerator, unet, ema, noise_scheduler, args, n_classes, output_dir, global_step)
                tick = time.perf_counter()
            if global_step >= args.max_train_steps:
                break
        if global_step >= args.max_train_steps:
            break
    train_time += time.perf_counter() - tick
    progress.close()
    if args.checkpointing_steps and global_step % args.checkpointing_steps:  # the final state, to train on later
        save_checkpoint(accelerator, output_dir, global_step, args.checkpoints_total_limit)
    if args.record_process_log:
        write_process_log(accelerator, unet, output_dir, seen_indices)

    # 5. Final EMA weights as a DDPMPipeline, a sample grid, metrics and a model card.
    accelerator.wait_for_everyone()
    result: dict[str, Any] = {"global_step": global_step, "output_dir": str(output_dir)}
    if accelerator.is_main_process:
        result.update(
            finish(
                accelerator,
                unet,
                ema,
                noise_scheduler,
                args,
                n_classes,
                output_dir,
                run={
                    "history": history,
                    "losses": losses,
                    "images_seen": images_seen,
                    "train_time": train_time,
                    "start_step": start_step,
                    "global_step": global_step,
                },
            )
        )
    accelerator.end_training()
    result["unet"] = accelerator.unwrap_model(unet)
    return result


def write_process_log(accelerator, unet, output_dir: Path, seen_indices: list[list[int]]) -> None:
    """This process's data indices per micro-batch and a SHA-256 of its replica's (raw, non-EMA) weights."""
    weights = torch.cat([p.detach().float().flatten().cpu() for p in accelerator.unwrap_model(unet).parameters()])
    folder = output_dir / "process_logs"
    folder.mkdir(parents=True, exist_ok=True)
    log = {
        "process_index": accelerator.process_index,
        "num_processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "indices": seen_indices,
        "weights_sha256": hashlib.sha256(weights.numpy().tobytes()).hexdigest(),
    }
    (folder / f"process_{accelerator.process_index}.json").write_text(json.dumps(log))


def validate(accelerator, unet, ema, noise_scheduler, args, n_classes, output_dir: Path, step: int):
    """Sample a grid with the EMA weights (main process only) and log it."""
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(unet)
        if ema is not None:
            ema.store(model.parameters())
            ema.copy_to(model.parameters())
        model.eval()
        images, grid = sample_grid(model, noise_scheduler, args, n_classes, accelerator.device, "validation samples")
        model.train()
        if ema is not None:
            ema.restore(model.parameters())
        folder = output_dir / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        grid.save(folder / f"step-{step:06d}.png")
        for tracker in accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.writer.add_images("samples", images.cpu().numpy(), step)
    accelerator.wait_for_everyone()


def finish(
    accelerator, unet, ema, noise_scheduler, args, n_classes, output_dir, run: dict[str, Any]
) -> dict[str, Any]:
    """Save the EMA pipeline, a sample grid, metrics.json and the model card; push if asked. `run` holds the loss
    history, time and images of the whole run (restored on resume), this session's batch losses and the steps."""
    model = accelerator.unwrap_model(unet)
    if ema is not None:
        ema.copy_to(model.parameters())
    model.eval()
    if args.gradient_checkpointing:
        model.disable_gradient_checkpointing()
    preconditioned = getattr(model, "preconditioning", None) is not None  # None for UNet2DModel
    if preconditioned:  # DDPMPipeline would neither scale the input nor use EDM's sigmas
        pipeline = ContinuousUNetPipeline(unet=model, scheduler=sampling_scheduler(model, noise_scheduler))
    else:
        pipeline = DDPMPipeline(unet=model, scheduler=noise_scheduler)
    pipeline.save_pretrained(str(output_dir), safe_serialization=True)

    images, grid = sample_grid(model, noise_scheduler, args, n_classes, accelerator.device, "final samples")
    grid_path = output_dir / "samples.png"
    grid.save(grid_path)
    losses = run["losses"]
    tail = losses[-max(1, len(losses) // 10) :]
    metrics: dict[str, Any] = {
        "final_loss (mean of last 10% of batches)": round(sum(tail) / len(tail), 5),
        "training steps": run["global_step"],
        "training throughput (images/s)": round(run["images_seen"] / max(run["train_time"], 1e-9), 1),
        "training wall time (s)": round(run["train_time"], 1),
    }
    if run["start_step"]:
        metrics["resumed at step"] = run["start_step"]
    if args.dataset_name == "digits" and not args.train_data_dir and model.config.in_channels == 1:
        from diffusers_cunet.metrics import DigitRecognizer

        logger.info("Scoring the samples with the digit recognizer ...")
        recognizer = DigitRecognizer(seed=args.seed)
        metrics["recognisable samples (digit classifier p >= 0.9)"] = round(recognizer.confident_share(images), 3)
    (output_dir / "metrics.json").write_text(
        json.dumps(
            {
                "training_data": args.train_data_dir or args.dataset_name,
                "metrics": metrics,
                "loss_history": run["history"],
            },
            indent=2,
        )
    )

    settings = {
        "data set": args.train_data_dir or args.dataset_name,
        "resolution": model.config.sample_size,
        "steps": run["global_step"],
        "batch size (per process x processes x accumulation)": (
            f"{args.train_batch_size} x {accelerator.num_processes} x {args.gradient_accumulation_steps}"
        ),
        "optimizer": (
            f"AdamW, lr {args.learning_rate}, {args.lr_scheduler} schedule, {args.lr_warmup_steps} warm-up steps"
        ),
        "noise schedule": noise_schedule_text(args),
        "EMA": f"max decay {args.ema_max_decay}" if args.use_ema else "off",
        "mixed precision": str(accelerator.mixed_precision),
        "seed": args.seed,
    }
    sampler_name = "EDM DPM-Solver++" if preconditioned else "DDIM"
    card = render_model_card(
        model,
        repo_id=args.hub_model_id or f"your-name/{output_dir.name}",
        dataset_name=args.train_data_dir or args.dataset_name,
        hub_dataset=None if args.train_data_dir or args.dataset_name == "digits" else args.dataset_name,
        training_settings=settings,
        metrics=metrics,
        grid_caption=f"{len(images)} samples, {sampler_name} {args.validation_inference_steps} steps, EMA weights.",
        machine=f"{accelerator.num_processes} x {accelerator.device.type}",
    )
    card.save(str(output_dir / "README.md"))
    print(f"\nSaved the pipeline to {output_dir}/: {loading_advice(str(output_dir), preconditioned)}")
    print(f"Sample grid: {grid_path}")
    print("Metrics: " + ", ".join(f"{k} = {v}" for k, v in metrics.items()))
    result: dict[str, Any] = {"metrics": metrics, "grid": str(grid_path)}
    if args.push_to_hub:
        result["push_error"] = upload_or_explain(output_dir, args.hub_model_id, args.hub_token, args.hub_private)
    return result


def noise_schedule_text(args: argparse.Namespace) -> str:
    if args.preconditioning == "none":
        return f"{args.beta_schedule}, {args.num_train_timesteps} steps, {args.prediction_type} prediction"
    text = (
        f"{args.preconditioning} preconditioning, sigma_data {args.sigma_data}, "
        f"log sigma ~ N({args.edm_p_mean}, {args.edm_p_std}^2)"
    )
    if args.preconditioning == "edm-fdm":
        text += f", momentum {args.fdm_momentum}"
    if args.loss_weight_warmup_steps:
        text += f", loss-weight warm-up {args.loss_weight_warmup_steps} steps"
    return text


def push_to_hub(output_dir: Path, repo_id: str, token: str | None, private: bool) -> str:
    """Upload the pipeline, grid, metrics and model card (not checkpoints or logs) with huggingface_hub."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(output_dir),
        commit_message="Upload continuous U-Net pipeline trained with diffusers-cunet",
        ignore_patterns=list(NOT_UPLOADED),
    )
    return str(getattr(info, "commit_url", info))


def check_hub_access(repo_id: str, token: str | None) -> str:
    """Before any compute, for --push_to_hub: the repo id is valid and the Hub answers with a logged-in user.
    Returns the user name; raises a `ValueError` saying how to fix it or how to upload later."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(
            f"--hub_model_id {repo_id!r} is not a valid repo id (e.g. org/cunet-digits): {error}"
        ) from error
    try:
        user = HfApi(token=token).whoami()
    except Exception as error:  # no token, a bad token, offline mode or no network: all say the same to the user
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"--push_to_hub: the Hub cannot be reached as a logged-in user ({type(error).__name__}: {reason}). Log in "
            "with `hf auth login` or pass --hub_token, or train without --push_to_hub and upload the saved folder "
            f"later with `hf upload {repo_id} <output_dir>`."
        ) from error
    return str(user.get("name", "?"))


def upload_or_explain(output_dir: Path, repo_id: str, token: str | None, private: bool) -> str | None:
    """push_to_hub after training; a failure becomes one line saying the folder is saved and how to upload it.
    Returns that line, or None on success."""
    try:
        url = push_to_hub(output_dir, repo_id, token, private)
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        excludes = " ".join(f"--exclude '{pattern}'" for pattern in NOT_UPLOADED)
        line = (
            f"Upload to {repo_id} failed ({type(error).__name__}: {reason}); the pipeline is saved in {output_dir}/ "
            f"and nothing is lost: upload it later with `hf upload {repo_id} {output_dir} {excludes}`."
        )
        logger.error(line)
        return line
    print(f"Uploaded to {url}")
    return None


if __name__ == "__main__":
    try:
        outcome = main()
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    if outcome.get("push_error"):
        sys.exit(1)
