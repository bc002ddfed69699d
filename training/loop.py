"""One training run, from validated options to a saved pipeline: `train(args) -> TrainingResult`.

1. `prepare`: everything that can be wrong with the input is checked before any compute or any file is written
   (data folder, Hub access, every image, model options, resolution, the checkpoint to resume).
2. `set_up`: accelerator, objective, data loader, optimizer, EMA, checkpoint hooks; resume.
3. `run_loop`: the optimisation, with logging, atomic checkpoints and validation grids.
4. `finish`: the EMA weights exported as a pipeline with a sample grid, metrics and a model card.

Noise, noise levels and step counts of a micro-batch depend only on (seed, micro-step, process), and the data
order only on (seed, epoch): a resumed run repeats exactly what an uninterrupted one would have done.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs, ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from diffusers_cunet.flops import count_parameters
from diffusers_cunet.guidance import drop_labels
from diffusers_cunet.objectives import Objective
from evaluation.held_out import HeldOutError
from training.checkpointing import (
    any_process,
    check_checkpoint_matches,
    checkpoint_step,
    list_checkpoints,
    read_run_record,
    register_checkpoint_hooks,
    remove_partial_checkpoints,
    resolve_checkpoint,
    save_checkpoint,
)
from training.data import (
    ImageTransform,
    TrainingImages,
    check_data_folder,
    image_size,
    image_tensors,
    load_training_images,
    make_dataloader,
)
from training.export import (
    RunRecord,
    ema_weights,
    export_run,
    read_run_values,
    save_validation_grid,
    saved_run_values,
)
from training.hub import check_hub_access
from training.launcher import warn_if_fewer_processes
from training.model_setup import (
    build_model,
    check_resolution,
    compile_in_place,
    data_channels,
    fit_to_images,
    make_objective,
    model_arguments,
    model_class_for,
    skippable_blocks,
)
from training.output_folder import check_output_dir, clear_previous_run
from training.preemption import Preempted, PreemptionGuard, signal_numbers

logger = logging.getLogger("diffusers_cunet.train")


@dataclass
class TrainingResult:
    """What `train` returns: where the run stands and what it wrote."""

    global_step: int
    output_dir: Path
    already_done: bool = False
    unet: Any = None  # the trained model with the EMA weights (None when nothing ran)
    metrics: dict[str, Any] = field(default_factory=dict)
    loss_history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0
    held_out_error: list[dict[str, float]] = field(default_factory=list)  # by step, with --held_out_samples
    final_loss: float = math.nan  # mean logged loss over the last 10% of the whole run's steps
    images_per_second: float = 0.0  # training throughput over the whole run
    median_step_seconds: float = math.nan  # the median optimizer step over the whole run (see RunRecord)
    grid_path: Path | None = None
    push_error: str | None = None  # set when --push_to_hub failed after training (the folder is saved)


@dataclass
class Prepared:
    """The checked inputs of a run."""

    images: TrainingImages
    unet: Any
    model_class: type
    checkpoint: Path | None
    skip_blocks: tuple[str, ...] = ()  # the ODE blocks --block_skip_prob may leave out (resolved, checked)


@dataclass
class Session:
    """A run in progress: the prepared objects and the record of what it did so far."""

    args: argparse.Namespace
    output_dir: Path
    accelerator: Accelerator
    unet: Any
    model_class: type
    objective: Objective
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    dataloader: Any
    transform: ImageTransform
    ema: EMAModel | None
    n_classes: int | None
    skip_blocks: tuple[str, ...] = ()
    record: RunRecord = field(default_factory=RunRecord)
    held_out: HeldOutError | None = None
    nonfinite: torch.Tensor | None = None  # whether the current update's micro-steps saw a non-finite loss
    pending_losses: list[torch.Tensor] = field(default_factory=list)  # batch losses not yet read to the host
    preemption: PreemptionGuard | None = None


def step_generator(seed: int, micro_step: int, process_index: int, device) -> torch.Generator:
    """Noise and noise levels of a micro-batch depend only on (seed, step, process): resumed runs repeat them."""
    generator = torch.Generator(device=device)
    generator.manual_seed((seed * 1_000_003 + micro_step) * 131 + process_index)
    return generator


def warn_about_settings(args: argparse.Namespace) -> None:
    if args.lr_warmup_steps >= args.max_train_steps:
        logger.warning(
            "--lr_warmup_steps %d is not shorter than --max_train_steps %d: the learning rate never reaches "
            "--learning_rate %g. Lower the warm-up (e.g. to a tenth of the run).",
            args.lr_warmup_steps,
            args.max_train_steps,
            args.learning_rate,
        )


def prepare(args: argparse.Namespace, output_dir: Path) -> Prepared | TrainingResult:
    """Check every input before any compute; a `TrainingResult` when the run is already finished."""
    if args.train_data_dir:
        check_data_folder(Path(args.train_data_dir), output_dir)
    if args.push_to_hub:
        check_hub_access(args.hub_model_id, args.hub_token)
    signal_numbers(args.preemption_signals)  # an unknown signal name is an input error, before any compute
    check_output_dir(output_dir, args.resume_from_checkpoint, args.overwrite_output_dir)
    images = load_training_images(args, warn=logger.warning)
    channels = data_channels(args, images.dataset, images.image_column)
    model_config = model_arguments(args, images.num_classes, channels, images.class_names)
    if not (args.model_config and "sample_size" in args.model_config):
        fit_to_images(model_config, args, image_size(images.dataset, images.image_column), logger.warning)
    check_resolution(model_config["sample_size"], model_config)
    model_class = model_class_for(args)
    set_seed(args.seed)  # before the model: identical initial weights in every run and every process
    unet = build_model(model_class, model_config, args.model_config)  # validates architecture and solver
    skip_blocks = skippable_blocks(args, unet)  # resolved and checked once: the names the loop draws from
    if args.torch_compile:
        compile_in_place(unet, args)
    checkpoint = resolve_checkpoint(output_dir, args.resume_from_checkpoint)
    if checkpoint is None and args.resume_from_checkpoint == "latest":
        logger.warning("--resume_from_checkpoint latest: no checkpoint in %s yet, starting from step 0.", output_dir)
    if checkpoint is not None:
        check_checkpoint_matches(checkpoint, dict(unet.config))
        done = checkpoint_step(checkpoint)
        if done >= args.max_train_steps and not exported(output_dir, done):
            logger.warning("%s is at step %d but no pipeline of that step was exported (e.g. the disk was full): "
                           "exporting it now, without training.", checkpoint, done)  # fmt: skip
        elif done >= args.max_train_steps:
            # Nothing is lost: a finished run is not trained further, and nothing in output_dir is rewritten.
            message = (f"{checkpoint} is already at step {done} (--max_train_steps {args.max_train_steps}): nothing "
                       f"to do, {output_dir} left as it is. Raise --max_train_steps to train further.")  # fmt: skip
            logger.warning(message)
            print(message)
            return finished_result(output_dir, done, model_class)
    return Prepared(images, unet, model_class, checkpoint, skip_blocks)


def finished_result(output_dir: Path, step: int, model_class: type) -> TrainingResult:
    """The result of a run found finished, complete as when it ended: read back from what it wrote (the exported EMA
    model, `metrics.json`'s record, loss history and held-out error), never trained again."""
    saved = json.loads((output_dir / "metrics.json").read_text())
    values = saved_run_values(saved)
    return TrainingResult(
        global_step=step, output_dir=output_dir, already_done=True,
        unet=model_class.from_pretrained(output_dir / "unet"), metrics=saved.get("metrics", {}),
        loss_history=saved.get("loss_history", []), train_seconds=values["train_seconds"],
        held_out_error=saved.get("held_out_error", []), final_loss=values["final_loss"],
        images_per_second=values["images_per_second"],
        median_step_seconds=values.get("median_step_seconds", math.nan),
        grid_path=output_dir / "samples.png" if (output_dir / "samples.png").is_file() else None,
    )  # fmt: skip


def exported(output_dir: Path, step: int) -> bool:
    """Whether `output_dir` holds the exported pipeline of training step `step` (its metrics say that step)."""
    if not (output_dir / "model_index.json").is_file() or not (output_dir / "metrics.json").is_file():
        return False
    try:
        return read_run_values(output_dir).get("training_steps") == step
    except (ValueError, TypeError):
        return False


def make_accelerator(args: argparse.Namespace, output_dir: Path) -> Accelerator:
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        kwargs_handlers=[
            # a lost process ends the others' wait after this long, with an error, instead of never
            InitProcessGroupKwargs(timeout=timedelta(seconds=args.collective_timeout)),
            # a batch that skips ODE blocks leaves their weights out of the graph, which DDP must be told to expect
            *([DistributedDataParallelKwargs(find_unused_parameters=True)] if args.block_skip_prob else []),
        ],
    )
    if accelerator.is_main_process:
        warn_if_fewer_processes(accelerator.num_processes)
    return accelerator


