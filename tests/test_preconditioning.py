"""EDM and EDM-FDM preconditioning: the formulas, FDM's limits, the model config, save/load and the samplers."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_tiny
from diffusers import DDIMScheduler, EDMDPMSolverMultistepScheduler, EDMEulerScheduler
from gaussian_oracle import EDMGaussianOracle

from diffusers_cunet import ContinuousUNet2DModel
from diffusers_cunet.pipelines import ContinuousUNetDenoisePipeline, ContinuousUNetPipeline
from diffusers_cunet.preconditioning import (
    EDMPreconditioning,
    FDMPreconditioning,
    edm_scheduler,
    loss_weight_cap,
    preconditioning_from_config,
)

MU, S = 0.2, 0.25


def close(value, expected, rel=1e-6):
    return float(value) == pytest.approx(expected, rel=rel)


# ----------------------------------------------------------------------------- formulas
@pytest.mark.parametrize(
    "sigma, c_skip, c_out, c_in, c_noise, weight",
    [  # sigma_data = 0.5, worked by hand: e.g. sigma = 1: c_skip = 0.25 / 1.25, c_out = 0.5 / sqrt(1.25)
        (0.5, 0.5, 0.3535534, 1.4142136, -0.1732868, 8.0),
        (1.0, 0.2, 0.4472136, 0.8944272, 0.0, 5.0),
        (2.0, 0.0588235, 0.4850713, 0.4850713, 0.1732868, 4.25),
    ],
)
def test_edm_scalings_match_hand_computed_values(sigma, c_skip, c_out, c_in, c_noise, weight):
    pre = EDMPreconditioning(sigma_data=0.5)
    assert close(pre.c_skip(sigma), c_skip)
    assert close(pre.c_out(sigma), c_out)
    assert close(pre.c_in(sigma), c_in)
    assert float(pre.c_noise(sigma)) == pytest.approx(c_noise, abs=1e-7)
    assert close(pre.loss_weight(sigma), weight)
    assert close(pre.loss_weight(sigma), 1 / float(pre.c_out(sigma)) ** 2)  # lambda = 1 / c_out^2


@pytest.mark.parametrize(
    "t, momentum, expected",  # beta(t) = 0.1 t + 9.95 t^2; c_in = exp(-m beta) (1 + m beta)
    [(0.0, 1.0, 1.0), (0.25, 1.0, 0.8624350), (0.5, 1.0, 0.2796882), (1.0, 1.0, 4.772025e-4), (0.5, 2.0, 0.0379754)],
)
def test_fdm_input_scaling_matches_hand_computed_values(t, momentum, expected):
    pre = FDMPreconditioning(momentum=momentum)
    sigma = pre.sigma_min + t * (pre.sigma_max - pre.sigma_min)
    assert close(pre.fdm_time(sigma), t, rel=1e-9) or t == 0
    assert close(pre.c_in(sigma), expected, rel=1e-5)


def test_fdm_changes_only_c_in():
    edm, fdm = EDMPreconditioning(), FDMPreconditioning()
    sigma = torch.logspace(-3, 2, 50, dtype=torch.float64)
    for name in ("c_skip", "c_out", "c_noise", "loss_weight"):
        torch.testing.assert_close(getattr(fdm, name)(sigma), getattr(edm, name)(sigma))
    assert not torch.allclose(fdm.c_in(sigma), edm.c_in(sigma))


def test_fdm_scaling_limits():
    sigma = torch.logspace(-3, math.log10(80), 200, dtype=torch.float64)
    # m * beta -> 0: no damping, c_in -> 1 ...
    assert torch.allclose(FDMPreconditioning(momentum=1e-9).c_in(sigma), torch.ones_like(sigma), atol=1e-12)
    assert torch.allclose(FDMPreconditioning(beta_min=0, beta_d=0).c_in(sigma), torch.ones_like(sigma))
    # ... from below, as 1 - (m beta)^2 / 2 (the critically damped factor's expansion)
    pre = FDMPreconditioning()
    small = pre.sigma_min + 1e-4 * (pre.sigma_max - pre.sigma_min)
    x = float(pre.fdm_beta(1e-4))
    assert close(1 - pre.c_in(small), x**2 / 2, rel=1e-3)
    # at sigma_min exactly 1, below it clipped to 1, and decreasing with the noise level above it
    assert float(pre.c_in(pre.sigma_min)) == 1.0 and float(pre.c_in(1e-4)) == 1.0
    values = pre.c_in(sigma)
    assert (values[1:] <= values[:-1]).all() and (values > 0).all() and (values <= 1).all()
    # large momentum damps every level above sigma_min towards 0
    assert float(FDMPreconditioning(momentum=1e4).c_in(1.0)) < 1e-6


def test_normalized_fdm_variant_multiplies_edm_c_in():
    sigma = torch.logspace(-3, 2, 20, dtype=torch.float64)
    edm, fdm = EDMPreconditioning(), FDMPreconditioning()
    ours = FDMPreconditioning(normalize_input=True)
    torch.testing.assert_close(ours.c_in(sigma), fdm.c_in(sigma) * edm.c_in(sigma))
    # without momentum it is exactly EDM
    torch.testing.assert_close(FDMPreconditioning(momentum=0.0, normalize_input=True).c_in(sigma), edm.c_in(sigma))


def test_denoise_is_c_skip_x_plus_c_out_f():
    model = make_tiny(preconditioning={"type": "edm-fdm"})
    pre = model.preconditioning
    noisy = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.01, 1.0, 30.0])
    with torch.no_grad():
        denoised = pre.denoise(model, noisy, sigma)
        raw = model(pre.c_in(sigma)[:, None, None, None].float() * noisy, pre.c_noise(sigma)).sample
    per = sigma[:, None, None, None]
    torch.testing.assert_close(denoised, pre.c_skip(per) * noisy + pre.c_out(per) * raw)
    # a scalar sigma is broadcast over the batch
    with torch.no_grad():
        torch.testing.assert_close(pre.denoise(model, noisy, 1.0), pre.denoise(model, noisy, torch.ones(3)))


def test_loss_weight_warmup_is_geometric_from_5_to_500():
    assert loss_weight_cap(0, 200) == pytest.approx(5.0)
    assert loss_weight_cap(100, 200) == pytest.approx(50.0)
    assert loss_weight_cap(199, 200) == pytest.approx(5 * 100 ** (199 / 200))
    assert loss_weight_cap(200, 200) == math.inf and loss_weight_cap(10, 0) == math.inf


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "config, message",
    [
        ({"type": "vp"}, "Unknown preconditioning type"),
        ({"type": "edm", "momentum": 1.0}, "Unknown option"),
        ({"type": "edm", "sigma_data": -1}, "sigma_data"),
        ({"type": "edm", "sigma_min": 5, "sigma_max": 1}, "below sigma_max"),
        ({"type": "edm-fdm", "momentum": float("nan")}, "momentum"),
        ({"type": "edm-fdm", "normalize_input": "yes"}, "normalize_input"),
        ("edm", "must be a mapping"),
    ],
)
def test_bad_preconditioning_is_refused(config, message):
    with pytest.raises(ValueError, match=message):
        preconditioning_from_config(config)
    with pytest.raises(ValueError, match=message):
        make_tiny(preconditioning=config)


def test_config_records_every_setting_and_survives_save_load(tmp_path):
    model = make_tiny(preconditioning={"type": "edm-fdm", "momentum": 2.0})
    expected = {"sigma_data": 0.5, "sigma_min": 0.002, "sigma_max": 80.0, "momentum": 2.0, "beta_min": 0.1}
    assert model.config.preconditioning == {"type": "edm-fdm", **expected, "beta_d": 19.9, "normalize_input": False}
    model.save_pretrained(tmp_path)
    loaded = ContinuousUNet2DModel.from_pretrained(tmp_path)
    assert loaded.preconditioning == FDMPreconditioning(momentum=2.0)
    noisy = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.preconditioning.denoise(loaded, noisy, 3.0), model.preconditioning.denoise(model, noisy, 3.0)
        )
    assert make_tiny().preconditioning is None


def test_corrupted_preconditioning_in_a_saved_config_names_the_file(tmp_path):
    import json

    make_tiny(preconditioning={"type": "edm"}).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["preconditioning"]["type"] = "edm-typo"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="config.json.*Unknown preconditioning type"):
        ContinuousUNet2DModel.from_pretrained(tmp_path)


# ----------------------------------------------------------------------------- samplers
STEPS = {"EDMDPMSolverMultistepScheduler": 100, "EDMEulerScheduler": 400}  # Euler is first order: more steps


@pytest.mark.parametrize("kind", ["edm", "edm-fdm"])
@pytest.mark.parametrize("sampler", ["dpmsolver++", "euler"])
def test_gaussian_data_is_reproduced_with_edm_schedulers(kind, sampler):
    """With the exact raw network of N(mu, s^2) data under this preconditioning, the samples have mean mu and
    standard deviation s; a pipeline that gave an FDM model EDM's c_in would miss both by far (std 0.17)."""
    oracle = EDMGaussianOracle(MU, S, {"type": kind})
    pipe = ContinuousUNetPipeline(unet=oracle, scheduler=edm_scheduler(oracle, sampler))
    pipe.set_progress_bar_config(disable=True)
    steps = STEPS[type(pipe.scheduler).__name__]
    images = pipe(batch_size=64, generator=torch.Generator().manual_seed(0), num_inference_steps=steps,
                  output_type="pt").images  # fmt: skip
    samples = images * 2 - 1
    assert abs(samples.mean().item() - MU) < 0.012, samples.mean().item()
    assert abs(samples.std().item() / S - 1) < 0.05, samples.std().item()


