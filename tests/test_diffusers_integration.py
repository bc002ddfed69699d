"""The model inside diffusers as it is: DDPMPipeline, scheduler swaps, pipeline save/load, loading by Hub id."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import lay_out_hub_cache, make_tiny
from diffusers import (
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
)

from diffusers_cunet import ContinuousUNet2DModel
from diffusers_cunet.pipelines import ContinuousUNetPipeline
from diffusers_cunet.pipelines.code_files import write_code_files

SCHEDULERS = [DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler]


def make_pipeline() -> DDPMPipeline:
    pipe = DDPMPipeline(unet=make_tiny(), scheduler=DDPMScheduler(num_train_timesteps=1000))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe: DDPMPipeline, seed: int = 0, steps: int = 5) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed)
    return pipe(batch_size=2, generator=generator, num_inference_steps=steps, output_type="np").images


@pytest.mark.parametrize("scheduler_class", SCHEDULERS, ids=lambda c: c.__name__)
def test_ddpm_pipeline_runs_with_swapped_schedulers(scheduler_class):
    pipe = make_pipeline()
    pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config)
    images = generate(pipe)
    assert images.shape == (2, 8, 8, 3)
    assert np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    np.testing.assert_array_equal(images, generate(pipe))
    assert not np.array_equal(images, generate(pipe, seed=1))


def test_pil_output():
    pipe = make_pipeline()
    images = pipe(batch_size=1, generator=torch.Generator().manual_seed(0), num_inference_steps=2).images
    assert images[0].size == (8, 8)


def test_pipeline_save_and_load_round_trip(tmp_path, caplog):
    pipe = make_pipeline()
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["unet"] == ["diffusers_cunet", "ContinuousUNet2DModel"]  # the library, as ["diffusers", ...]
    assert (tmp_path / "unet" / "modeling_cunet.py").is_file()  # the model folder alone loads without the package
    assert not list(tmp_path.rglob("*.bin"))
    with caplog.at_level("WARNING"):
        loaded = DDPMPipeline.from_pretrained(tmp_path)  # no flag, as for a UNet2DModel
    assert type(loaded.unet) is ContinuousUNet2DModel
    assert "Expected types" not in caplog.text
    ours = ContinuousUNetPipeline.from_pretrained(tmp_path)
    assert type(ours.unet) is ContinuousUNet2DModel
    for other in (loaded, ours):
        other.set_progress_bar_config(disable=True)
        assert isinstance(other.scheduler, DDIMScheduler)
        np.testing.assert_array_equal(generate(other), generate(pipe))

    write_code_files(tmp_path)  # laid out for the Hub: diffusers then runs the shipped code, and only when trusted
    assert json.loads((tmp_path / "model_index.json").read_text())["unet"][0] == "modeling_cunet"
    with pytest.raises(ValueError, match="custom code in modeling_cunet.py"):
        DDPMPipeline.from_pretrained(tmp_path)
    shipped = DDPMPipeline.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(shipped.unet) is not ContinuousUNet2DModel
    assert type(ContinuousUNetPipeline.from_pretrained(tmp_path).unet) is ContinuousUNet2DModel
    shipped.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(generate(shipped), generate(pipe))


def test_variant_saves_beside_the_weights_and_reloads(tmp_path):
    pipe = make_pipeline()
    pipe.save_pretrained(tmp_path)
    full = (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    pipe.to(torch.float16).save_pretrained(tmp_path, variant="fp16")
    pipe.to(torch.float32)
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == full, "fp32 file kept"
    assert (tmp_path / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    half = DDPMPipeline.from_pretrained(tmp_path, variant="fp16", torch_dtype=torch.float32)
    half.set_progress_bar_config(disable=True)
    assert half.unet.dtype == torch.float32
    np.testing.assert_allclose(generate(half), generate(pipe), atol=2e-2)  # fp16 rounding of the weights
    dtypes = DDPMPipeline.from_pretrained(tmp_path, torch_dtype={"unet": torch.bfloat16, "default": torch.float32})
    assert dtypes.unet.dtype == torch.bfloat16
    with pytest.warns(UserWarning, match="safetensors all the same"):
        pipe.save_pretrained(tmp_path / "asked-for-pickle", safe_serialization=False)
    assert not list((tmp_path / "asked-for-pickle").rglob("*.bin"))
    assert (tmp_path / "asked-for-pickle" / "unet" / "diffusion_pytorch_model.safetensors").is_file()


USER_SCRIPT = """
import json, sys
import torch
{imports}
from diffusers import DDPMPipeline, DDIMScheduler
pipe = DDPMPipeline.from_pretrained("org/cunet-cifar10", trust_remote_code={trust})
pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
pipe.set_progress_bar_config(disable=True)
images = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=5, output_type="np").images
print(json.dumps(images.tolist()))
"""


def _run_as_user(cache, imports: str, trust: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_HOME": str(cache.parent)}
    script = textwrap.dedent(USER_SCRIPT.format(imports=imports, trust=trust))
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)


def test_load_by_hub_id_from_offline_cache(tmp_path):
    pipe = make_pipeline()
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    library_layout = tmp_path / "as-saved"  # pushed as DDPMPipeline saved it: loads where the package is imported
    lay_out_hub_cache(library_layout, "org/cunet-cifar10", pipe, hub_layout=False)
    result = _run_as_user(library_layout, imports="import diffusers_cunet", trust=False)
    assert result.returncode == 0, result.stderr[-3000:]
    images = np.array(json.loads(result.stdout.strip().splitlines()[-1]))
    np.testing.assert_allclose(images, generate(pipe), rtol=0, atol=1e-6)

    cache = tmp_path / "hub"
    lay_out_hub_cache(cache, "org/cunet-cifar10", pipe)

    result = _run_as_user(cache, imports="import diffusers_cunet")
    assert result.returncode == 0, result.stderr[-3000:]
    images = np.array(json.loads(result.stdout.strip().splitlines()[-1]))
    np.testing.assert_allclose(images, generate(pipe), rtol=0, atol=1e-6)

    # Without trust_remote_code diffusers refuses to run the shipped code and says why, installed or not.
    result = _run_as_user(cache, imports="import diffusers_cunet", trust=False)
    assert result.returncode != 0
    assert "contains custom code in modeling_cunet.py" in result.stderr and "trust_remote_code=True" in result.stderr


def _drives_like_ddpm_pipeline_expects(scheduler) -> bool:
    """DDPMPipeline starts from unit noise, never calls scale_model_input and passes generator= to step."""
    scheduler.set_timesteps(10)
    sample = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    return (
        float(scheduler.init_noise_sigma) == 1.0
        and all(torch.equal(scheduler.scale_model_input(sample, t), sample) for t in scheduler.timesteps[:3])
        and "generator" in inspect.signature(scheduler.step).parameters
    )


def test_the_ddpm_pipeline_scheduler_list_is_exact():
    import diffusers

    from diffusers_cunet.pipelines.scheduler_support import DDPM_PIPELINE_SCHEDULERS, SUPPORTED_SCHEDULERS

    config = make_pipeline().scheduler.config
    right = {
        name
        for name in SUPPORTED_SCHEDULERS
        if _drives_like_ddpm_pipeline_expects(getattr(diffusers, name).from_config(config))
    }
    assert right == set(DDPM_PIPELINE_SCHEDULERS)


@pytest.mark.parametrize("name", ["DDIMScheduler", "DPMSolverMultistepScheduler", "EulerDiscreteScheduler"])
def test_ddpm_pipeline_matches_our_pipeline_only_with_the_listed_schedulers(name):
    import diffusers

    from diffusers_cunet.pipelines import ContinuousUNetPipeline
    from diffusers_cunet.pipelines.scheduler_support import DDPM_PIPELINE_SCHEDULERS

    ddpm = make_pipeline()
    ddpm.scheduler = getattr(diffusers, name).from_config(ddpm.scheduler.config)
    ours = ContinuousUNetPipeline(unet=ddpm.unet, scheduler=ddpm.scheduler)
    ours.set_progress_bar_config(disable=True)
    theirs = generate(ddpm, steps=4)
    expected = ours(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=4,
                    output_type="np").images  # fmt: skip
    if name in DDPM_PIPELINE_SCHEDULERS:
        np.testing.assert_allclose(theirs, expected, atol=1e-5)
    else:  # no scale_model_input, no init_noise_sigma: DDPMPipeline's images are wrong
        assert np.abs(theirs - expected).max() > 0.1


def test_ddpm_pipeline_cannot_drive_unipc():
    from diffusers import UniPCMultistepScheduler

    pipe = make_pipeline()
    pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)
    with pytest.raises(TypeError, match="generator"):
        generate(pipe)
