"""ContinuousUNetPipeline and ContinuousUNetDenoisePipeline: correct with every supported diffusers scheduler."""

from __future__ import annotations

from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from conftest import make_tiny
from diffusers import DDIMScheduler, DiffusionPipeline
from gaussian_oracle import EDMGaussianOracle, GaussianOracle

from diffusers_cunet.noise_schedule import make_noise_scheduler
from diffusers_cunet.pipelines import ContinuousUNetDenoisePipeline, ContinuousUNetPipeline
from diffusers_cunet.pipelines.scheduler_support import SUPPORTED_SCHEDULERS, UNSUPPORTED_REASONS

ROOT = Path(__file__).resolve().parents[1]
MU, S = 0.2, 0.25
# First-order samplers carry an O(1/steps) bias in the variance; they get more steps for the same tolerance.
FIRST_ORDER = {"DDPMScheduler", "DDPMParallelScheduler", "DDIMScheduler", "DDIMParallelScheduler",
               "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler"}  # fmt: skip
MEAN_TOLERANCE = 0.012  # absolute, on the [-1, 1] scale (mu = 0.2)
STD_TOLERANCE = 0.05  # relative (s = 0.25)

CASES = [(name, pt) for name, types in SUPPORTED_SCHEDULERS.items() for pt in sorted(types)]


def scheduler(name: str, prediction_type: str = "epsilon", beta_schedule: str = "linear"):
    return getattr(diffusers, name).from_config(make_noise_scheduler(1000, beta_schedule, prediction_type).config)


def steps_for(name: str) -> int:
    return 400 if name in FIRST_ORDER else 100


@pytest.mark.parametrize("name, prediction_type", CASES, ids=[f"{n}-{p}" for n, p in CASES])
def test_gaussian_data_is_reproduced(name, prediction_type):
    """With the exact denoiser of N(mu, s^2) data, every scheduler must return samples with mean mu and std s."""
    pytest.importorskip("torchsde") if name == "DPMSolverSDEScheduler" else None
    pipe = ContinuousUNetPipeline(
        unet=GaussianOracle(MU, S, prediction_type), scheduler=scheduler(name, prediction_type)
    )
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=64, generator=torch.Generator().manual_seed(0), num_inference_steps=steps_for(name),
                  output_type="pt").images  # fmt: skip
    samples = images * 2 - 1
    assert abs(samples.mean().item() - MU) < MEAN_TOLERANCE, samples.mean().item()
    assert abs(samples.std().item() / S - 1) < STD_TOLERANCE, samples.std().item()


def assert_gaussian(pipe, steps: int) -> None:
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=64, generator=torch.Generator().manual_seed(0), num_inference_steps=steps,
                  output_type="pt").images  # fmt: skip
    samples = images * 2 - 1
    assert abs(samples.mean().item() - MU) < MEAN_TOLERANCE, samples.mean().item()
    assert abs(samples.std().item() / S - 1) < STD_TOLERANCE, samples.std().item()


EDM_CASES = [(kind, name, pt) for kind in ("edm", "edm-fdm") for name, pt in CASES]


@pytest.mark.parametrize("kind, name, prediction_type", EDM_CASES, ids=[f"{k}-{n}-{p}" for k, n, p in EDM_CASES])
def test_edm_models_run_with_every_discrete_scheduler(kind, name, prediction_type):
    """An EDM-trained model (the exact F of EDM / EDM-FDM preconditioning) driven by a discrete VP scheduler
    through the objective bridge returns N(mu, s^2), whatever prediction type the scheduler asks for."""
    pytest.importorskip("torchsde") if name == "DPMSolverSDEScheduler" else None
    oracle = EDMGaussianOracle(MU, S, {"type": kind})
    assert_gaussian(ContinuousUNetPipeline(unet=oracle, scheduler=scheduler(name, prediction_type)), steps_for(name))


VP_EDM_CASES = [(sampler, pt) for sampler in ("dpmsolver++", "euler") for pt in ("epsilon", "v_prediction", "sample")]


