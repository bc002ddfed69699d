"""Training checkpoints that lose nothing: written atomically, rotated, and found again on resume.

`accelerator.save_state` writes into a hidden `.checkpoint-N.partial` folder, then the manifest (sizes and
SHA-256 of every file, `training.checkpoint_manifest`); only when every process has finished is it renamed to
`checkpoint-N` (a rename within one file system is atomic). A run killed while writing leaves at most a partial
folder, which is ignored and cleaned up, and the previous checkpoint intact; a write that fails (a full disk)
removes its partial folder and raises `CheckpointWriteError`, the previous checkpoints untouched. On resume,
`latest` is the newest checkpoint whose files match its manifest: damaged ones are named and passed over.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from training.checkpoint_manifest import damaged_files, write_manifest
from training.staging import WRITE_ERRORS

logger = logging.getLogger("diffusers_cunet.train")

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
MODEL_CONFIG_FILE = "model_config.json"
EMA_FOLDER = "unet_ema"
RUN_RECORD_FILE = "run_record.json"  # loss history, time and images so far: a resumed run reports the whole run


def checkpoint_step(path: str | os.PathLike) -> int:
    match = CHECKPOINT_PATTERN.match(Path(path).name)
    if match is None:
        raise ValueError(f"{str(path)!r} is not a checkpoint folder (expected a name like 'checkpoint-500').")
    return int(match.group(1))


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in `output_dir`, oldest first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and CHECKPOINT_PATTERN.match(p.name)]
    return sorted(found, key=checkpoint_step)


def resolve_checkpoint(output_dir: str | os.PathLike, spec: str | None, warn=logger.warning) -> Path | None:
    """The checkpoint `--resume_from_checkpoint` names: `latest` (the newest undamaged one, `None` if there is none
    yet; each damaged one passed over is named in a warning) or a path (a `ValueError` naming the damaged file)."""
    if spec is None:
        return None
    if spec == "latest":
        checkpoints = list_checkpoints(output_dir)
        for checkpoint in reversed(checkpoints):
            problems = damaged_files(checkpoint)
            if not problems:
                return checkpoint
            warn(f"{checkpoint} is damaged ({'; '.join(problems)}): resuming from an older checkpoint instead.")
        if checkpoints:
            raise ValueError(f"Every checkpoint in {output_dir} is damaged (see the warnings); nothing to resume.")
        return None
    path = Path(spec)
    if not path.is_dir():
        path = Path(output_dir) / spec
    if not path.is_dir():
        raise ValueError(f"Checkpoint {spec!r} does not exist (looked in {Path(spec)} and {path}).")
    checkpoint_step(path)
    problems = damaged_files(path)
    if problems:
        raise ValueError(f"Checkpoint {path} is damaged: {'; '.join(problems)}.")
    return path


class CheckpointWriteError(ValueError):
    """A checkpoint could not be written (e.g. the disk is full); the earlier checkpoints are untouched."""


def any_process(accelerator, flag: bool) -> bool:
    """Whether `flag` holds on some process (every process must call it: one small all-reduce)."""
    if accelerator.num_processes == 1:
        return flag
    total = accelerator.reduce(torch.tensor([float(flag)], device=accelerator.device), reduction="sum")
    return bool(total.item() > 0)


def save_checkpoint(accelerator, output_dir: str | os.PathLike, step: int, total_limit: int | None = None) -> Path:
    """Save the full training state of `accelerator` as `output_dir/checkpoint-<step>`, atomically, with its
    manifest written last.

    Must be called on every process. Older checkpoints beyond `total_limit` are deleted after the new one
    is complete.

    Raises:
        CheckpointWriteError: when a file cannot be written (on any process); the partial folder is removed.
    """
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    partial = output_dir / f".checkpoint-{step}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    error: BaseException | None = None
    try:
        accelerator.save_state(str(partial), safe_serialization=True)
    except WRITE_ERRORS as failure:  # a full disk, a file-size limit, a vanished mount
        error = failure
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and error is None:
        try:
            write_manifest(partial)
        except WRITE_ERRORS as failure:
            error = failure
    if any_process(accelerator, error is not None):
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
        kept = list_checkpoints(output_dir)
        raise CheckpointWriteError(
            f"Could not write checkpoint {final}: {error or 'failed on another process'}. Nothing of it was kept; "
            f"{'the newest intact checkpoint is ' + str(kept[-1]) if kept else 'there is no earlier checkpoint'}."
        ) from error
    if accelerator.is_main_process:
        if final.exists():  # only when a run re-saves a step it already saved: keep the newer state
            discard(final)
        os.replace(partial, final)
        if total_limit is not None:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                discard(old)
    accelerator.wait_for_everyone()
    return final


def discard(checkpoint: Path) -> None:
    """Delete a checkpoint folder so that a kill midway leaves no half-deleted `checkpoint-N`: it is renamed to a
    hidden `.checkpoint-N.deleting` first (atomic), then removed (a leftover is cleaned up on the next start)."""
    doomed = checkpoint.with_name(f".{checkpoint.name}.deleting")
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(checkpoint, doomed)
    shutil.rmtree(doomed)


def remove_partial_checkpoints(output_dir: str | os.PathLike, log=logger.warning) -> list[Path]:
    """Delete what a run killed while writing left (partial checkpoints, checkpoints being deleted, a staged
    export), saying so; a pipeline folder renamed aside by an interrupted export is put back. Returns the paths."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    leftovers = (".checkpoint-*.partial", ".checkpoint-*.deleting", ".export.partial", ".*.old")
    removed = sorted(path for pattern in leftovers for path in folder.glob(pattern))
    for path in removed:
        original = folder / path.name.removeprefix(".").removesuffix(".old")
        if path.name.endswith(".old") and not original.exists():  # the export stopped between its two renames
            os.replace(path, original)
            log(f"Restored {original} from {path}: an export was stopped while it replaced it.")
            continue
        shutil.rmtree(path, ignore_errors=True)
        log(f"Removed {path}: left by a run stopped while it wrote it (the complete checkpoints are untouched).")
    return removed


