"""Reading a saved model folder with errors that name the file at fault.

diffusers reports a corrupted or mismatched weights file from deep inside its loaders, without the file's name, and
a bad config only once the weights are read. `ContinuousUNet2DModel.from_pretrained` checks a local config first
(`check_config_file`) and reads the weights inside `errors_naming_the_weights`, which turns those errors into a
`ValueError` naming the file; missing files and network problems keep diffusers' own message.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

# diffusers' functions that read a weights file into the model (diffusers.models.model_loading_utils, modeling_utils)
_WEIGHT_READERS = frozenset(
    {"load_state_dict", "load_model_dict_into_meta", "_load_state_dict_into_model", "_load_shard_file",
     "_load_shard_files_with_threadpool", "_load_pretrained_model"}
)  # fmt: skip


def check_config_file(model_class: Any, path: str | os.PathLike, subfolder: str | None) -> None:
    """Validate a local config.json (by `model_class._validate_arguments`) before any weights are read, so its errors
    name the config, not them. A Hub id, or a folder without a config, is left to diffusers."""
    config_path = os.path.join(str(path), subfolder or "", "config.json")
    if not os.path.isfile(config_path):
        return
    parameters = inspect.signature(model_class.__init__).parameters.items()
    defaults = {name: parameter.default for name, parameter in parameters if name != "self"}
    saved = model_class.extract_init_dict(model_class.load_config(os.path.dirname(config_path)))[0]
    try:
        model_class._validate_arguments({**defaults, **saved})
    except (ValueError, TypeError) as error:
        raise ValueError(f"Invalid {model_class.__name__} config {config_path}: {error}") from error


def raised_reading_weights(error: BaseException) -> bool:
    """Whether `error` was raised while diffusers read the weights (one of `_WEIGHT_READERS` on its traceback)."""
    frame = error.__traceback__
    while frame is not None:
        if frame.tb_frame.f_code.co_name in _WEIGHT_READERS:
            return True
        frame = frame.tb_next
    return False


@contextmanager
def errors_naming_the_weights(model_name: str, path: str | os.PathLike, options: Mapping[str, Any]) -> Iterator[None]:
    """Around `ModelMixin.from_pretrained(path, **options)`: a weights file that cannot be read or does not fit the
    architecture raises a `ValueError` naming the file; any other error passes unchanged."""
    try:
        yield
    except Exception as error:
        unreadable = isinstance(error, OSError) and "Unable to load weights" in str(error)
        mismatched = isinstance(error, (RuntimeError, ValueError, KeyError)) and raised_reading_weights(error)
        if not (unreadable or mismatched):
            raise
        variant = options.get("variant")
        name = f"diffusion_pytorch_model.{variant}.safetensors" if variant else "diffusion_pytorch_model.safetensors"
        weights = os.path.join(str(path), options.get("subfolder") or "", name)
        raise ValueError(f"Could not load {model_name} weights from {weights}: {error}") from error