@pytest.mark.parametrize("sampler, prediction_type", VP_EDM_CASES, ids=[f"{s}-{p}" for s, p in VP_EDM_CASES])
def test_ddpm_models_run_with_the_edm_schedulers(sampler, prediction_type):
    """A DDPM-style model (the exact VP denoiser) driven by an EDM scheduler swapped into its pipeline: the
    pipeline keeps the training schedule it was built with, and the bridge gives the scheduler D's raw output."""
    from diffusers_cunet.preconditioning import EDMPreconditioning, edm_scheduler

    pipe = ContinuousUNetPipeline(unet=GaussianOracle(MU, S, prediction_type), scheduler=scheduler("DDIMScheduler",
                                  prediction_type))  # fmt: skip
    pipe.scheduler = edm_scheduler(EDMPreconditioning(), sampler)
    assert_gaussian(pipe, 400 if sampler == "euler" else 100)


@pytest.mark.parametrize("name", sorted(SUPPORTED_SCHEDULERS))
def test_every_scheduler_runs_the_real_model(name):
    pytest.importorskip("torchsde") if name == "DPMSolverSDEScheduler" else None
    pipe = ContinuousUNetPipeline(unet=make_tiny(), scheduler=scheduler(name))
    pipe.set_progress_bar_config(disable=True)

    def run(seed):
        out = pipe(
            batch_size=2, generator=torch.Generator().manual_seed(seed), num_inference_steps=4, output_type="np"
        )
        return out.images, out.ode_evaluations

    images, evaluations = run(0)
    assert images.shape == (2, 8, 8, 3) and np.isfinite(images).all()
    np.testing.assert_array_equal(images, run(0)[0])
    calls = len(pipe.scheduler.timesteps)
    assert evaluations == calls * pipe.unet.evaluations_per_call()


@pytest.mark.parametrize("name", sorted(UNSUPPORTED_REASONS))
def test_schedulers_that_cannot_be_driven_raise(name):
    if not hasattr(diffusers, name):
        pytest.skip(f"{name} is not in this diffusers")
    try:
        sched = getattr(diffusers, name)()
    except Exception as error:  # some need optional dependencies to be built at all
        pytest.skip(f"{name} cannot be built here: {error}")
    pipe = ContinuousUNetPipeline(unet=make_tiny(), scheduler=sched)
    with pytest.raises(ValueError, match=f"cannot drive {name}: .*Supported schedulers"):
        pipe(batch_size=1, num_inference_steps=2)


def test_unsupported_prediction_type_raises():
    pipe = ContinuousUNetPipeline(unet=make_tiny(), scheduler=scheduler("PNDMScheduler", "sample"))
    with pytest.raises(ValueError, match="PNDMScheduler does not support prediction_type='sample'"):
        pipe(batch_size=1, num_inference_steps=2)


def test_solver_schedule_sets_the_effort_of_each_step():
    pipe = ContinuousUNetPipeline(unet=make_tiny(), scheduler=scheduler("DDIMScheduler"))
    pipe.set_progress_bar_config(disable=True)
    seen = []

    def schedule(step_index, timestep):
        seen.append((step_index, timestep))
        return {"method": "euler", "steps": 1} if timestep > 500 else {"method": "rk4", "steps": 2}

    out = pipe(batch_size=1, num_inference_steps=6, solver_schedule=schedule, output_type="np")
    timesteps = [int(t) for t in pipe.scheduler.timesteps]
    blocks = pipe.unet.num_ode_blocks
    expected = sum(blocks * (1 if t > 500 else 8) for t in timesteps)
    assert out.ode_evaluations == expected
    assert [t for _, t in seen] == timesteps and [i for i, _ in seen] == list(range(6))
    uniform = pipe(batch_size=1, num_inference_steps=6, output_type="np")
    assert uniform.ode_evaluations == 6 * pipe.unet.evaluations_per_call()


def test_class_conditional_generation():
    pipe = ContinuousUNetPipeline(unet=make_tiny(num_class_embeds=3), scheduler=scheduler("DDIMScheduler"))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(batch_size=2, class_labels=[0, 2], num_inference_steps=2, output_type="pt")
    assert out.images.shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="class_labels are required"):
        pipe(batch_size=2, num_inference_steps=2)
    with pytest.raises(ValueError, match=r"class_labels must lie in \[0, 2\]"):
        pipe(batch_size=1, class_labels=[5], num_inference_steps=2)


