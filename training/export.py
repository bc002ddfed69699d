"""What a run leaves behind: sample grids, and at the end the EMA pipeline, `samples.png`, `metrics.json` and the
model card (and the upload, when asked)."""

from __future__ import annotations

import json
import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMPipeline
from diffusers.utils import make_image_grid
from PIL import Image, ImageOps

from diffusers_cunet.objectives import Objective
from diffusers_cunet.pipelines import ContinuousUNetPipeline
from diffusers_cunet.pipelines.scheduler_support import loading_advice
from evaluation.distances import NEIGHBOURS
from training.hub import upload_or_explain
from training.model_card import render_model_card
from training.model_setup import skippable_blocks
from training.staging import staged_export

logger = logging.getLogger("diffusers_cunet.train")


@dataclass
class RunRecord:
    """What a run did, over all its sessions: the logged loss history, training seconds and images seen (saved in
    every checkpoint and restored on resume); this session's batch losses; the steps."""

    history: list[dict[str, float]] = field(default_factory=list)
    train_time: float = 0.0
    images_seen: int = 0
    losses: list[float] = field(default_factory=list)
    start_step: int = 0
    global_step: int = 0
    held_out: list[dict[str, float]] = field(default_factory=list)  # held-out denoising errors by step
    # seconds of each optimizer step (validation and checkpoints excluded): their median, times the steps, is a
    # training time that a burst of other work on the machine hardly moves, unlike the wall-time sum
    step_seconds: list[float] = field(default_factory=list)
    skipped_steps: list[int] = field(default_factory=list)  # steps whose update was skipped (non-finite loss/grads)

    def median_step_seconds(self) -> float:
        ordered = sorted(self.step_seconds)
        return ordered[len(ordered) // 2] if ordered else math.nan

    def final_loss(self) -> float:
        """The mean logged loss over the last 10% of the run's steps, from the whole run's history (kept across
        resumes, so a resumed run reports what an uninterrupted one does); this session's batches if none was
        logged."""
        if self.history:
            last = self.history[-1]["step"]
            tail = [entry["loss"] for entry in self.history if entry["step"] > 0.9 * last] or [
                self.history[-1]["loss"]
            ]
        else:
            tail = self.losses[-max(1, len(self.losses) // 10) :]
        return sum(tail) / len(tail)

    def images_per_second(self) -> float:
        return self.images_seen / max(self.train_time, 1e-9)

    def saved(self) -> dict[str, Any]:
        """The part kept in checkpoints."""
        return {"history": self.history, "train_time": self.train_time, "images_seen": self.images_seen,
                "held_out": self.held_out, "step_seconds": self.step_seconds,
                "skipped_steps": self.skipped_steps}  # fmt: skip


def sample_grid(
    unet, objective: Objective, count: int, steps: int, seed: int, n_classes: int | None, progress: str | None = None
) -> tuple[torch.Tensor, Image.Image]:
    """Draw `count` images in `steps` steps of the objective's fast sampler (noise seeded `seed`; labels 0, 1, ...
    for a class-conditional model) and return them in [0, 1] with their image grid; a bar named `progress` shows
    the sampling steps (None: no bar)."""
    pipeline = ContinuousUNetPipeline(unet=unet, scheduler=objective.sampling_scheduler(unet))
    pipeline.set_progress_bar_config(disable=progress is None, desc=progress, leave=False)
    labels = torch.arange(count) % n_classes if n_classes else None
    images = pipeline(
        batch_size=count,
        generator=torch.Generator(device="cpu").manual_seed(seed),
        num_inference_steps=steps,
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


@contextmanager
def ema_weights(model, ema):
    """`model` in eval mode with the EMA weights for the duration; its own weights and train mode restored after."""
    if ema is not None:
        ema.store(model.parameters())
        ema.copy_to(model.parameters())
    model.eval()
    try:
        yield model
    finally:
        model.train()
        if ema is not None:
            ema.restore(model.parameters())


def save_validation_grid(accelerator, unet, ema, objective, args, n_classes, output_dir: Path, step: int) -> None:
    """Sample a grid with the EMA weights (main process only), save it under `samples/` and log it."""
    if accelerator.is_main_process:
        with ema_weights(accelerator.unwrap_model(unet), ema) as model:
            images, grid = sample_grid(model, objective, args.num_validation_images, args.validation_inference_steps,
                                       args.seed, n_classes, "validation samples")  # fmt: skip
        folder = output_dir / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        grid.save(folder / f"step-{step:06d}.png")
        for tracker in accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.writer.add_images("samples", images.cpu().numpy(), step)
    accelerator.wait_for_everyone()


# The run's numbers by machine-readable key (metrics.json's "record", what code reads) and the label the card and
# metrics.json's "metrics" show for each: one table, so a renamed label changes no reader.
RECORD_LABELS: dict[str, str] = {
    "final_loss": "final_loss (mean of last 10% of batches)",
    "training_steps": "training steps",
    "images_per_second": "training throughput (images/s)",
    "train_seconds": "training wall time (s)",
    "median_step_seconds": "training time per step (median, s)",
    "resumed_at_step": "resumed at step",
    "held_out_error": "held-out denoising error (MSE, mean of 4 noise levels)",
}


def run_values(record: RunRecord) -> dict[str, Any]:
    """The run's numbers by machine key (`RECORD_LABELS`)."""
    values: dict[str, Any] = {
        "final_loss": round(record.final_loss(), 5),
        "training_steps": record.global_step,
        "images_per_second": round(record.images_per_second(), 1),
        "train_seconds": round(record.train_time, 1),
        "median_step_seconds": round(record.median_step_seconds(), 4),
    }
    if record.start_step:
        values["resumed_at_step"] = record.start_step
    if record.held_out:
        values["held_out_error"] = round(record.held_out[-1]["mean"], 5)
    return values


def read_run_values(output_dir: Path) -> dict[str, Any]:
    """The machine-keyed numbers of a run's `metrics.json` (from the labels, for files written before "record")."""
    return saved_run_values(json.loads((Path(output_dir) / "metrics.json").read_text()))


def saved_run_values(saved: dict[str, Any]) -> dict[str, Any]:
    """`read_run_values` of a `metrics.json` already read."""
    if "record" in saved:
        return saved["record"]
    metrics = saved.get("metrics", {})
    return {key: metrics[label] for key, label in RECORD_LABELS.items() if label in metrics}


def run_metrics(args, record: RunRecord, images: torch.Tensor, in_channels: int) -> dict[str, Any]:
    """The numbers of the card and `metrics.json`, by label: loss, steps, speed and, on the digits, recognisable
    samples."""
    metrics: dict[str, Any] = {RECORD_LABELS[key]: value for key, value in run_values(record).items()}
    if args.dataset_name == "digits" and not args.train_data_dir and in_channels == 1:
        from evaluation.digits import fitted_recognizer

        logger.info("Scoring the samples with the digit recognizer ...")
        recognizer = fitted_recognizer(seed=args.seed)
        recognised = round(recognizer.confident_share(images) * len(images))
        metrics["recognisable samples (digit classifier p >= 0.9)"] = f"{recognised} of {len(images)}"
        metrics["digit classes among them"] = f"{round(recognizer.class_coverage(images) * 10)} of 10"
    return metrics


def judge_metrics(model, objective: Objective, args) -> dict[str, Any]:
    """Fashion-MNIST scores of `--score_samples` samples (the sample grid's sampler and steps) against the test
    images, each with its sample size, and the floor at the same size (real training images). A class-conditional
    model is sampled as the convergence queue and the shipped model's card sample it: labels balanced over the
    classes, guidance scale 1 (`class_conditional_scores`), and its class accuracy by the judge is added."""
    from evaluation.fashion_judge import load_judge
    from evaluation.fashion_scores import class_conditional_scores, generate, sample_scores, test_image_features
    from training.fashion_mnist import split_tensors

    logger.info("Scoring %d samples against the Fashion-MNIST test images ...", args.score_samples)
    judge = load_judge()
    pipeline = ContinuousUNetPipeline(unet=model, scheduler=objective.sampling_scheduler(model))
    test_features = test_image_features(folder=args.fashion_mnist_dir)
    count, steps = args.score_samples, args.validation_inference_steps
    conditional = bool(getattr(model.config, "num_class_embeds", None))
    if conditional:
        scores = class_conditional_scores(pipeline, judge, test_features, count, steps, args.seed)
        seconds = scores["sampling_s_per_image"]
    else:
        samples, seconds = generate(pipeline, count, steps, args.seed)
        scores = sample_scores(judge, None, samples, real_features=test_features)
    real_samples = split_tensors("train", args.fashion_mnist_dir)[0][:count]
    floor = sample_scores(judge, None, real_samples, real_features=test_features)
    where = f"{count} samples vs {len(test_features)} test images"
    metrics = {
        "samples scored": "labels balanced over the classes, guidance scale 1" if conditional else "unconditional",
        f"FID ({where}; judge features)": round(scores["fid"], 3),
        "FID floor (as many real training images)": round(floor["fid"], 3),
        f"KID ({where})": round(scores["kid_mean"], 5),
        f"precision / recall (k={NEIGHBOURS}, {count} vs {count})": (
            f"{scores['precision']:.3f} / {scores['recall']:.3f}"
        ),
        "confidently recognised garments (judge p >= 0.9)": f"{scores['confident']} of {count}",
        "garment classes among them": f"{scores['classes_found']} of 10",
    }
    if conditional:
        metrics["class accuracy (judge: the class asked for)"] = round(scores["class_accuracy"], 4)
    metrics["sampling time per image (s)"] = round(seconds, 4)
    return metrics


def data_source(args) -> str:
    """The training data as a card meant for the Hub names it: a Hub data set by its id, a local folder by its name
    only (its absolute path means nothing on another machine)."""
    if args.train_data_dir:
        return f"local folder `{Path(args.train_data_dir).name}`"
    return args.dataset_name


def training_settings(args, objective: Objective, record: RunRecord, accelerator, resolution: int,
                      skip_blocks: tuple[str, ...] = ()) -> dict[str, Any]:  # fmt: skip
    """The card's "Training" table."""
    batch = f"{args.train_batch_size} x {accelerator.num_processes} x {args.gradient_accumulation_steps}"
    nominal = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    per_step = round(record.images_seen / record.global_step) if record.global_step else nominal
    if per_step < nominal:  # a data set smaller than one batch: every step sees all of it
        batch += f" (the data set is smaller: {per_step} images per step)"
    settings = {
        "data set": data_source(args),
        "resolution": resolution,
        "steps": record.global_step,
        "batch size (per process x processes x accumulation)": batch,
        "optimizer": (
            f"AdamW, lr {args.learning_rate}, {args.lr_scheduler} schedule, {args.lr_warmup_steps} warm-up steps"
        ),
        "noise schedule": objective.describe(),
        "EMA": f"max decay {args.ema_max_decay}" if args.use_ema else "off",
        "mixed precision": str(accelerator.mixed_precision),
        "seed": args.seed,
    }
    if args.solver_steps_choices:
        settings["solver steps drawn per batch (step-aware training)"] = ", ".join(map(str, args.solver_steps_choices))
    if args.max_nonfinite_steps:
        skipped = record.skipped_steps
        which = f" (steps {', '.join(map(str, skipped[:10]))})" if skipped else ""
        settings["updates skipped (non-finite loss or gradient)"] = f"{len(skipped)} of {record.global_step}{which}"
    if args.class_dropout_prob:  # the null class that makes the model guidable
        settings["labels replaced by the null class (classifier-free guidance)"] = f"p = {args.class_dropout_prob}"
    if args.block_skip_prob:  # the model was trained to run with blocks left out (a solver schedule's "skip")
        blocks = ", ".join(skip_blocks)
        settings["ODE blocks skipped at random (per batch, each)"] = f"p = {args.block_skip_prob} of {blocks}"
    return settings


@dataclass
class Export:
    metrics: dict[str, Any]
    grid_path: Path
    push_error: str | None = None


def write_export(folder: Path, output_dir: Path, accelerator, model, objective: Objective, args,
                 record: RunRecord, grid, num_images: int, metrics: dict[str, Any]) -> None:  # fmt: skip
    """Write the pipeline, grid, metrics and card of a run into `folder` (the staging folder of `output_dir`)."""
    # DDPMPipeline can pass no class labels and ignores a solver schedule: such models get the pipeline that can.
    step_aware = bool(args.solver_steps_choices) or bool(args.block_skip_prob)
    needs_ours = not objective.ddpm_pipeline_compatible or bool(model.config.get("num_class_embeds")) or step_aware
    pipeline_class = ContinuousUNetPipeline if needs_ours else DDPMPipeline
    pipeline_class(unet=model, scheduler=objective.saved_scheduler(model)).save_pretrained(
        str(folder), safe_serialization=True
    )
    grid.save(folder / "samples.png")
    summary = {"training_data": data_source(args), "objective": objective.to_config(), "record": run_values(record),
               "metrics": metrics, "loss_history": record.history, "held_out_error": record.held_out}  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps(summary, indent=2))
    sampler_name = objective.sampler_name
    card = render_model_card(
        model,
        repo_id=args.hub_model_id or f"your-name/{output_dir.name}",
        dataset_name=data_source(args),
        hub_dataset=None if args.train_data_dir or args.dataset_name == "digits" else args.dataset_name,
        training_settings=training_settings(
            args, objective, record, accelerator, model.config.sample_size, skippable_blocks(args, model)
        ),  # fmt: skip
        metrics=metrics,
        grid_caption=f"{num_images} samples, {sampler_name} {args.validation_inference_steps} steps, EMA weights.",
        machine=f"{accelerator.num_processes} x {accelerator.device.type}",
        shipped_code=tuple(str(path.relative_to(folder)) for path in sorted(folder.glob("**/*_cunet.py"))),
    )
    card.save(str(folder / "README.md"))


def export_run(
    accelerator, model, objective: Objective, args, n_classes, output_dir: Path, record: RunRecord
) -> Export:
    """Save `model` (EMA weights already copied in) as a pipeline with its sampler, a sample grid, `metrics.json`
    and the model card (staged, then moved in: a failed write leaves the previous export whole), and upload them
    when asked. Main process only."""
    model.eval()
    preconditioned = not objective.ddpm_pipeline_compatible  # sampled only by our pipeline
    images, grid = sample_grid(model, objective, args.num_validation_images, args.validation_inference_steps,
                               args.seed, n_classes, "final samples")  # fmt: skip
    metrics = run_metrics(args, record, images, model.config.in_channels)
    if args.score_samples:
        metrics.update(judge_metrics(model, objective, args))
    with staged_export(output_dir) as staging:
        write_export(staging, output_dir, accelerator, model, objective, args, record, grid, len(images), metrics)
    grid_path = output_dir / "samples.png"
    print(f"\nSaved the pipeline to {output_dir}/: {loading_advice(str(output_dir), preconditioned)}")
    print(f"Sample grid: {grid_path}")
    print("Metrics: " + ", ".join(f"{k} = {v}" for k, v in metrics.items()))
    push_error = None
    if args.push_to_hub:
        push_error = upload_or_explain(output_dir, args.hub_model_id, args.hub_token, args.hub_private)
    return Export(metrics, grid_path, push_error)
