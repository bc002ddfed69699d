#!/usr/bin/env python
"""Train a continuous U-Net (ContinuousUNet2DModel) on a `datasets` image set.

    accelerate launch training/train.py --config training/configs/digits.yaml --output_dir outputs/digits
    python training/train.py --dataset_name uoft-cs/cifar10 --model_preset cifar10-32 --output_dir outputs/c10

`python training/train.py --help` lists the options (`training/options.py`); the run itself is
`training.loop.train` (data, model, objective, loop, checkpoints, export live in `training/`).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `training` importable as `python -m training.train` would
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from torch.distributed import DistError  # noqa: E402

from training.loop import TrainingResult, train  # noqa: E402
from training.options import parse_args  # noqa: E402
from training.preemption import EXIT_PREEMPTED, Preempted  # noqa: E402


def lost_contact(error: RuntimeError) -> bool:
    """Whether `error` is a collective that failed because another process of the run is gone (or timed out,
    after --collective_timeout): torch's DistError, or gloo's and NCCL's plain RuntimeErrors."""
    import torch.distributed as dist

    markers = ("gloo", "NCCL", "Timed out", "Connection closed", "Connection reset")
    return isinstance(error, DistError) or (dist.is_initialized() and any(m in str(error) for m in markers))


def main(argv: list[str] | None = None) -> TrainingResult:
    """Parse `argv` (default: the command line) and train."""
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    return train(args)


if __name__ == "__main__":
    try:
        result = main()
    except ValueError as error:  # every input problem: one line, no traceback
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except RuntimeError as error:
        if not lost_contact(error):
            raise
        print(f"error: a collective of this multi-process run failed ({str(error).splitlines()[0][:200]}): another "
              "process was probably lost. This process stops; the checkpoints are intact: start every process "
              "again with --resume_from_checkpoint latest.", file=sys.stderr)  # fmt: skip
        sys.exit(3)
    except Preempted as stop:  # a preemption signal: the checkpoint of the last finished step is saved
        print(stop, file=sys.stderr, flush=True)
        logging.shutdown()
        # Leave now: the grace period before SIGKILL is short, and the interpreter's teardown (torch, data loader,
        # accelerate) takes seconds; everything the run needs is on disk.
        os._exit(EXIT_PREEMPTED)
    if result.push_error:
        sys.exit(1)