def make_optimization(args: argparse.Namespace, unet, accelerator: Accelerator) -> tuple[Any, Any]:
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
    return optimizer, lr_scheduler


def make_ema(args: argparse.Namespace, model, model_class: type, device) -> EMAModel | None:
    if not args.use_ema:
        return None
    ema = EMAModel(
        model.parameters(),
        decay=args.ema_max_decay,
        use_ema_warmup=True,
        inv_gamma=args.ema_inv_gamma,
        power=args.ema_power,
        model_cls=model_class,
        model_config=model.config,
    )
    ema.to(device)
    return ema


def set_up(args: argparse.Namespace, output_dir: Path, prepared: Prepared) -> Session:
    """Accelerator, objective, data, optimisation, EMA and checkpoint hooks; resumed from the checkpoint if any."""
    accelerator = make_accelerator(args, output_dir)
    unet = prepared.unet
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    objective = make_objective(args, unet)
    dataloader, transform = make_dataloader(prepared.images, unet.config.sample_size, unet.config.in_channels, args)
    optimizer, lr_scheduler = make_optimization(args, unet, accelerator)
    unet, optimizer, dataloader, lr_scheduler = accelerator.prepare(unet, optimizer, dataloader, lr_scheduler)
    ema = make_ema(args, accelerator.unwrap_model(unet), prepared.model_class, accelerator.device)
    session = Session(
        args=args, output_dir=output_dir, accelerator=accelerator, unet=unet, model_class=prepared.model_class,
        objective=objective, optimizer=optimizer, lr_scheduler=lr_scheduler, dataloader=dataloader,
        transform=transform, ema=ema, n_classes=prepared.images.num_classes, skip_blocks=prepared.skip_blocks,
    )  # fmt: skip
    register_checkpoint_hooks(accelerator, unet, ema, prepared.model_class, lambda: session.record.saved())
    session.held_out = make_held_out_error(args, prepared.images, accelerator.unwrap_model(unet).config)
    if accelerator.is_main_process:
        if args.overwrite_output_dir:
            removed = clear_previous_run(output_dir)
            if removed:
                logger.warning("--overwrite_output_dir: removed the earlier run's %s", ", ".join(removed))
        output_dir.mkdir(parents=True, exist_ok=True)
        remove_partial_checkpoints(output_dir)
    if prepared.checkpoint is not None:
        accelerator.load_state(str(prepared.checkpoint))
        saved = read_run_record(prepared.checkpoint)
        step = checkpoint_step(prepared.checkpoint)
        session.record = RunRecord(
            history=saved["history"], train_time=saved["train_time"], images_seen=saved["images_seen"],
            start_step=step, global_step=step, held_out=saved.get("held_out", []),
            step_seconds=saved.get("step_seconds", []), skipped_steps=saved.get("skipped_steps", []),
        )  # fmt: skip
        logger.info("Resumed from %s at step %d", prepared.checkpoint, step)
    if accelerator.is_main_process and args.report_to != "none":
        config = {k: v for k, v in vars(args).items() if v is not None and not isinstance(v, list)}
        accelerator.init_trackers("train_cunet", config=config)
    logger.info(
        "%d examples, %d processes, batch %d per process (%d total), %d steps, %s parameters",
        len(prepared.images.dataset),
        accelerator.num_processes,
        args.train_batch_size,
        args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps,
        args.max_train_steps,
        f"{count_parameters(accelerator.unwrap_model(unet)):,}",
    )
    return session


