"""How a saved pipeline folder names its code, so that diffusers loads it by Hub id with or without this package.

diffusers resolves a `model_index.json` entry such as `"unet": ["modeling_cunet", "ContinuousUNet2DModel"]` to
the file `unet/modeling_cunet.py` in the repository and runs it only with `trust_remote_code=True`. An entry naming
an installed module (`["diffusers_cunet.unet_continuous_2d", ...]`) is refused when loading by Hub id (diffusers
0.42 looks for a file of that name, or a library it knows), so every folder this package saves names code files:
the model's (written by `ContinuousUNet2DModel.save_pretrained`) and, for `ContinuousUNetPipeline`, the pipeline's
(`pipeline_cunet.py`, named by `_class_name`). With the package installed, `ContinuousUNetPipeline.from_pretrained`
builds the pipeline from the package's own classes instead, so the shipped code does not run there.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

from ..atomic_write import replace_text

MODEL_CLASS = "ContinuousUNet2DModel"
MODEL_CODE_MODULE = "modeling_cunet"  # unet/modeling_cunet.py
PIPELINE_CLASS = "ContinuousUNetPipeline"
PIPELINE_CODE_MODULE = "pipeline_cunet"  # pipeline_cunet.py at the top of the folder
PIPELINE_CODE_FILE = f"{PIPELINE_CODE_MODULE}.py"
INDEX_FILE = "model_index.json"


def pipeline_code_text() -> str:
    """The text of `pipeline_cunet.py`: generated from the package or, when this module is part of that file
    (loaded as remote code), the file itself, so a re-saved folder ships the code it was loaded with."""
    if __name__.startswith("diffusers_cunet."):
        # importlib, not an import statement: diffusers checks that every import in a remote file is installed
        return importlib.import_module("diffusers_cunet.remote_code").pipeline_code()
    return Path(__file__).read_text()


def write_code_layout(folder: str | os.PathLike, with_pipeline_code: bool) -> None:
    """Point the `unet` entry of `folder/model_index.json` at `unet/modeling_cunet.py` (when the unet is a
    `ContinuousUNet2DModel`) and, if `with_pipeline_code`, ship `pipeline_cunet.py` and name it in `_class_name`.
    Each file is written to a temporary file first, then renamed."""
    folder = Path(folder)
    index = json.loads((folder / INDEX_FILE).read_text())
    index.pop("_name_or_path", None)  # where a loaded pipeline came from: a path on another machine means nothing
    unet = index.get("unet")
    if isinstance(unet, list) and len(unet) == 2 and unet[1] == MODEL_CLASS:
        index["unet"] = [MODEL_CODE_MODULE, MODEL_CLASS]
    if with_pipeline_code:
        replace_text(folder / PIPELINE_CODE_FILE, pipeline_code_text())
        index["_class_name"] = [PIPELINE_CODE_MODULE, PIPELINE_CLASS]
    replace_text(folder / INDEX_FILE, json.dumps(index, indent=2, sort_keys=True) + "\n")


def upload_pipeline_folder(folder: str | os.PathLike, repo_id: str, token: str | None = None,
                           private: bool | None = None, **upload_options) -> str:  # fmt: skip
    """Create `repo_id` on the Hugging Face Hub if needed and upload `folder` to it (after its code files are
    written); `upload_options` go to `huggingface_hub.upload_folder` (`commit_message`, `create_pr`,
    `ignore_patterns`, ...). Returns the commit's URL. The one upload path: the pipelines' `save_pretrained(...,
    push_to_hub=True)` and the trainer's `--push_to_hub` both come here."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo = api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo.repo_id, folder_path=str(folder), **upload_options)
    return str(getattr(info, "commit_url", info))
