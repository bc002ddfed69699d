"""training/train.py with EDM and EDM-FDM preconditioning: the loss, the warm-up, resume, the saved pipeline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny
from diffusers import EDMDPMSolverMultistepScheduler
from training_helpers import assert_same_weights, load_train_module, loss_history, train

from diffusers_cunet.objectives import EDMObjective
from diffusers_cunet.pipelines import ContinuousUNetPipeline
from diffusers_cunet.preconditioning import loss_weight_cap


@pytest.fixture(scope="module")
def module():
    return load_train_module()


@pytest.fixture(scope="module")
def fdm_run(tmp_path_factory, module):
    output = tmp_path_factory.mktemp("fdm")
    extra = ["--preconditioning", "edm-fdm", "--fdm_momentum", "1.5", "--loss_weight_warmup_steps", "10"]
    result = train(output, "--max_train_steps", "40", *extra, module=module)
    return output, result


def test_edm_loss_falls(tmp_path, module):
    train(tmp_path, "--max_train_steps", "60", "--preconditioning", "edm", module=module)
    history = loss_history(tmp_path)
    first, last = np.mean(history[:5]), np.mean(history[-10:])
    assert last < 0.8 * first, (first, last)


def test_fdm_run_saves_a_preconditioned_pipeline_that_reloads(fdm_run):
    output, result = fdm_run
    assert np.isfinite(loss_history(output)).all()
    index = json.loads((output / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_cunet", "ContinuousUNetPipeline"]
    assert index["scheduler"] == ["diffusers", "EDMDPMSolverMultistepScheduler"]
    config = json.loads((output / "unet" / "config.json").read_text())
    assert config["preconditioning"]["type"] == "edm-fdm" and config["preconditioning"]["momentum"] == 1.5
    assert config["preconditioning"]["normalize_input"] is False
    pipe = ContinuousUNetPipeline.from_pretrained(output)
    assert isinstance(pipe.scheduler, EDMDPMSolverMultistepScheduler)
    assert pipe.scheduler.config.sigma_data == config["preconditioning"]["sigma_data"]
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np")
    assert images.images.shape == (2, 8, 8, 1) and np.isfinite(images.images).all()
    card = (output / "README.md").read_text()
    assert "edm-fdm" in card and "ContinuousUNetPipeline.from_pretrained" in card
    assert "DDPMPipeline" not in card and "momentum 1.5" in card


def test_edm_loss_is_the_clipped_weighted_denoising_error():
    """EDMObjective.loss = mean(min(lambda(sigma), cap) * (D(x + sigma n) - x)^2), computed here by hand."""
    model = make_tiny(preconditioning={"type": "edm-fdm"})
    pre = model.preconditioning
    generator = torch.Generator().manual_seed(0)
    clean = torch.rand(4, 3, 8, 8, generator=generator) * 2 - 1
    noise = torch.randn(4, 3, 8, 8, generator=generator)
    sigma = torch.tensor([0.01, 0.3, 2.0, 40.0])
    objective = EDMObjective(pre, loss_weight_warmup_steps=10)  # caps 5 at step 0, 50 at step 5, none from 10
    for step, cap in ((0, 5.0), (5, 50.0), (10, float("inf"))):
        with torch.no_grad():
            loss = objective.loss(model, clean, noise, sigma, step, class_labels=None)
            expected = 0.0
            for i in range(4):
                x = clean[i : i + 1] + sigma[i] * noise[i : i + 1]
                raw = model(pre.c_in(sigma[i]).float() * x, pre.c_noise(sigma[i]).reshape(1)).sample
                denoised = pre.c_skip(sigma[i]) * x + pre.c_out(sigma[i]) * raw
                weight = min(float(pre.loss_weight(sigma[i])), cap)
                expected += weight * ((denoised - clean[i : i + 1]) ** 2).mean() / 4
        torch.testing.assert_close(loss, expected.float(), rtol=1e-5, atol=1e-6)
    assert float(pre.loss_weight(0.01)) > 50  # so the caps above really clip


def test_fdm_resume_is_exact_across_the_warmup(tmp_path, module):
    """Resumed at step 4 of a 6-step loss-weight warm-up, the run ends with the same weights and losses."""
    common = ["--max_train_steps", "10", "--max_train_samples", "96", "--checkpointing_steps", "4",
              "--checkpoints_total_limit", "5", "--preconditioning", "edm-fdm",
              "--loss_weight_warmup_steps", "6"]  # fmt: skip
    full = tmp_path / "full"
    train(full, *common, module=module)
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-4", resumed / "checkpoint-4")
    train(resumed, *common, "--resume_from_checkpoint", "latest", module=module)
    weights = Path("unet", "diffusion_pytorch_model.safetensors")
    assert_same_weights(full / weights, resumed / weights)
    assert loss_history(resumed) == loss_history(full)  # the whole run, restored from checkpoint-4
    assert loss_weight_cap(4, 6) < 500  # the resume point lies inside the warm-up


def test_a_checkpoint_of_another_preconditioning_is_refused(tmp_path, module):
    train(tmp_path, "--max_train_steps", "2", "--checkpointing_steps", "2", "--preconditioning", "edm", module=module)
    with pytest.raises(ValueError, match="belongs to another model.*preconditioning"):
        train(tmp_path, "--max_train_steps", "4", "--preconditioning", "edm-fdm", "--resume_from_checkpoint",
              "latest", module=module)  # fmt: skip


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--loss_weight_warmup_steps", "5"], "applies to --preconditioning edm or edm-fdm only"),
        (["--preconditioning", "edm", "--prediction_type", "v_prediction"], "DDPM-style training"),
        (["--preconditioning", "edm-fdm", "--loss_weight_warmup_steps", "-1"], "must be >= 0"),
        (["--preconditioning", "vp"], "invalid choice"),
        (["--fdm_normalize_input"], "applies to --preconditioning edm or edm-fdm only"),
        (["--preconditioning", "edm", "--fdm_normalize_input"], "applies to --preconditioning edm-fdm only"),
    ],
)
def test_bad_preconditioning_options_are_refused(tmp_path, module, capsys, extra, message):
    with pytest.raises(SystemExit):
        train(tmp_path / "out", "--max_train_steps", "1", *extra, module=module)
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_invalid_preconditioning_values_fail_before_training(tmp_path, module):
    with pytest.raises(ValueError, match="sigma_data must be a positive"):
        train(tmp_path / "out", "--max_train_steps", "1", "--preconditioning", "edm", "--sigma_data", "0",
              module=module)  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_the_loss_weight_warm_up_default_is_derived_not_written_into_the_options():
    from training.options import FDM_LOSS_WEIGHT_WARMUP_STEPS, loss_weight_warmup_steps, make_config

    fdm = make_config(output_dir="out", preconditioning="edm-fdm")
    assert fdm.loss_weight_warmup_steps is None  # the parsed options stay as given
    assert loss_weight_warmup_steps(fdm) == FDM_LOSS_WEIGHT_WARMUP_STEPS == 200  # FDM's code
    assert loss_weight_warmup_steps(make_config(output_dir="out", preconditioning="edm")) == 0
    given = make_config(output_dir="out", preconditioning="edm-fdm", loss_weight_warmup_steps=7)
    assert loss_weight_warmup_steps(given) == 7
