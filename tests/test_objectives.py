"""Training objectives: the denoiser each one trains is the one the sampling path (scheduler + pipeline) uses."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny
from diffusers import DDIMScheduler

from diffusers_cunet.noise_schedule import make_noise_scheduler
from diffusers_cunet.objectives import DDPMObjective, EDMObjective


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_ddpm_denoiser_is_the_schedulers_clean_image_estimate(prediction_type):
    model = make_tiny()
    objective = DDPMObjective(make_noise_scheduler(prediction_type=prediction_type))
    scheduler = DDIMScheduler.from_config(objective.noise_scheduler.config, clip_sample=False)
    scheduler.set_timesteps(10)
    sample = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for t in scheduler.timesteps[[0, 5, 9]]:
        with torch.no_grad():
            ours = objective.denoise(model, sample, t.repeat(2))
            output = model(sample, t).sample
            theirs = scheduler.step(output, t, sample).pred_original_sample
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["edm", "edm-fdm"])
def test_edm_denoiser_is_the_sampling_paths(kind):
    """D(x; sigma) of the objective = the EDM scheduler's c_skip/c_out/c_noise around the network, given the
    model's own c_in (as our pipelines give it)."""
    model = make_tiny(preconditioning={"type": kind})
    objective = EDMObjective(model.preconditioning)
    scheduler = objective.sampling_scheduler()
    sample = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for sigma in (0.05, 1.0, 20.0):
        sigmas = torch.full((2,), sigma)
        with torch.no_grad():
            ours = objective.denoise(model, sample, sigmas)
            network_input = model.preconditioning.c_in(sigmas[:, None, None, None]) * sample
            output = model(network_input, scheduler.precondition_noise(torch.tensor(sigma)).repeat(2)).sample
            theirs = scheduler.precondition_outputs(sample, output, torch.tensor(sigma))
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_objectives_draw_levels_from_the_generator_only():
    ddpm, edm = (
        DDPMObjective(make_noise_scheduler()),
        EDMObjective(make_tiny(preconditioning={"type": "edm"}).preconditioning),
    )
    for objective in (ddpm, edm):
        first = objective.sample_levels(64, torch.Generator().manual_seed(3))
        again = objective.sample_levels(64, torch.Generator().manual_seed(3))
        assert torch.equal(first, again) and first.shape == (64,)
    timesteps = ddpm.sample_levels(4096, torch.Generator().manual_seed(0))
    assert timesteps.dtype == torch.int64 and timesteps.min() >= 0 and timesteps.max() <= 999
    log_sigma = edm.sample_levels(4096, torch.Generator().manual_seed(0)).log()
    assert abs(log_sigma.mean() + 1.2) < 0.06 and abs(log_sigma.std() - 1.2) < 0.06  # EDM's P_mean, P_std


def test_objectives_describe_and_record_their_settings():
    edm = EDMObjective(make_tiny(preconditioning={"type": "edm-fdm"}).preconditioning, loss_weight_warmup_steps=200)
    assert edm.to_config()["type"] == "edm-fdm" and edm.to_config()["loss_weight_warmup_steps"] == 200
    assert "momentum 1.0" in edm.describe() and "warm-up 200 steps" in edm.describe()
    with pytest.raises(ValueError, match="p_std must be positive"):
        EDMObjective(edm.preconditioning, p_std=0)


def test_denoising_errors_are_clean_image_errors_on_one_scale():
    model = make_tiny()
    generator = torch.Generator().manual_seed(1)
    clean = torch.rand(3, 3, 8, 8, generator=generator) * 2 - 1
    noise = torch.randn(3, 3, 8, 8, generator=generator)
    ddpm = DDPMObjective(make_noise_scheduler())
    alpha_bar = ddpm.noise_scheduler.alphas_cumprod
    ratio = ((1 - alpha_bar) / alpha_bar).sqrt()
    with torch.no_grad():
        for sigma in (0.1, 1.0, 3.0):
            t = int((ratio - sigma).abs().argmin())
            assert abs(float(ratio[t]) - sigma) < 0.05 * sigma  # the schedule has a timestep at that noise level
            timesteps = torch.full((3,), t)
            noisy = alpha_bar[t].sqrt() * (clean + float(ratio[t]) * noise)  # = add_noise(clean, noise, t)
            x0 = (noisy - (1 - alpha_bar[t]).sqrt() * model(noisy, timesteps).sample) / alpha_bar[t].sqrt()
            expected = ((x0 - clean) ** 2).mean().item()
            assert abs(ddpm.denoising_error(model, clean, noise, sigma) - expected) < 1e-5 * max(1.0, expected)
    edm_model = make_tiny(preconditioning={"type": "edm"})
    edm = EDMObjective(edm_model.preconditioning)
    with torch.no_grad():
        denoised = edm.denoise(edm_model, clean + 0.5 * noise, torch.full((3,), 0.5))
        expected = ((denoised - clean) ** 2).mean().item()
        assert abs(edm.denoising_error(edm_model, clean, noise, 0.5) - expected) < 1e-7


def test_both_objectives_implement_the_whole_interface():
    """The loop, the held-out check and the export use only the `Objective` protocol's members."""
    import inspect

    from diffusers_cunet.objectives import Objective
    from diffusers_cunet.preconditioning import preconditioning_from_config

    members = {name for name in dir(Objective) if not name.startswith("_")} | set(Objective.__annotations__)
    assert members >= {"loss", "denoise", "denoising_error", "to_config", "describe", "sampler_name"}
    objectives = [DDPMObjective(make_noise_scheduler()), EDMObjective(preconditioning_from_config({"type": "edm"}))]
    for objective in objectives:
        assert isinstance(objective, Objective) and all(hasattr(objective, name) for name in members)
        for name in members - set(Objective.__annotations__):
            expected = list(inspect.signature(getattr(Objective, name)).parameters)[1:3]
            assert list(inspect.signature(getattr(objective, name)).parameters)[:2] == expected, name
    assert [o.ddpm_pipeline_compatible for o in objectives] == [True, False]