def make_held_out_error(args: argparse.Namespace, images: TrainingImages, config) -> HeldOutError | None:
    """The held-out evaluation of `--held_out_samples`: its images centre-cropped, unflipped, at the model's size."""
    if images.held_out is None:
        return None
    transform = ImageTransform(config.sample_size, config.in_channels, images.image_column, center_crop=True,
                               random_flip=False, class_column=args.class_column, seed=args.seed,
                               fit=args.image_fit)  # fmt: skip
    tensors, labels = image_tensors(images.held_out, transform)
    return HeldOutError(tensors, labels, seed=args.seed)


def evaluate_held_out(s: Session) -> None:
    """The EMA weights' held-out denoising error at this step, into the run record and the trackers (main process;
    it touches no random state, so a resumed run still repeats an uninterrupted one)."""
    if s.held_out is None or not s.accelerator.is_main_process:
        return
    if s.record.held_out and s.record.held_out[-1]["step"] == s.record.global_step:
        return  # already measured at this step
    with ema_weights(s.accelerator.unwrap_model(s.unet), s.ema) as model:
        errors = s.held_out(model, s.objective, s.accelerator.device)
    s.record.held_out.append({"step": s.record.global_step, **errors})
    s.accelerator.log({"held_out_error": errors["mean"]}, step=s.record.global_step)
    logger.info("step %d: held-out denoising error %.5f", s.record.global_step, errors["mean"])


