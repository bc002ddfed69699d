"""The options of `training/train.py`: the command line, an optional YAML `--config` under it, and their checks.

A YAML file sets the same options as the command line and passes the same checks (each value is turned into
command-line tokens after a per-value check that names the file); `make_config(**options)` does the same for
code (tests, benchmarks). The result is a validated `argparse.Namespace`.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from diffusers_cunet.noise_schedule import BETA_SCHEDULES, PREDICTION_TYPES
from diffusers_cunet.preconditioning import PRECONDITIONING_TYPES
from diffusers_cunet.presets import DEFAULT_PRESET, PRESETS
from training.data import IMAGE_FITS
from training.fashion_mnist import HUB_NAMES as FASHION_NAMES

MODEL_TYPES = ("cunet", "unet2d")
JSON_OPTIONS = ("model_config",)  # options whose value may be a JSON object (a mapping in a YAML --config)
FDM_LOSS_WEIGHT_WARMUP_STEPS = 200  # FDM's official code warms the EDM loss weight up over 200 steps
DESCRIPTION = """Train a continuous U-Net (ContinuousUNet2DModel) on a `datasets` image set.

    accelerate launch training/train.py --config training/configs/digits.yaml --output_dir outputs/digits
    python training/train.py --dataset_name uoft-cs/cifar10 --model_preset cifar10-32 --output_dir outputs/c10

