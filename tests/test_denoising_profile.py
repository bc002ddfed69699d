"""The denoising profile: its noise levels, its errors against the closed form of a network that outputs nothing, and
a run over a convergence runs folder laid out on disk (checkpoints with EMA weights, scored points)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny, needs_data
from diffusers.training_utils import EMAModel

from benchmarks import convergence, denoising_profile, report
from diffusers_cunet import ContinuousUNet2DModel
from diffusers_cunet.preconditioned_unet_2d import PreconditionedUNet2DModel
from evaluation.held_out import HeldOutError
from training.checkpointing import EMA_FOLDER


def test_profile_levels_span_edms_sampling_range_evenly_in_log_sigma():
    sigmas = denoising_profile.profile_sigmas(5)
    assert sigmas[0] == pytest.approx(0.002) and sigmas[-1] == pytest.approx(80.0)
    steps = [b / a for a, b in zip(sigmas, sigmas[1:])]
    assert steps == pytest.approx([steps[0]] * 4)
    with pytest.raises(ValueError, match="at least 2 noise levels, got 1"):
        denoising_profile.profile_sigmas(1)


def test_a_network_that_outputs_nothing_denoises_by_the_skip_alone():
    model = make_tiny(preconditioning={"type": "edm"})
    images = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    measure = HeldOutError(images, seed=3, sigmas=(0.01, 0.5, 20.0), batch_size=2)
    skip = denoising_profile.skip_only_errors(measure, model.preconditioning)
    # the closed form's two ends: c_skip ~ 1 keeps the noise (error ~ sigma^2), c_skip ~ 0 leaves nothing (~ x^2)
    assert skip[0] == pytest.approx(1e-4 * measure.noise.pow(2).mean().item(), rel=0.05)
    assert skip[2] == pytest.approx(images.pow(2).mean().item(), rel=0.05)
    assert denoising_profile.denoising_errors(model, measure) != pytest.approx(skip, rel=1e-3)  # the network works
    with torch.no_grad():
        model.conv_out.weight.zero_()
        model.conv_out.bias.zero_()
    assert denoising_profile.denoising_errors(model, measure) == pytest.approx(skip, rel=1e-5)


def save_scored_checkpoint(folder, name: str, model, step: int, fid: float | None) -> None:
    """A checkpoint as the trainer leaves it for the profile (diffusers' EMA folder) and, with `fid`, its point."""
    ema = EMAModel(model.parameters(), model_cls=type(model), model_config=model.config)
    ema.save_pretrained(str(folder / name / f"checkpoint-{step}" / EMA_FOLDER))
    if fid is not None:
        convergence.append_point(folder, {"run": name, "step": step, "kind": "checkpoint", "fid": fid,
                                          "held_out_error": 0.1, "guidance_scale": 1.0})  # fmt: skip


@needs_data
def test_the_profile_of_a_runs_folder_sets_each_cunet_beside_the_unet2d_of_its_width(tmp_path):
    runs = tmp_path / "runs"
    folder = convergence.runs_folder(runs, "tiny")
    common = dict(sample_size=32, in_channels=1, out_channels=1, block_out_channels=(16, 32), norm_num_groups=8,
                  num_class_embeds=11, null_class_label=10, preconditioning={"type": "edm"})  # fmt: skip
    torch.manual_seed(0)
    cunet = ContinuousUNet2DModel(**common, attention_levels=(False, False), mid_attention=False)
    unet = PreconditionedUNet2DModel(**common, layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                                     up_block_types=("UpBlock2D", "UpBlock2D"))  # fmt: skip
    save_scored_checkpoint(folder, "cunet-x1", cunet, 2, fid=9.0)
    save_scored_checkpoint(folder, "cunet-x1", cunet, 4, fid=7.0)
    save_scored_checkpoint(folder, "cunet-x1", cunet, 5, fid=None)  # mid-stage: never scored, so not profiled
    save_scored_checkpoint(folder, "unet2d-x1", unet, 4, fid=6.0)
    results, report_file = tmp_path / "results", tmp_path / "BENCHMARKS.md"

    report.finish(denoising_profile.main(["--mode", "tiny", "--runs", str(runs), "--results", str(results),
                                          "--report", str(report_file)]))  # fmt: skip

    profile = json.loads((results / denoising_profile.RESULTS_FILE).read_text())
    levels = denoising_profile.MODES["tiny"].levels
    assert [(row["name"], row["step"], row["fid"]) for row in profile["runs"]] == [("cunet-x1", 4, 7.0),
                                                                                   ("unet2d-x1", 4, 6.0)]  # fmt: skip
    assert profile["without_weights"] == ["cunet-x0.5"]  # the tiny queue's third run: never trained here
    for row in profile["runs"]:
        assert len(row["errors"]) == levels and all(error > 0 for error in row["errors"])
    assert len(profile["skip_only"]) == levels and profile["runs"][0]["params"] == sum(
        p.numel() for p in cunet.parameters()
    )
    section = report_file.read_text()
    assert "## Where each denoiser errs" in section and "| x1: cUNet / UNet2DModel |" in section
    ratio = profile["runs"][0]["errors"][0] / profile["runs"][1]["errors"][0]
    assert f"| 0.002 | {profile['skip_only'][0]:.2e} | {profile['runs'][0]['errors'][0]:.2e} |" in section
    assert f"| {ratio:.2f}x |" in section
    assert "`cunet-x1` (step 4, FID 7.00) against `unet2d-x1` (step 4, FID 6.00)" in section
    assert "Not profiled" in section and "`cunet-x0.5`" in section
    assert (results / "denoising_profile.png").stat().st_size > 10_000


def test_a_runs_folder_without_weights_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="has a scored checkpoint on disk"):
        denoising_profile.run("tiny", tmp_path, tmp_path / denoising_profile.RESULTS_FILE)