class NonFiniteTraining(ValueError):
    """The loss or the gradient norm stopped being finite (and no more such steps may be skipped)."""


def newest_checkpoint_text(output_dir: Path) -> str:
    kept = list_checkpoints(output_dir)
    return f"The checkpoints are untouched (newest: {kept[-1]})" if kept else "There is no checkpoint yet"


def check_weights_finite(s: Session) -> None:
    """Refuse to checkpoint or export weights that are not finite (one host read): nothing saved holds a diverged
    run's damage, and the checkpoint before it stays the newest."""
    parameters = [p.detach() for p in s.accelerator.unwrap_model(s.unet).parameters()]
    if bool(torch.stack([torch.isfinite(p).all() for p in parameters]).all()):
        return
    raise NonFiniteTraining(
        f"The weights are not finite after step {s.record.global_step}: training stopped before saving them. "
        f"{newest_checkpoint_text(s.output_dir)}; lower --learning_rate (or check --adam_epsilon > 0), then resume "
        "with --resume_from_checkpoint latest."
    )


def save_step(s: Session) -> Path:
    """The checkpoint of the current step, after checking that the weights are finite."""
    check_weights_finite(s)
    return save_checkpoint(s.accelerator, s.output_dir, s.record.global_step, s.args.checkpoints_total_limit)


def update_is_unusable(s: Session, nonfinite: torch.Tensor) -> bool:
    """Whether this optimizer step's update must be dropped: some process saw a non-finite loss or gradient norm
    (one host read per optimizer step, agreed by every process). Up to `--max_nonfinite_steps` such steps are
    skipped and recorded; the next one raises `NonFiniteTraining`, before any checkpoint holds the damage."""
    args, accelerator, record = s.args, s.accelerator, s.record
    if accelerator.num_processes > 1:
        nonfinite = accelerator.reduce(nonfinite.float(), reduction="sum")
    if not bool(nonfinite.item()):
        return False
    step = record.global_step + 1
    if len(record.skipped_steps) < args.max_nonfinite_steps:
        record.skipped_steps.append(step)
        logger.warning("step %d: non-finite loss or gradient, update skipped (%d of at most %d)", step,
                       len(record.skipped_steps), args.max_nonfinite_steps)  # fmt: skip
        return True
    raise NonFiniteTraining(
        f"The loss or gradient norm is not finite at step {step}: training stopped before its update. "
        f"{newest_checkpoint_text(s.output_dir)}; lower --learning_rate or raise --max_nonfinite_steps to skip "
        "such steps, then resume with --resume_from_checkpoint latest."
    )