Options come from the command line, on top of an optional YAML `--config` (the command line wins). The run
writes checkpoints (`checkpoint-N/`, atomically), sample grids (`samples/`), tensorboard logs (`logs/`) and,
at the end, a diffusers `DDPMPipeline` with the EMA weights (a `ContinuousUNetPipeline` with an EDM scheduler
for `--preconditioning edm|edm-fdm`), a `samples.png` grid, `metrics.json` and a model card `README.md` into
`--output_dir`.
"""


def add_data_options(p: argparse.ArgumentParser) -> None:
    data = p.add_argument_group("data")
    data.add_argument("--dataset_name", default="digits", help="Hub data set name, or 'digits' (embedded).")
    data.add_argument("--dataset_config_name", default=None)
    data.add_argument(
        "--fashion_mnist_dir",
        default=None,
        help="Folder of Fashion-MNIST's four IDX files for --dataset_name fashion_mnist (default: $FASHION_MNIST_DIR, "
        "else Debian's /usr/share/datasets/fashion-mnist; the Hub when neither has them).",
    )
    data.add_argument("--train_data_dir", default=None, help="Local image folder (datasets' imagefolder).")
    data.add_argument("--split", default="train")
    data.add_argument("--cache_dir", default=None)
    data.add_argument("--image_column", default=None, help="Image column; found automatically if omitted.")
    data.add_argument("--class_column", default=None, help="Column of class labels: trains class-conditionally.")
    data.add_argument(
        "--class_dropout_prob",
        type=float,
        default=0.0,
        help="With --class_column: replace each label by a learned null class with this probability (e.g. 0.1), "
        "so the saved model can be sampled with classifier-free guidance (guidance_scale); 0 trains no null class.",
    )
    data.add_argument("--resolution", type=int, default=None, help="Image size; the model's sample_size if omitted.")
    data.add_argument(
        "--image_fit",
        choices=IMAGE_FITS,
        default="resize",
        help="resize: the short side to --resolution (bicubic); pad: smaller images centred on black, larger ones "
        "cropped, no resampling (Fashion-MNIST's 28x28 -> 32x32).",
    )
    data.add_argument("--center_crop", action=argparse.BooleanOptionalAction, default=True)
    data.add_argument("--random_flip", action=argparse.BooleanOptionalAction, default=False)
    data.add_argument("--max_train_samples", type=int, default=None)
    data.add_argument(
        "--held_out_samples",
        type=int,
        default=0,
        help="Keep N examples out of training (the last N, or the first N of --held_out_split) and report the EMA "
        "model's denoising error on them at fixed noise levels (at the start, at every validation and at the end): "
        "a low-noise quality signal.",
    )
    data.add_argument(
        "--held_out_split",
        default=None,
        help="Take the --held_out_samples examples from this split (e.g. test), not from the end of the training one.",
    )
    data.add_argument(
        "--skip_bad_images",
        action="store_true",
        help="Leave out images that cannot be decoded (each named in a warning) instead of stopping before training.",
    )
    data.add_argument("--dataloader_num_workers", type=int, default=0)


def add_model_options(p: argparse.ArgumentParser) -> None:
    model = p.add_argument_group("model")
    model.add_argument(
        "--model_type",
        default="cunet",
        choices=MODEL_TYPES,
        help="cunet: ContinuousUNet2DModel; unet2d: diffusers' UNet2DModel, the baseline, with the same recipe.",
    )
    model.add_argument(
        "--model_preset",
        default=None,
        choices=sorted(PRESETS),
        help=f"Architecture preset (default {DEFAULT_PRESET}; given none, the model takes the images' size, except "
        "for the embedded digits, which the default preset trains at 16x16).",
    )
    model.add_argument(
        "--channels",
        default="auto",
        choices=["auto", "1", "3"],
        help="Image channels of the model: auto follows the data (3 if any probed image has colour), unless "
        "--model_config sets in_channels.",
    )
    model.add_argument(
        "--model_config",
        default=None,
        help="Model constructor arguments: a JSON file, or inline JSON ('{\"layers_per_block\": 1}'; in a YAML "
        "--config, a mapping).",
    )
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
    model.add_argument(
        "--block_skip_prob",
        type=float,
        default=0.0,
        help="Sub-network training (after DDSM): each batch skips each of the --block_skip_blocks ODE blocks "
        "with this probability (integrates it over zero time), so schedules that skip blocks work (cUNet only).",
    )
    model.add_argument(
        "--block_skip_blocks",
        nargs="+",
        default=None,
        metavar="NAME",
        help="The ODE blocks --block_skip_prob may skip, by name (down_blocks.0, mid_block, up_blocks.0, ...; "
        "up_blocks.0 is the deepest decoder level); default: all of them.",
    )


def add_diffusion_options(p: argparse.ArgumentParser) -> None:
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
        f"Default: {FDM_LOSS_WEIGHT_WARMUP_STEPS} for edm-fdm (FDM's code), 0 (off) for edm.",
    )


def add_optimisation_options(p: argparse.ArgumentParser) -> None:
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


def add_output_options(p: argparse.ArgumentParser) -> None:
    out = p.add_argument_group("validation, checkpoints and output")
    out.add_argument("--output_dir", default="outputs/cunet")
    out.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="Start a new run in an --output_dir that holds another run's checkpoints or pipeline, removing them "
        "first (without it such a run refuses to start; --resume_from_checkpoint latest continues it instead).",
    )
    out.add_argument("--validation_steps", type=int, default=500, help="Sample a grid every N steps (0: only at end).")
    out.add_argument("--num_validation_images", type=int, default=64)
    out.add_argument(
        "--validation_inference_steps", type=int, default=50,
        help="Sampler steps for sample grids (DDIM; EDM runs: EDM DPM-Solver++).",
    )  # fmt: skip
    out.add_argument(
        "--score_samples",
        type=int,
        default=0,
        help="Fashion-MNIST: at the end, score this many samples against the 10,000 test images in the committed "
        "judge's features (FID, KID, precision/recall, classes found) for metrics.json and the card (0: off).",
    )
    out.add_argument("--checkpointing_steps", type=int, default=500)
    out.add_argument("--checkpoints_total_limit", type=int, default=2)
    out.add_argument(
        "--resume_from_checkpoint",
        default=None,
        help="'latest' (the newest complete, undamaged checkpoint; damaged ones are named and passed over) or a "
        "checkpoint folder (an error naming the file if it is damaged).",
    )
    out.add_argument(
        "--preemption_signals",
        nargs="*",
        default=["SIGTERM", "SIGINT", "SIGUSR1"],
        metavar="SIGNAL",
        help="Signals that make the run finish its step, save a checkpoint and exit with status 75 (resume with "
        "--resume_from_checkpoint latest); a second one stops at once. None given: no handler.",
    )
    out.add_argument(
        "--collective_timeout",
        type=float,
        default=180.0,
        help="Seconds a process of a multi-process run waits for the others at a collective before it stops with "
        "an error (a hung machine must not leave the rest waiting forever; a killed one is noticed at once). "
        "Raise it where one process can work alone longer between collectives (a long validation or checkpoint).",
    )
    out.add_argument(
        "--max_nonfinite_steps",
        type=int,
        default=0,
        help="Optimizer steps with a non-finite loss or gradient norm that are skipped (no update) before the run "
        "stops; 0: the first one stops it, with an error naming the step (the checkpoints are left untouched).",
    )
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


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (the usage dump is for --help), with no abbreviated options
    (`--lr` is not silently `--lr_scheduler`) and a "did you mean" for options it does not know."""

    def __init__(self, **kwargs: Any):
        super().__init__(allow_abbrev=False, **kwargs)

    def error(self, message: str):  # noqa: D102  (argparse's hook)
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")

    def parse_args(self, args=None, namespace=None):  # noqa: D102
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            flags = [token.split("=")[0].removeprefix("--") for token in unknown if token.startswith("--")]
            known = [option.removeprefix("--") for action in self._actions for option in action.option_strings
                     if option.startswith("--") and option != "--help"]  # fmt: skip
            if flags:
                self.error(f"unknown option(s) {names_with_hints(flags, known)}")
            self.error(f"unexpected argument(s) {' '.join(unknown)}")
        return parsed


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=str, default=None, help="YAML file of option defaults (command line wins).")
    add_data_options(p)
    add_model_options(p)
    add_diffusion_options(p)
    add_optimisation_options(p)
    add_output_options(p)
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
    return option_tokens(parser, values, str(path))


