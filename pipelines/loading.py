"""`ContinuousUNetPipeline.from_pretrained` with this package installed: the pipeline is built from the package's
own classes, so no code shipped in the folder runs and `trust_remote_code` is not needed.

(diffusers' own loader would run the shipped `pipeline_cunet.py` and `unet/modeling_cunet.py` that a saved folder
names, and refuse without `trust_remote_code=True`; see `diffusers_cunet.hub_code`.) Not part of the remote pipeline
file."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import diffusers

from diffusers_cunet.hub_code import INDEX_FILE, MODEL_CLASS
from diffusers_cunet.preconditioned_unet_2d import PreconditionedUNet2DModel
from diffusers_cunet.unet_continuous_2d import ContinuousUNet2DModel

from .code_files import code_file_problems
from .pipeline_utils import HUB_OPTIONS, hub_options, load_solver_schedule

MODEL_OPTIONS = ("torch_dtype", "variant", "use_safetensors")
# `trust_remote_code` is accepted (and not needed): loading code written for diffusers' loader keeps working.
LOAD_OPTIONS = (*HUB_OPTIONS, *MODEL_OPTIONS, "unet", "scheduler", "trust_remote_code")
# What a pipeline needs from a Hub repository (not its checkpoints, samples or remote code).
PIPELINE_FILES = [INDEX_FILE, "unet/*.json", "unet/*.safetensors", "scheduler/*", "solver_schedule.json"]


def load_pipeline(pipeline_class, name_or_path: str | os.PathLike, **options: Any):
    """Build `pipeline_class` from a saved folder or a Hub repository (through the cache, or a download)."""
    unknown = sorted(set(options) - set(LOAD_OPTIONS))
    if unknown:
        raise TypeError(
            f"{pipeline_class.__name__}.from_pretrained got unexpected options {unknown}; it takes {LOAD_OPTIONS}."
        )
    folder = pipeline_folder(name_or_path, options)
    index_path = folder / INDEX_FILE
    if not index_path.is_file():
        raise ValueError(f"{name_or_path} is not a saved pipeline: {index_path} does not exist.")
    index = json.loads(index_path.read_text())
    for problem in code_file_problems(folder):
        warnings.warn(
            f"{problem}: loading with the installed package is unaffected, but diffusers without it cannot load "
            f"this folder as saved. `python -m diffusers_cunet.pipelines.code_files {folder}` writes this "
            "version's code files.",
            stacklevel=3,
        )
    model_options = {key: options[key] for key in MODEL_OPTIONS if options.get(key) is not None}
    if isinstance(model_options.get("torch_dtype"), dict):  # per component, as diffusers takes it
        dtypes = model_options.pop("torch_dtype")
        if dtypes.get("unet", dtypes.get("default")) is not None:
            model_options["torch_dtype"] = dtypes.get("unet", dtypes.get("default"))
    unet = options.get("unet") or component_class(index, "unet", index_path).from_pretrained(
        folder, subfolder="unet", **model_options
    )
    scheduler = options.get("scheduler") or component_class(index, "scheduler", index_path).from_pretrained(
        folder, subfolder="scheduler"
    )
    pipeline = pipeline_class(unet=unet, scheduler=scheduler)
    pipeline.register_to_config(_name_or_path=str(name_or_path))
    if hasattr(pipeline_class, "solver_schedule"):  # asked of the class: the instance's property would look it up
        pipeline.solver_schedule = load_solver_schedule(folder)  # the snapshot's own file, no second Hub request
    return pipeline


def pipeline_folder(name_or_path: str | os.PathLike, options: dict[str, Any]) -> Path:
    """A local folder as it is; a Hub id -> its snapshot in the Hugging Face cache (downloaded if needed). A name that
    is neither is a `ValueError` that says so for both readings."""
    path = Path(str(name_or_path))
    if path.is_dir():
        return path
    text = str(name_or_path)
    if path.exists():
        raise ValueError(f"{text} is a file, not a saved pipeline folder.")
    if text.startswith((".", "/", "~")) or text.count("/") != 1 or os.sep != "/" and os.sep in text:
        raise ValueError(f"No folder {text} exists (from {os.getcwd()}): give the folder a pipeline was saved to.")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(text, allow_patterns=PIPELINE_FILES, **hub_options(options)))
    except (LocalEntryNotFoundError, RepositoryNotFoundError, HFValidationError) as error:
        where = "in the Hugging Face cache (offline)" if isinstance(error, LocalEntryNotFoundError) else "on the Hub"
        raise ValueError(f"No folder {text} exists (from {os.getcwd()}), and no repository {text} is {where}.") from (
            error
        )


def component_class(index: dict[str, Any], name: str, index_path: Path) -> type:
    """The class of component `name` of `model_index.json`: this package's model, or a diffusers class."""
    entry = index.get(name)
    if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(part, str) for part in entry)):
        raise ValueError(f"{index_path} has no valid {name!r} entry (expected [library, class]), got {entry!r}.")
    library, class_name = entry
    if class_name == MODEL_CLASS:  # whichever module the folder names: the installed class serves
        return ContinuousUNet2DModel
    if class_name == PreconditionedUNet2DModel.__name__:  # the EDM-trained baseline
        return PreconditionedUNet2DModel
    if library == "diffusers" and hasattr(diffusers, class_name):
        return getattr(diffusers, class_name)
    raise ValueError(f"{index_path} names {name} = {entry}: neither a ContinuousUNet2DModel nor a diffusers class.")