def training_step(s: Session, batch: dict[str, torch.Tensor], micro_step: int) -> torch.Tensor:
    """One micro-batch: noise and levels from the step's generator, the objective's loss, backward, and at the
    end of each accumulation, the update (dropped when the loss or gradients are not finite)."""
    args, accelerator = s.args, s.accelerator
    with accelerator.accumulate(s.unet):
        clean = batch["pixel_values"]
        generator = step_generator(args.seed, micro_step, accelerator.process_index, "cpu")
        noise = torch.randn(clean.shape, generator=generator).to(clean.device, clean.dtype)
        levels = s.objective.sample_levels(clean.shape[0], generator).to(clean.device)
        model_kwargs: dict[str, Any] = {"class_labels": batch.get("class_labels")}
        if args.solver_steps_choices:  # step-aware training: a step count per batch
            pick = int(torch.randint(len(args.solver_steps_choices), (1,), generator=generator))
            model_kwargs["solver"] = {"steps": args.solver_steps_choices[pick]}
        if args.block_skip_prob:  # sub-network training: each skippable block left out with this probability
            drawn = (torch.rand(len(s.skip_blocks), generator=generator) < args.block_skip_prob).tolist()
            skip = [name for name, skipped in zip(s.skip_blocks, drawn) if skipped]
            model_kwargs["solver"] = {**model_kwargs.get("solver", {}), "skip": skip}
        if args.class_dropout_prob:  # the null class (the last embedding) in place of some labels: guidance
            labels = model_kwargs["class_labels"]
            model_kwargs["class_labels"] = drop_labels(labels, args.class_dropout_prob, s.n_classes, generator)
        loss = s.objective.loss(s.unet, clean, noise, levels, s.record.global_step, **model_kwargs)
        accelerator.backward(loss)
        # accumulated on the device over the micro-steps of one update: read once, when it is applied
        s.nonfinite = ~torch.isfinite(loss.detach()) | (s.nonfinite if s.nonfinite is not None else False)
        if accelerator.sync_gradients:
            unusable = s.nonfinite
            s.nonfinite = None
            if args.max_grad_norm > 0:
                norm = accelerator.clip_grad_norm_(s.unet.parameters(), args.max_grad_norm)
                if norm is not None and accelerator.mixed_precision != "fp16":  # fp16's scaler skips overflows itself
                    unusable = unusable | ~torch.isfinite(norm)
            if update_is_unusable(s, unusable):
                s.optimizer.zero_grad(set_to_none=True)
                s.lr_scheduler.step()  # the step still counts: the schedule and the resume stay aligned
                return loss
        s.optimizer.step()
        s.lr_scheduler.step()
        s.optimizer.zero_grad(set_to_none=True)
    return loss


def log_step(s: Session, progress: tqdm) -> None:
    """Every `logging_steps`: the mean loss of the window into the history, the bar and the trackers."""
    args, record = s.args, s.record
    step = record.global_step
    if step % args.logging_steps and step != args.max_train_steps:
        return
    if s.pending_losses:  # one host read per logging step, not one per micro-step
        record.losses.extend(torch.stack(s.pending_losses).tolist())
        s.pending_losses.clear()
    window = record.losses[-args.logging_steps * args.gradient_accumulation_steps :]
    logs = {"loss": sum(window) / len(window), "lr": s.lr_scheduler.get_last_lr()[0]}
    if s.ema is not None:
        logs["ema_decay"] = s.ema.cur_decay_value
    record.history.append({"step": step, **logs})
    progress.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs['lr']:.2e}")
    s.accelerator.log(logs, step=step)


def checkpoint_and_validate(s: Session, tick: float) -> float:
    """When due: the held-out error (before the checkpoint, which records it), the checkpoint, the sample grid.
    Their time is not training time. Returns the new tick."""
    args, record = s.args, s.record
    step = record.global_step
    checkpointing = args.checkpointing_steps and step % args.checkpointing_steps == 0
    validating = args.validation_steps and step % args.validation_steps == 0 and step < args.max_train_steps
    if not (checkpointing or validating):
        return tick
    record.train_time += time.perf_counter() - tick
    if validating:
        evaluate_held_out(s)
    if checkpointing:
        save_step(s)
    if validating:
        save_validation_grid(s.accelerator, s.unet, s.ema, s.objective, args, s.n_classes, s.output_dir, step)
    return time.perf_counter()


def stop_if_preempted(s: Session, tick: float) -> None:
    """After an optimizer step: if a preemption signal reached any process, every process saves this step's
    checkpoint (unless it was just saved) and `Preempted` is raised."""
    guard = s.preemption
    if guard is None or not any_process(s.accelerator, guard.requested):
        return
    record = s.record
    record.train_time += time.perf_counter() - tick
    path = s.output_dir / f"checkpoint-{record.global_step}"
    just_saved = s.args.checkpointing_steps and record.global_step % s.args.checkpointing_steps == 0
    if not just_saved:  # decided from the options alone, so every process makes the same (collective) call
        path = save_step(s)
    s.accelerator.end_training()
    raise Preempted(record.global_step, path, guard.received.name if guard.received else "a signal")