def option_tokens(parser: argparse.ArgumentParser, values: Any, path: str) -> list[str]:
    """`values` (option name -> value) as command-line tokens, each checked as the command line would check it;
    errors name `path`, where the values came from."""
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
        if isinstance(value, dict):  # a YAML mapping: the inline JSON of an option that takes JSON, else refused
            if name not in JSON_OPTIONS:
                parser.error(f"{where} takes a value, not a mapping; only {', '.join(JSON_OPTIONS)} take(s) one.")
            tokens += [flag, json.dumps(value)]
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
    if args.score_samples < 0:
        parser.error(f"--score_samples must be >= 0, got {args.score_samples}.")
    if args.score_samples and (args.train_data_dir or args.dataset_name not in FASHION_NAMES):
        parser.error("--score_samples needs --dataset_name fashion_mnist: the judge knows only Fashion-MNIST.")
    if args.held_out_samples < 0:
        parser.error(f"--held_out_samples must be >= 0, got {args.held_out_samples}.")
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
        if args.fdm_normalize_input and args.preconditioning != "edm-fdm":
            parser.error("--fdm_normalize_input applies to --preconditioning edm-fdm only.")
        if args.loss_weight_warmup_steps is not None and args.loss_weight_warmup_steps < 0:
            parser.error(f"--loss_weight_warmup_steps must be >= 0, got {args.loss_weight_warmup_steps}.")
    if not 0.0 <= args.class_dropout_prob < 1.0:
        parser.error(f"--class_dropout_prob must be in [0, 1), got {args.class_dropout_prob}.")
    if args.class_dropout_prob and not args.class_column:
        parser.error("--class_dropout_prob needs class labels: name their column with --class_column.")
    if not 0.0 <= args.block_skip_prob < 1.0:
        parser.error(f"--block_skip_prob must lie in [0, 1), got {args.block_skip_prob}.")
    if args.block_skip_blocks and not args.block_skip_prob:
        parser.error("--block_skip_blocks needs --block_skip_prob > 0.")
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id (e.g. org/cunet-digits).")
    if not args.collective_timeout > 0:
        parser.error(f"--collective_timeout must be a positive number of seconds, got {args.collective_timeout}.")
    if args.max_nonfinite_steps < 0:
        parser.error(f"--max_nonfinite_steps must be >= 0, got {args.max_nonfinite_steps}.")
    if args.overwrite_output_dir and args.resume_from_checkpoint:
        parser.error("--overwrite_output_dir removes the run that --resume_from_checkpoint would continue: give one.")
    return args


def loss_weight_warmup_steps(args: argparse.Namespace) -> int:
    """The EDM loss weight's warm-up: the option where given, else FDM's own (its code's 200 steps) for edm-fdm and
    none for edm (derived here, so the parsed options stay as the user gave them)."""
    if args.loss_weight_warmup_steps is not None:
        return args.loss_weight_warmup_steps
    return FDM_LOSS_WEIGHT_WARMUP_STEPS if args.preconditioning == "edm-fdm" else 0


def make_config(**options: Any) -> argparse.Namespace:
    """The validated options for code that trains (tests, benchmarks): `make_config(output_dir="out",
    max_train_steps=10)` is `train.py --output_dir out --max_train_steps 10`, with the same checks."""
    parser = build_parser()
    return parse_args(option_tokens(parser, options, "make_config()"))