def test_bad_arguments_raise():
    pipe = ContinuousUNetPipeline(unet=make_tiny(), scheduler=scheduler("DDIMScheduler"))
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        pipe(batch_size=0)
    with pytest.raises(ValueError, match="output_type must be"):
        pipe(batch_size=1, output_type="jpeg")


def test_save_load_and_custom_pipeline(tmp_path):
    pipe = ContinuousUNetPipeline(unet=make_tiny(), scheduler=scheduler("UniPCMultistepScheduler"))
    pipe.set_progress_bar_config(disable=True)
    reference = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=3, output_type="np")
    pipe.save_pretrained(tmp_path)
    loaded = ContinuousUNetPipeline.from_pretrained(tmp_path)
    custom = DiffusionPipeline.from_pretrained(tmp_path, trust_remote_code=True)  # pipeline_cunet.py, shipped
    assert type(custom).__name__ == "ContinuousUNetPipeline" and type(custom).__module__.endswith("pipeline_cunet")
    for other in (loaded, custom):
        other.set_progress_bar_config(disable=True)
        out = other(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=3, output_type="np")
        np.testing.assert_array_equal(out.images, reference.images)


# ----------------------------------------------------------------------------- denoising
DETERMINISTIC = ["DPMSolverMultistepScheduler", "HeunDiscreteScheduler", "UniPCMultistepScheduler", "DDIMScheduler"]


@pytest.mark.parametrize("name", DETERMINISTIC + ["DDPMScheduler", "EulerAncestralDiscreteScheduler"])
def test_denoising_gaussian_data_matches_the_closed_form(name):
    """For Gaussian data the reverse process from y = x + n*eps is known in closed form.

    Any correct sampler returns data-distributed images: mean mu, std s. The probability-flow ODE (the
    deterministic schedulers) is the linear map mu + k (y - mu) with k = s / sqrt(s^2 + n^2), whose error
    variance (k - 1)^2 s^2 + k^2 n^2 gives the PSNR to expect. A wrong start (level or scaling) breaks both.
    """
    generator = torch.Generator().manual_seed(0)
    clean = MU + S * torch.randn(64, 1, 8, 8, generator=generator)
    noise_std = 0.15
    noisy = clean + noise_std * torch.randn(clean.shape, generator=generator)
    pipe = ContinuousUNetDenoisePipeline(unet=GaussianOracle(MU, S), scheduler=scheduler(name))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(noisy, noise_std=noise_std, num_inference_steps=20, generator=generator, clean_images=clean)
    denoised = out.images * 2 - 1
    assert out.start_timestep > 0 and out.images.shape == clean.shape
    assert abs(denoised.mean().item() - MU) < 0.02
    assert abs(denoised.std().item() / S - 1) < 0.06, denoised.std().item()
    if name in DETERMINISTIC:
        # The pipeline starts at the first grid timestep at or above the noise level and tops the noise up to it.
        abar = float(pipe.scheduler.alphas_cumprod[out.start_timestep])
        start_std = ((1 - abar) / abar) ** 0.5
        assert noise_std <= start_std < 1.5 * noise_std
        k = S / (S**2 + start_std**2) ** 0.5
        mse = (k - 1) ** 2 * S**2 + k**2 * start_std**2
        expected_psnr = 10 * np.log10(4 / mse)  # images in [0, 1]: errors are halved
        assert abs(out.psnr - expected_psnr) < 0.5, (out.psnr, expected_psnr)
    assert 0 < out.ssim <= 1


