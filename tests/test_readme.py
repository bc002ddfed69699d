"""The README's examples run as written: every Python block in a fresh interpreter (the Hub id it names served
from an offline cache, the output folders it names made by short training runs), every training command parsed
by the training script's own parser."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest
import torch
from conftest import lay_out_hub_cache
from diffusers import DDIMScheduler, DDPMPipeline
from training_helpers import ROOT, load_train_module, train

from diffusers_cunet.presets import from_preset
from training.options import parse_args

README = (ROOT / "README.md").read_text()
PYTHON_BLOCKS = [m.group(1) for m in re.finditer(r"```python\n(.*?)```", README, re.S)]
BASH_BLOCKS = [m.group(1) for m in re.finditer(r"```bash\n(.*?)```", README, re.S)]
NEEDS_CUDA = ".cuda()"


def _commands(block: str) -> list[list[str]]:
    """The shell commands of a bash block (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n\s*", " ", block)
    return [shlex.split(line, comments=True) for line in text.splitlines() if line.split("#")[0].strip()]


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory):
    """A working folder with the outputs the examples load, and a Hub cache holding `org/cunet-cifar10`."""
    folder = tmp_path_factory.mktemp("user")
    module = load_train_module()
    # as `make demo` trains it (EDM), and a DDPM-style run
    train(folder / "outputs" / "digits-demo", "--max_train_steps", "1", "--resolution", "16", "--preconditioning",
          "edm", module=module)  # fmt: skip
    train(folder / "outputs" / "digits-ddpm", "--max_train_steps", "1", "--resolution", "16", module=module)
    train(folder / "outputs" / "digits-fdm", "--max_train_steps", "1", "--preconditioning", "edm-fdm", module=module)
    train(folder / "outputs" / "digits-guided", "--max_train_steps", "1", "--preconditioning", "edm", "--class_column",
          "label", "--class_dropout_prob", "0.1", module=module)  # fmt: skip
    torch.manual_seed(0)
    hub = DDPMPipeline(unet=from_preset("cifar10-32", block_out_channels=(32, 64), attention_levels=(False, True)),
                       scheduler=DDIMScheduler())  # fmt: skip
    lay_out_hub_cache(folder / "hf" / "hub", "org/cunet-cifar10", hub)
    return folder


def test_the_readme_has_examples():
    assert len(PYTHON_BLOCKS) >= 6 and any('from_pretrained("org/cunet-cifar10")' in b for b in PYTHON_BLOCKS)


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_python_example_runs_as_written(index, user_folder):
    code = PYTHON_BLOCKS[index]
    if NEEDS_CUDA in code and not torch.cuda.is_available():
        pytest.skip("a GPU example (tests/test_gpu.py covers its parts where a GPU is present)")
    hf = user_folder / "hf"
    env = {**os.environ, "HF_HOME": str(hf), "HF_HUB_CACHE": str(hf / "hub"), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", code], cwd=user_folder, env=env, capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    assert run.returncode == 0, f"README example {index} failed:\n{code}\n{run.stderr[-3000:]}"


def test_training_commands_parse():
    """Every `training/train.py` command line of the README is accepted by the script's parser as written."""
    commands = [c for block in BASH_BLOCKS for c in _commands(block) if "training/train.py" in c]
    assert len(commands) >= 5
    cwd = os.getcwd()
    os.chdir(ROOT)  # the configs are named relative to the repository root
    try:
        for command in commands:
            parse_args(command[command.index("training/train.py") + 1 :])
    finally:
        os.chdir(cwd)
