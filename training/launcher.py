"""What `accelerate launch` was asked for, to say so when it started fewer processes."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import yaml

logger = logging.getLogger("diffusers_cunet.train")


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
