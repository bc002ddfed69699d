"""Classifier-free guidance: the closed form of guided Gaussian data through every scheduler and both objectives,
bit-identity at scale 1, the batched call against separate ones, evaluation counts, errors, training with a null
class (cUNet and UNet2DModel), the model card, and the no-install pipeline file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_tiny, needs_data
from gaussian_oracle import EDMGaussianOracle, GaussianOracle
from test_hub_layout import run_in_the_hub_cache
from test_pipelines import CASES, MEAN_TOLERANCE, STD_TOLERANCE, scheduler
from training_helpers import train

from diffusers_cunet.guidance import GuidedNetwork, drop_labels, null_class_of
from diffusers_cunet.pipelines import ContinuousUNetPipeline

MEANS = (-0.15, 0.1, 0.0)  # classes 0 and 1; the null class (2) is the unconditional mean
S = 0.25
SCALE = 1.5


def guided_means(scale: float) -> list[float]:
    null = MEANS[-1]
    return [null + scale * (mean - null) for mean in MEANS[:-1]]


def assert_guided_gaussian(pipe, steps: int = 10, scale: float = SCALE, statistics: bool = False) -> None:
    """Guided sampling equals, path for path (the same noise), plain sampling of the closed form: the oracle whose
    class means are mu_null + w (mu_c - mu_null). With `statistics` (a long run), each class's samples also have
    that mean and standard deviation s."""
    batch = 128 if statistics else 8
    labels = torch.arange(batch) % 2

    def draw(**kwargs):
        pipe.set_progress_bar_config(disable=True)
        return pipe(batch_size=batch, generator=torch.Generator().manual_seed(0), num_inference_steps=steps,
                    output_type="pt", class_labels=labels, **kwargs).images * 2 - 1  # fmt: skip

    guided = draw(guidance_scale=scale)
    oracle = pipe.unet
    pipe.unet = type(oracle).from_config({**oracle.config, "class_means": (*guided_means(scale), MEANS[-1])})
    try:
        closed_form = draw()
    finally:
        pipe.unet = oracle
    torch.testing.assert_close(guided, closed_form, rtol=0, atol=1e-4)
    assert (guided - draw()).abs().max() > 0.05  # guidance changed the samples: the comparison can fail
    for label, expected in enumerate(guided_means(scale)) if statistics else ():
        chosen = guided[labels == label]
        assert abs(chosen.mean().item() - expected) < MEAN_TOLERANCE, (label, chosen.mean().item(), expected)
        assert abs(chosen.std().item() / S - 1) < STD_TOLERANCE, (label, chosen.std().item())


ORACLE = dict(s=S, class_means=MEANS, num_class_embeds=3, null_class_label=2)


@pytest.mark.parametrize("name, prediction_type", CASES, ids=[f"{n}-{p}" for n, p in CASES])
def test_guided_gaussian_data_follows_the_closed_form_with_every_scheduler(name, prediction_type):
    """A DDPM-style class-conditional oracle, guided at w = 1.5 by every supported discrete scheduler."""
    pytest.importorskip("torchsde") if name == "DPMSolverSDEScheduler" else None
    oracle = GaussianOracle(prediction_type=prediction_type, **ORACLE)
    assert_guided_gaussian(ContinuousUNetPipeline(unet=oracle, scheduler=scheduler(name, prediction_type)))


EDM_CASES = ["DDIMScheduler", "DPMSolverMultistepScheduler", "EulerDiscreteScheduler", "UniPCMultistepScheduler"]


@pytest.mark.parametrize("sampler", ["dpmsolver++", "euler"])
def test_guided_edm_models_follow_the_closed_form_with_the_edm_schedulers(sampler):
    from diffusers_cunet.preconditioning import EDMPreconditioning, edm_scheduler

    oracle = EDMGaussianOracle(preconditioning={"type": "edm"}, **ORACLE)
    pipe = ContinuousUNetPipeline(unet=oracle, scheduler=edm_scheduler(EDMPreconditioning(), sampler))
    assert_guided_gaussian(pipe)


@pytest.mark.parametrize("name", EDM_CASES)
def test_guided_edm_models_follow_the_closed_form_through_the_bridge(name):
    """An EDM-trained oracle driven by a discrete scheduler: guidance acts on the bridged output alike."""
    oracle = EDMGaussianOracle(preconditioning={"type": "edm"}, **ORACLE)
    assert_guided_gaussian(ContinuousUNetPipeline(unet=oracle, scheduler=scheduler(name)))


def test_guided_ddpm_models_follow_the_closed_form_with_an_edm_scheduler():
    from diffusers_cunet.preconditioning import EDMPreconditioning, edm_scheduler

    pipe = ContinuousUNetPipeline(unet=GaussianOracle(**ORACLE), scheduler=scheduler("DDIMScheduler"))
    pipe.scheduler = edm_scheduler(EDMPreconditioning(), "dpmsolver++")  # bridged: the VP model answers EDM's D
    assert_guided_gaussian(pipe)


@pytest.mark.parametrize("preconditioning", [None, {"type": "edm"}], ids=["ddpm", "edm"])
def test_guided_samples_have_the_guided_distribution(preconditioning):
    """A long run: the guided samples of each class have mean mu_null + w (mu_c - mu_null) and std s."""
    if preconditioning is None:
        oracle = GaussianOracle(**ORACLE)
    else:
        oracle = EDMGaussianOracle(preconditioning=preconditioning, **ORACLE)
    pipe = ContinuousUNetPipeline(unet=oracle, scheduler=scheduler("DPMSolverMultistepScheduler"))
    assert_guided_gaussian(pipe, steps=100, statistics=True)


# ---------------------------------------------------------------------------------------------- the real network
def guidable(**overrides):
    return make_tiny(num_class_embeds=4, null_class_label=3, **overrides)


def sample(pipe, **kwargs):
    pipe.set_progress_bar_config(disable=True)
    return pipe(batch_size=2, class_labels=[0, 2], generator=torch.Generator().manual_seed(0), num_inference_steps=4,
                output_type="pt", **kwargs)  # fmt: skip


@pytest.mark.parametrize("preconditioning", [None, {"type": "edm"}], ids=["ddpm", "edm"])
def test_scale_one_is_plain_conditional_sampling_bit_for_bit(preconditioning):
    unet = guidable(preconditioning=preconditioning)
    pipe = ContinuousUNetPipeline(unet=unet, scheduler=scheduler("DPMSolverMultistepScheduler"))
    plain, guided = sample(pipe), sample(pipe, guidance_scale=1.0, guidance_interval=(0.1, 10.0))
    assert torch.equal(plain.images, guided.images) and plain.ode_evaluations == guided.ode_evaluations


def test_the_batched_call_equals_the_combination_of_separate_calls():
    unet = guidable()
    sample_in = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    labels, t = torch.tensor([0, 1, 2]), torch.tensor([10, 400, 900])
    with torch.no_grad():
        conditional = unet(sample_in, t, class_labels=labels).sample
        unconditional = unet(sample_in, t, class_labels=torch.full_like(labels, 3)).sample
        guided = GuidedNetwork(unet, 2.5)(sample_in, t, class_labels=labels).sample
    assert (conditional - unconditional).abs().max() > 1e-3  # the label matters, so the test can fail
    torch.testing.assert_close(guided, unconditional + 2.5 * (conditional - unconditional), rtol=1e-5, atol=1e-5)


def test_guided_steps_cost_twice_the_evaluations_and_the_interval_only_its_steps():
    pipe = ContinuousUNetPipeline(unet=guidable(), scheduler=scheduler("DDIMScheduler"))
    plain = sample(pipe).ode_evaluations
    assert sample(pipe, guidance_scale=2.0).ode_evaluations == 2 * plain
    timesteps = pipe.scheduler.timesteps
    abar = pipe.scheduler.alphas_cumprod[timesteps]
    sigmas = ((1 - abar) / abar).sqrt()
    low, high = float(sigmas[2]) * 0.99, float(sigmas[1]) * 1.01  # the second and third of four steps
    inside = sample(pipe, guidance_scale=2.0, guidance_interval=(low, high)).ode_evaluations
    assert inside == plain + 2 * plain // 4


def test_guidance_zero_is_unconditional_sampling():
    """w = 0 leaves only the unconditional prediction: sampling with the null class asked for directly."""
    pipe = ContinuousUNetPipeline(unet=guidable(), scheduler=scheduler("DDIMScheduler"))
    pipe.set_progress_bar_config(disable=True)
    null = pipe(batch_size=2, class_labels=[3, 3], generator=torch.Generator().manual_seed(0), num_inference_steps=4,
                output_type="pt").images  # fmt: skip
    torch.testing.assert_close(sample(pipe, guidance_scale=0.0).images, null, rtol=0, atol=1e-5)


def test_bad_guidance_raises():
    pipe = ContinuousUNetPipeline(unet=make_tiny(num_class_embeds=4), scheduler=scheduler("DDIMScheduler"))
    with pytest.raises(ValueError, match="no null class.*--class_dropout_prob"):
        sample(pipe, guidance_scale=2.0)
    sample(pipe, guidance_scale=1.0)  # a model without a null class samples as before at scale 1
    pipe = ContinuousUNetPipeline(unet=guidable(), scheduler=scheduler("DDIMScheduler"))
    for bad, match in [({"guidance_scale": -1.0}, "finite and >= 0"), ({"guidance_scale": "2"}, "must be a number"),
                       ({"guidance_scale": 2.0, "guidance_interval": (3.0, 1.0)}, "0 <= low <= high"),
                       ({"guidance_scale": 2.0, "guidance_interval": (0.1, 1.0), "cache_interval": 2},
                        "cannot be combined with cache_interval")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            sample(pipe, **bad)
    with pytest.raises(ValueError, match="must not be the null class"):
        pipe(batch_size=2, class_labels=[3, 0], num_inference_steps=2, guidance_scale=2.0)
    with pytest.raises(ValueError, match="null_class_label must be the last class embedding"):
        make_tiny(num_class_embeds=4, null_class_label=1)


def test_label_dropout_replaces_the_share_asked_for():
    labels = torch.arange(20_000) % 7
    dropped = drop_labels(labels, 0.1, 7, torch.Generator().manual_seed(0))
    share = (dropped == 7).double().mean().item()
    assert abs(share - 0.1) < 0.01 and torch.equal(dropped[dropped != 7], labels[dropped != 7])


# ---------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("model_type, objective", [("cunet", "none"), ("unet2d", "edm"), ("unet2d", "none")])
def test_training_with_label_dropout_saves_a_guidable_model(tmp_path, model_type, objective):
    extra = ["--model_type", model_type, "--preconditioning", objective, "--class_column", "label",
             "--class_dropout_prob", "0.2", "--max_train_steps", "3", "--num_validation_images", "2"]  # fmt: skip
    train(tmp_path, *extra)
    config = json.loads((tmp_path / "unet" / "config.json").read_text())
    assert (config["num_class_embeds"], config["null_class_label"]) == (11, 10)
    pipe = ContinuousUNetPipeline.from_pretrained(tmp_path)
    assert null_class_of(pipe.unet) == 10
    pipe.set_progress_bar_config(disable=True)
    out = pipe(batch_size=2, class_labels=[1, 7], num_inference_steps=3, output_type="np", guidance_scale=2.0)
    assert out.images.shape[0] == 2 and np.isfinite(out.images).all()
    card = (tmp_path / "README.md").read_text()
    assert "It is **guidable**" in card and "guidance_scale=2.0" in card and "labels 0 to 9" in card
    assert "labels replaced by the null class (classifier-free guidance) | p = 0.2" in card


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--class_dropout_prob", "0.1"], "--class_dropout_prob needs class labels"),
        (["--class_column", "label", "--class_dropout_prob", "1"], "--class_dropout_prob must be in [0, 1)"),
    ],
)
def test_label_dropout_needs_labels_and_a_probability(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit):  # at parse time, before any data is read
        train(tmp_path / "out", *extra, "--max_train_steps", "1")
    assert message in capsys.readouterr().err and not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- no install
NO_INSTALL = """
import json, sys, torch
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained(sys.argv[1], trust_remote_code=True)
pipe.set_progress_bar_config(disable=True)
out = pipe(batch_size=2, class_labels=[0, 2], generator=torch.Generator().manual_seed(0), num_inference_steps=4,
           output_type="pt", guidance_scale=2.0)
