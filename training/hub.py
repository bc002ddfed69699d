"""Uploading a trained pipeline to the Hugging Face Hub, and checking before training that it will work."""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger("diffusers_cunet.train")

NOT_UPLOADED = ("checkpoint-*/**", ".checkpoint-*/**", "logs/**", "process_logs/**", "samples/**")


def first_line(error: Exception, default: str = "") -> str:
    """The first line of `error`'s message (Hub errors carry long request dumps after it), or `default`."""
    text = str(error).strip()
    return text.splitlines()[0] if text else default


def push_to_hub(output_dir: Path, repo_id: str, token: str | None, private: bool) -> str:
    """Upload the pipeline, grid, metrics and model card (not checkpoints or logs) with huggingface_hub."""
    from diffusers_cunet.hub_code import upload_pipeline_folder

    message = "Upload continuous U-Net pipeline trained with diffusers-cunet"
    return upload_pipeline_folder(output_dir, repo_id, token, private, commit_message=message,
                                  ignore_patterns=list(NOT_UPLOADED))  # fmt: skip


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
        reason = first_line(error, type(error).__name__)
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
        reason = first_line(error)
        excludes = " ".join(f"--exclude '{pattern}'" for pattern in NOT_UPLOADED)
        line = (
            f"Upload to {repo_id} failed ({type(error).__name__}: {reason}); the pipeline is saved in {output_dir}/ "
            f"and nothing is lost: upload it later with `hf upload {repo_id} {output_dir} {excludes}`."
        )
        logger.error(line)
        return line
    print(f"Uploaded to {url}")
    return None