# config entries that do not shape the weights: a checkpoint of an earlier version without them still resumes
NOT_ARCHITECTURE = ("id2label",)


def check_checkpoint_matches(checkpoint: Path, model_config: dict[str, Any]) -> None:
    """Refuse, before any compute, a checkpoint written for another architecture (class names aside)."""
    saved_path = checkpoint / MODEL_CONFIG_FILE
    if not saved_path.is_file():
        raise ValueError(f"{checkpoint} is not a checkpoint of this training script: {MODEL_CONFIG_FILE} is missing.")
    saved = json.loads(saved_path.read_text())
    current = json.loads(json.dumps(model_config))
    keys = sorted(k for k in set(saved) | set(current)
                  if not k.startswith(("_", "solver_")) and k not in NOT_ARCHITECTURE)  # fmt: skip
    different = {k: (saved.get(k), current.get(k)) for k in keys if saved.get(k) != current.get(k)}
    if different:
        details = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in different.items())
        raise ValueError(f"Checkpoint {checkpoint} belongs to another model ({details}).")


def read_run_record(checkpoint: Path) -> dict[str, Any]:
    """The run record saved with `checkpoint` (empty history for checkpoints of older versions, which had none)."""
    path = checkpoint / RUN_RECORD_FILE
    if not path.is_file():
        return {"history": [], "train_time": 0.0, "images_seen": 0}
    return json.loads(path.read_text())


def load_ema_folder(folder: str | os.PathLike, model_class: type):
    """The model saved by diffusers' `EMAModel.save_pretrained` in `folder` (the EMA weights) and the EMA state it
    wrote into the model's config (decay, step, ...), read without diffusers' warnings: `EMAModel.from_pretrained`
    passes the folder to `from_config` (deprecated) and loads a config whose EMA keys the model does not take."""
    from diffusers.training_utils import EMAModel
    from diffusers.utils import logging as diffusers_logging

    config = model_class.load_config(str(folder))
    not_state = {"self", "parameters", "model_cls", "model_config", "foreach", "kwargs"}
    state_keys = set(inspect.signature(EMAModel.__init__).parameters) - not_state
    state = {key: config[key] for key in state_keys | {"optimization_step"} if key in config}
    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # only the "not expected and will be ignored" notice for those keys
    try:
        model = model_class.from_pretrained(str(folder))
    finally:
        diffusers_logging.set_verbosity(level)
    return model, state


def register_checkpoint_hooks(accelerator, unet, ema, model_class, run_record) -> None:
    """Make accelerate's checkpoints carry the EMA weights (safetensors), the model config (checked on resume) and
    `run_record()`, the run's record at the time of saving."""
    from diffusers.training_utils import EMAModel

    def save_hook(models, weights, folder):
        if accelerator.is_main_process:
            Path(folder, MODEL_CONFIG_FILE).write_text(
                json.dumps(dict(accelerator.unwrap_model(unet).config), indent=2)
            )
            Path(folder, RUN_RECORD_FILE).write_text(json.dumps(run_record()))
            if ema is not None:
                ema.save_pretrained(str(Path(folder, EMA_FOLDER)))

    def load_hook(models, folder):
        if ema is not None:
            model, state = load_ema_folder(Path(folder, EMA_FOLDER), model_class)
            loaded = EMAModel(model.parameters(), model_cls=model_class, model_config=model.config)
            loaded.load_state_dict(state)
            ema.load_state_dict(loaded.state_dict())
            ema.to(accelerator.device)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)