print(json.dumps([out.images.tolist(), out.ode_evaluations]))
"""


def test_the_no_install_pipeline_file_guides(tmp_path):
    pipe = ContinuousUNetPipeline(unet=guidable(), scheduler=scheduler("DDIMScheduler"))
    pipe.save_pretrained(tmp_path / "saved")
    images, evaluations = run_in_the_hub_cache(tmp_path, NO_INSTALL, str(tmp_path / "saved"))
    expected = sample(pipe, guidance_scale=2.0)
    torch.testing.assert_close(torch.tensor(images), expected.images, rtol=0, atol=1e-6)
    assert evaluations == expected.ode_evaluations


# ---------------------------------------------------------------------------------------------- the benchmark
@needs_data
def test_guidance_benchmark_tiny_mode(tmp_path):
    """Both networks trained with a null class and scored at every scale; guided scales cost twice the ODE
    evaluations; a stopped run keeps its scores; the class grid, the report section and its plot are written."""
    from benchmarks import guidance

    results = guidance.run("tiny", tmp_path / "runs", tmp_path)
    names = [row["name"] for row in results["runs"]]
    assert names == [v.name for v in guidance.variants("tiny")]
    assert names[2:] == ["cunet-x1-edm-guided-seed1", "unet2d-x1-edm-guided-seed1"]  # the repeat seed
    for row, variant in zip(results["runs"], guidance.variants("tiny")):
        settings = [guidance.point_key(p) for p in row["points"]]
        assert settings == sorted((s, tuple(i or ())) for s, i in guidance.MODES["tiny"].points_of(variant))
        assert all(0 <= p["class_accuracy"] <= 1 and p["fid"] > 0 for p in row["points"])
    plain, guided, within = (p["ode_evaluations_per_image"] for p in results["runs"][0]["points"])
    assert guided == 2 * plain  # one batched call per step: twice the evaluations
    assert plain <= within < guided  # the interval point (scale 3, sigma in [0.3, 5]) guides fewer steps
    assert results["runs"][2]["held_out_error"] != results["runs"][0]["held_out_error"]  # another seed, another model
    assert (tmp_path / guidance.GRID_FILE).is_file()
    again = guidance.run("tiny", tmp_path / "runs", tmp_path)  # finished: nothing is trained or scored again
    assert again["runs"] == json.loads(json.dumps(results["runs"]))  # (as read back: tuples become lists)
    text = "\n".join(guidance.report_section(again, tmp_path))
    assert "cunet-x1-edm-guided" in text and "scales meeting the target" in text
    assert (tmp_path / guidance.PLOT_FILE).stat().st_size > 1000  # drawn once, with the report section
