"""Shared fixtures: tiny models that run in milliseconds on a CPU."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from diffusers_cunet import ContinuousUNet2DModel

# Under pytest-xdist (`make test` runs one worker per core) each worker, and what it starts, uses one thread: two
# workers of two threads each would wait for each other at every operation (see the README's note on threads).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `training` and `benchmarks` are folders of the repository, not installed packages
    sys.path.insert(0, str(ROOT))

TINY_CONFIG = dict(
    sample_size=8,
    in_channels=3,
    out_channels=3,
    block_out_channels=(16, 32),
    attention_levels=(False, True),
    mid_attention=True,
    attention_head_dim=8,
    norm_num_groups=8,
    solver_method="euler",
    solver_steps=2,
)


def _have_fashion_mnist() -> bool:
    from training import fashion_mnist

    try:
        return fashion_mnist.local_folder() is not None
    except ValueError:  # $FASHION_MNIST_DIR names a folder without the files
        return False


needs_data = pytest.mark.skipif(not _have_fashion_mnist(), reason="Fashion-MNIST files missing: make fashion-data")


def perturb_zero_init(model: torch.nn.Module, scale: float = 0.1, seed: int = 0) -> torch.nn.Module:
    """Give the zero-initialised last conv of every ODE field random weights, so a fresh model is not the
    identity inside its blocks and the timestep conditioning shows in the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "dynamics.conv2" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
    return model


def make_tiny(seed: int = 0, **overrides) -> ContinuousUNet2DModel:
    torch.manual_seed(seed)
    return perturb_zero_init(ContinuousUNet2DModel(**{**TINY_CONFIG, **overrides}), seed=seed).eval()


def lay_out_hub_cache(cache, repo_id: str, pipe, hub_layout: bool = True) -> None:
    """A Hugging Face cache as a download leaves it: snapshots/<commit>/..., refs/main -> <commit>, and the
    repository's file listing in trees/<commit>.json, which diffusers reads offline to decide what to fetch (as it
    reads the Hub's listing online). `hub_layout`: the folder as our tools lay it out for sharing (the code files
    named; see diffusers_cunet.hub_code), else as `pipe.save_pretrained` left it."""
    from diffusers_cunet.pipelines.code_files import write_code_files

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    pipe.save_pretrained(snapshot)
    if hub_layout:
        write_code_files(snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    files = {path.relative_to(snapshot).as_posix(): {"size": path.stat().st_size, "blob_id": hashlib.sha1(
        path.read_bytes()).hexdigest()} for path in sorted(snapshot.rglob("*")) if path.is_file()}  # fmt: skip
    (repo / "trees").mkdir()
    (repo / "trees" / f"{commit}.json").write_text(json.dumps({"format_version": 1, "files": files}))


@pytest.fixture
def offline(monkeypatch) -> None:
    """This process offline for huggingface_hub and datasets, as `HF_HUB_OFFLINE=1` set before they were imported
    makes it: both read the variable at import, so setting it later alone would leave each Hub request to fail only
    after its retries (23 s without a network)."""
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)


@pytest.fixture
def tiny_model() -> ContinuousUNet2DModel:
    return make_tiny()


@pytest.fixture
def tiny_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    sample = torch.randn(2, 3, 8, 8, generator=generator)
    return sample, torch.tensor([10, 500])