def test_edm_model_input_is_the_schedulers_own_scaling():
    """For plain EDM, the pipeline's c_in is exactly what diffusers' scale_model_input applies."""
    model = make_tiny(preconditioning={"type": "edm"})
    seen = []
    original = model.forward
    model.forward = lambda sample, t, **kw: seen.append((sample.clone(), t)) or original(sample, t, **kw)
    scheduler = edm_scheduler(model, "euler")
    pipe = ContinuousUNetPipeline(unet=model, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    pipe(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="pt")
    reference = EDMEulerScheduler(**{k: scheduler.config[k] for k in ("sigma_min", "sigma_max", "sigma_data")})
    reference.set_timesteps(3)
    sample = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * reference.init_noise_sigma
    first_input, first_t = seen[0]
    torch.testing.assert_close(first_input, reference.scale_model_input(sample, reference.timesteps[0]))
    assert float(first_t) == pytest.approx(math.log(80.0) / 4, rel=1e-5)


def test_trained_style_model_runs_with_both_edm_schedulers_and_saves(tmp_path):
    model = make_tiny(preconditioning={"type": "edm-fdm"})
    for sampler in ("dpmsolver++", "euler"):
        pipe = ContinuousUNetPipeline(unet=model, scheduler=edm_scheduler(model, sampler))
        pipe.set_progress_bar_config(disable=True)
        out = pipe(batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np")
        assert out.images.shape == (2, 8, 8, 3) and out.ode_evaluations == 4 * model.evaluations_per_call()
    pipe.save_pretrained(tmp_path)
    loaded = ContinuousUNetPipeline.from_pretrained(tmp_path)
    assert isinstance(loaded.scheduler, EDMEulerScheduler)
    assert loaded.unet.preconditioning == model.preconditioning
    again = loaded(batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np")
    torch.testing.assert_close(torch.from_numpy(again.images), torch.from_numpy(out.images))


# ----------------------------------------------------------------------------- clear errors
def test_mismatched_model_and_scheduler_are_refused():
    ddpm_model, edm_model = make_tiny(), make_tiny(preconditioning={"type": "edm"})
    cases = [
        # an EDM scheduler can drive a DDPM-style model only with its training schedule (none here)
        (ddpm_model, EDMEulerScheduler(), "training schedule is known"),
        (ddpm_model, EDMDPMSolverMultistepScheduler(), "training schedule is known"),
        (edm_model, EDMEulerScheduler(sigma_data=1.0), "sigma_data"),
        (edm_model, EDMEulerScheduler(prediction_type="v_prediction"), "flips the sign of c_out"),
    ]
    for model, scheduler, message in cases:
        pipe = ContinuousUNetPipeline(unet=model, scheduler=scheduler)
        with pytest.raises(ValueError, match=message):
            pipe(batch_size=1, num_inference_steps=2)
    with pytest.raises(ValueError, match="no EDM preconditioning"):
        edm_scheduler(ddpm_model)
    with pytest.raises(ValueError, match="Unknown EDM sampler"):
        edm_scheduler(edm_model, "heun")


def test_ddpm_pipeline_on_an_edm_model_fails_loudly_not_silently():
    """With a discrete scheduler, DDPMPipeline passes integer timesteps (and never scales its input): the model
    refuses at the first call instead of returning noise."""
    from diffusers import DDPMPipeline, DDPMScheduler

    model = make_tiny(preconditioning={"type": "edm-fdm"})
    pipe = DDPMPipeline(unet=model, scheduler=DDPMScheduler())
    with pytest.raises(ValueError, match="ContinuousUNetPipeline"):
        pipe(batch_size=1, num_inference_steps=2)
    with pytest.raises(ValueError, match="c_noise"):
        model(torch.zeros(1, 3, 8, 8), 999)
    model(torch.zeros(1, 3, 8, 8), 0.25)  # a real c_noise passes
    make_tiny()(torch.zeros(1, 3, 8, 8), 999)  # and DDPM-style models keep integer timesteps


def test_ddpm_pipeline_with_an_edm_scheduler_on_a_ddpm_model_warns_once():
    """DDPMPipeline cannot convert between objectives: a DDPM-style model handed an EDM scheduler's c_noise (negative
    below sigma = 1, which no VP timestep is) says so, once, and names the pipeline that can."""
    import warnings

    from diffusers import DDPMPipeline

    pipe = DDPMPipeline(unet=make_tiny(), scheduler=EDMEulerScheduler())
    pipe.set_progress_bar_config(disable=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe(batch_size=1, num_inference_steps=8)
    messages = [str(w.message) for w in caught if "negative timesteps" in str(w.message)]
    assert len(messages) == 1 and "ContinuousUNetPipeline" in messages[0]


def test_denoise_pipeline_takes_edm_models_with_an_edm_scheduler_only():

    from diffusers_cunet.step_schedule import SolverStepSchedule

    model = make_tiny(preconditioning={"type": "edm"})
    pipe = ContinuousUNetDenoisePipeline(unet=model, scheduler=DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match="needs an EDM scheduler"):
        pipe(torch.zeros(1, 3, 8, 8), noise_std=0.1)
    ddpm = ContinuousUNetDenoisePipeline(unet=make_tiny(), scheduler=edm_scheduler(model))
    with pytest.raises(ValueError, match="needs a model trained with EDM"):
        ddpm(torch.zeros(1, 3, 8, 8), noise_std=0.1)
    pipe.scheduler = edm_scheduler(model)
    out = pipe(torch.zeros(1, 3, 8, 8), noise_std=0.1, num_inference_steps=2)
    assert out.start_timestep == 0.1 and out.images.shape == (1, 3, 8, 8)
    with pytest.raises(ValueError, match="c_noise"):  # a schedule binned by integer timesteps cannot apply
        pipe(torch.zeros(1, 3, 8, 8), noise_std=0.1, solver_schedule=SolverStepSchedule(({"steps": 1},), 1000))


def test_step_schedule_is_refused_with_edm_schedulers():
    from diffusers_cunet.step_schedule import SolverStepSchedule

    model = make_tiny(preconditioning={"type": "edm"})
    pipe = ContinuousUNetPipeline(unet=model, scheduler=edm_scheduler(model))
    schedule = SolverStepSchedule(({"steps": 1}, {"steps": 2}), 1000)
    with pytest.raises(ValueError, match="c_noise"):
        pipe(batch_size=1, num_inference_steps=2, solver_schedule=schedule)
    # a callable keyed on c_noise works and sees floats in EDM's range
    seen = []
    pipe(batch_size=1, num_inference_steps=2, solver_schedule=lambda i, c: seen.append(c) or {"steps": 1})
    assert all(isinstance(c, float) and -2 < c < 1.2 for c in seen) and len(seen) == 2