@pytest.mark.parametrize("sampler", ["dpmsolver++", "euler"])
def test_denoising_with_an_edm_model_follows_the_closed_form(sampler):
    """EDM's marginal at sigma is x + sigma * eps: the sampler starts at sigma = noise_std itself, and the
    probability-flow ODE of Gaussian data is then mu + k (y - mu), k = s / sqrt(s^2 + noise_std^2)."""
    from diffusers_cunet.preconditioning import edm_scheduler

    generator = torch.Generator().manual_seed(0)
    clean = MU + S * torch.randn(64, 1, 8, 8, generator=generator)
    noise_std = 0.15
    noisy = clean + noise_std * torch.randn(clean.shape, generator=generator)
    oracle = EDMGaussianOracle(MU, S, {"type": "edm"})
    pipe = ContinuousUNetDenoisePipeline(unet=oracle, scheduler=edm_scheduler(oracle, sampler))
    pipe.set_progress_bar_config(disable=True)
    sigma_max = pipe.scheduler.config.sigma_max
    out = pipe(noisy, noise_std=noise_std, num_inference_steps=20, clean_images=clean)
    assert out.start_timestep == noise_std and pipe.scheduler.config.sigma_max == sigma_max  # restored
    k = S / (S**2 + noise_std**2) ** 0.5
    expected = MU + k * (noisy - MU)
    torch.testing.assert_close(out.images * 2 - 1, expected.clamp(-1, 1), rtol=0, atol=0.02)
    mse = (k - 1) ** 2 * S**2 + k**2 * noise_std**2
    assert abs(out.psnr - 10 * np.log10(4 / mse)) < 0.5
    with pytest.raises(ValueError, match="give noise_std"):
        pipe(noisy, timestep=100)
    with pytest.raises(ValueError, match="sigma range"):
        pipe(noisy, noise_std=500.0)


def test_denoise_start_matches_the_noise_level():
    pipe = ContinuousUNetDenoisePipeline(unet=make_tiny(), scheduler=scheduler("DDIMScheduler"))
    pipe.set_progress_bar_config(disable=True)
    noisy = torch.zeros(1, 3, 8, 8)
    alphas = pipe.scheduler.alphas_cumprod
    for noise_std in (0.04, 0.15, 0.5):
        out = pipe(noisy, noise_std=noise_std, num_inference_steps=4)
        start_std = float(((1 - alphas[out.start_timestep]) / alphas[out.start_timestep]).sqrt())
        assert start_std >= noise_std
        assert out.ode_evaluations == 4 * pipe.unet.evaluations_per_call()
    by_timestep = pipe(noisy, timestep=100, num_inference_steps=4)
    assert by_timestep.start_timestep >= 100


def test_denoise_bad_arguments_raise():
    pipe = ContinuousUNetDenoisePipeline(unet=make_tiny(), scheduler=scheduler("DDIMScheduler"))
    noisy = torch.zeros(1, 3, 8, 8)
    with pytest.raises(ValueError, match="exactly one of noise_std or timestep"):
        pipe(noisy)
    with pytest.raises(ValueError, match="exactly one of noise_std or timestep"):
        pipe(noisy, noise_std=0.1, timestep=10)
    with pytest.raises(ValueError, match="noise_std must be positive"):
        pipe(noisy, noise_std=-1.0)
    with pytest.raises(ValueError, match=r"shape \(batch, 3, height, width\)"):
        pipe(torch.zeros(1, 1, 8, 8), noise_std=0.1)
    with pytest.raises(ValueError, match="above the schedule's largest noise level"):
        pipe(noisy, noise_std=1e6)
    with pytest.raises(ValueError, match="num_inference_steps=50 is more than the"):
        pipe(noisy, noise_std=0.01, num_inference_steps=50)


def test_fixed_gap_scheduler_with_uneven_grid_raises():
    """diffusers' DDIM steps by num_train // num_inference: with "trailing" spacing and 400 steps the real gaps are
    2 and 3, and its samples of the Gaussian come out with std 0.32 instead of 0.25. We refuse instead."""
    sched = diffusers.DDIMScheduler.from_config(make_noise_scheduler().config, timestep_spacing="trailing")
    pipe = ContinuousUNetPipeline(unet=GaussianOracle(MU, S), scheduler=sched)
    with pytest.raises(ValueError, match=r"fixed gap of 2 .* gives gaps \[2, 3\]"):
        pipe(batch_size=1, num_inference_steps=400)
    pipe.set_progress_bar_config(disable=True)
    assert pipe(batch_size=1, num_inference_steps=200, output_type="pt").images.shape == (1, 1, 8, 8)


def test_denoise_refuses_a_grid_that_cannot_reach_the_noise_level():
    """ "leading" spacing always ends its grid at t=0: a one-step tail would start below the noise level."""
    pipe = ContinuousUNetDenoisePipeline(unet=make_tiny(), scheduler=scheduler("DDIMScheduler"))
    with pytest.raises(ValueError, match="has no 1-step tail that starts at the images' noise level"):
        pipe(torch.zeros(1, 3, 8, 8), noise_std=0.15, num_inference_steps=1)