def run_loop(s: Session) -> list[list[int]]:
    """Train to `max_train_steps`; returns this process's example indices per micro-batch (for the process log)."""
    args, accelerator, record = s.args, s.accelerator, s.record
    steps_per_epoch = math.ceil(len(s.dataloader) / args.gradient_accumulation_steps)
    progress = tqdm(total=args.max_train_steps, initial=record.global_step, desc="training",
                    disable=not accelerator.is_local_main_process)  # fmt: skip
    first_epoch = record.global_step // steps_per_epoch
    batches_to_skip = (record.global_step % steps_per_epoch) * args.gradient_accumulation_steps
    micro_step = record.global_step * args.gradient_accumulation_steps
    seen_indices: list[list[int]] = []
    if record.global_step >= args.max_train_steps:
        progress.close()
        return seen_indices  # resumed from the final checkpoint only to export it
    if record.global_step == 0:
        evaluate_held_out(s)  # the untrained model: the baseline of the held-out curve
    tick = step_start = time.perf_counter()
    for epoch in range(first_epoch, math.ceil(args.max_train_steps / steps_per_epoch)):
        s.transform.epoch = epoch
        loader = s.dataloader
        if epoch == first_epoch and batches_to_skip:
            loader = accelerator.skip_first_batches(s.dataloader, batches_to_skip)
        # Through the loader, not the sampler: accelerate's loaders reset the sampler's epoch to their own
        # iteration count when they start, and a loader made by skip_first_batches starts counting at 0.
        loader.set_epoch(epoch)
        s.unet.train()
        for batch in loader:
            loss = training_step(s, batch, micro_step)
            micro_step += 1
            record.images_seen += batch["pixel_values"].shape[0] * accelerator.num_processes
            s.pending_losses.append(accelerator.reduce(loss.detach(), reduction="mean"))  # read when logged
            if args.record_process_log:
                seen_indices.append(batch["index"].tolist())
            if not accelerator.sync_gradients:
                continue
            record.global_step += 1
            if s.ema is not None:
                s.ema.step(accelerator.unwrap_model(s.unet).parameters())
            progress.update(1)
            log_step(s, progress)
            record.step_seconds.append(time.perf_counter() - step_start)
            tick = checkpoint_and_validate(s, tick)
            stop_if_preempted(s, tick)
            step_start = time.perf_counter()
            if record.global_step >= args.max_train_steps:
                break
        if record.global_step >= args.max_train_steps:
            break
    record.train_time += time.perf_counter() - tick
    progress.close()
    return seen_indices


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


def finish(s: Session, seen_indices: list[list[int]]) -> TrainingResult:
    """Save the final state, then (main process) export the EMA weights as a pipeline with grid, metrics, card."""
    args, accelerator, record = s.args, s.accelerator, s.record
    check_weights_finite(s)
    if args.checkpointing_steps and record.global_step % args.checkpointing_steps:  # the final state, to go on from
        save_step(s)
    if args.record_process_log:
        write_process_log(accelerator, s.unet, s.output_dir, seen_indices)
    evaluate_held_out(s)
    accelerator.wait_for_everyone()
    result = TrainingResult(record.global_step, s.output_dir, loss_history=record.history,
                            train_seconds=record.train_time, final_loss=record.final_loss(),
                            median_step_seconds=record.median_step_seconds(),
                            held_out_error=record.held_out, images_per_second=record.images_per_second())  # fmt: skip
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(s.unet)
        if s.ema is not None:
            s.ema.copy_to(model.parameters())
        if args.gradient_checkpointing:
            model.disable_gradient_checkpointing()
        export = export_run(accelerator, model, s.objective, args, s.n_classes, s.output_dir, record)
        result.metrics, result.grid_path, result.push_error = export.metrics, export.grid_path, export.push_error
    accelerator.end_training()
    result.unet = accelerator.unwrap_model(s.unet)
    return result


def train(args: argparse.Namespace) -> TrainingResult:
    """Run the training the (validated) options describe; see the module docstring."""
    warn_about_settings(args)
    output_dir = Path(args.output_dir)
    prepared = prepare(args, output_dir)
    if isinstance(prepared, TrainingResult):
        return prepared
    session = set_up(args, output_dir, prepared)
    with PreemptionGuard(args.preemption_signals) as guard:
        session.preemption = guard
        seen_indices = run_loop(session)
    return finish(session, seen_indices)