@pytest.fixture(scope="module")
def trained_digits(tmp_path_factory):
    from training_helpers import train

    output = tmp_path_factory.mktemp("denoise-model")
    train(output, "--max_train_steps", "500", "--checkpointing_steps", "0")
    return output


# The paper's 0.15 / 20 steps and a heavier noise, with the least gain in PSNR (dB) this 500-step 8x8 model must
# show. (It gains ~0.9 dB at 0.15 and nothing at 0.04; the 1,500-step 16x16 demo model gains 8.7 and 7 dB.)
@pytest.mark.parametrize("noise_std, steps, least_gain", [(0.15, 20, 0.5), (0.3, 20, 1.0)])
def test_trained_model_denoises_digits(trained_digits, noise_std, steps, least_gain):
    from training.data import ImageTransform, digits_dataset, prepare_dataset

    data = prepare_dataset(digits_dataset(), ImageTransform(8, 1, "image"))
    clean = torch.stack([data[i]["pixel_values"] for i in range(1700, 1732)])  # digits the 150 steps barely saw
    noisy = clean + noise_std * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    pipe = ContinuousUNetDenoisePipeline.from_pretrained(trained_digits)
    pipe.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(noisy, noise_std=noise_std, num_inference_steps=steps, clean_images=clean,
               generator=torch.Generator().manual_seed(1))  # fmt: skip
    from diffusers_cunet.pipelines.pipeline_continuous_unet_denoise import image_quality

    noisy_psnr, noisy_ssim = image_quality(((noisy + 1) / 2).clamp(0, 1), (clean + 1) / 2)
    assert (out.noisy_psnr, out.noisy_ssim) == pytest.approx((noisy_psnr, noisy_ssim))  # reported beside the output
    assert out.psnr > noisy_psnr + least_gain, (out.psnr, noisy_psnr)
    assert out.ssim > noisy_ssim
    assert out.ode_evaluations == steps * pipe.unet.evaluations_per_call()
    # the same images as a [0, 1] tensor, said so, give the same result; unsaid, they are refused
    same = pipe((noisy + 1) / 2, noise_std=noise_std, num_inference_steps=steps, clean_images=(clean + 1) / 2,
                value_range=(0, 1), generator=torch.Generator().manual_seed(1))  # fmt: skip
    assert same.psnr == pytest.approx(out.psnr, abs=1e-4)
    with pytest.raises(ValueError, match="look like \\[0, 1\\] tensors.*value_range=\\(0, 1\\)"):
        pipe((noisy + 1) / 2, noise_std=noise_std, num_inference_steps=steps, clean_images=(clean + 1) / 2)


def test_denoise_input_mistakes_are_named(recwarn):
    from PIL import Image

    pipe = ContinuousUNetDenoisePipeline(unet=make_tiny(in_channels=1, out_channels=1), scheduler=DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match="Noisy values reach 3.00"):  # far beyond images plus noise of std 0.1
        pipe(torch.full((1, 1, 8, 8), 3.0), noise_std=0.1, num_inference_steps=2)
    with pytest.raises(ValueError, match="shape \\(batch, 1, height, width\\)"):
        pipe(torch.zeros(1, 3, 8, 8), noise_std=0.1, num_inference_steps=2)
    pipe(torch.rand(1, 1, 8, 8) * 0.5, noise_std=0.05, num_inference_steps=2)  # nothing below -0.5: a hint
    colour = [Image.new("RGB", (16, 16), (200, 30, 30))]
    pipe(colour, noise_std=0.1, num_inference_steps=2)  # RGB to L, and 16x16 for an 8x8 model: both said
    messages = " | ".join(str(w.message) for w in recwarn)
    assert "no value below -0.5" in messages and "Converted RGB images to L" in messages
    assert "Denoising 16x16 images with a model trained at 8x8" in messages


def test_denoise_pipeline_refuses_an_unknown_output_type_before_sampling():
    from diffusers_cunet.pipelines import ContinuousUNetDenoisePipeline

    pipe = ContinuousUNetDenoisePipeline(unet=make_tiny(), scheduler=DDIMScheduler())
    with pytest.raises(ValueError, match="output_type must be one of"):
        pipe(torch.zeros(1, 3, 8, 8), noise_std=0.1, output_type="tensor")
