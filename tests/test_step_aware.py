"""Step-aware compute: the schedule object, its use by the pipeline, step-count training and the search."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny
from diffusers import DDIMScheduler
from training_helpers import train

from diffusers_cunet.noise_schedule import make_noise_scheduler
from diffusers_cunet.pipelines import ContinuousUNetPipeline
from diffusers_cunet.step_schedule import SCHEDULE_FILE, SolverStepSchedule
from evaluation.search_scoring import ScheduleEvaluator
from training.step_search import greedy_search


def test_schedule_maps_timesteps_to_bins():
    schedule = SolverStepSchedule.from_steps([1, 2, 4, 8])
    assert [schedule(0, t)["steps"] for t in (0, 249, 250, 500, 999, 1500, -3)] == [1, 1, 2, 4, 8, 8, 1]
    assert make_tiny().evaluations_per_call(schedule(0, 999)) == 8 * 5  # 8 Euler steps in each of 5 blocks


def test_schedule_round_trips_and_validates(tmp_path):
    schedule = SolverStepSchedule((({"method": "rk4", "steps": 1}), {"method": "euler", "steps": 3}), 500)
    path = schedule.save_pretrained(tmp_path)
    assert path.name == SCHEDULE_FILE and not list(tmp_path.glob("*.tmp"))
    assert SolverStepSchedule.from_pretrained(tmp_path) == schedule
    with pytest.raises(ValueError, match="Unknown ODE solver method 'rk5'"):
        SolverStepSchedule.from_steps([1, 2], method="rk5")
    (tmp_path / SCHEDULE_FILE).write_text(json.dumps({"settings": [{"steps": 0}], "num_train_timesteps": 10}))
    with pytest.raises(ValueError, match=f"{SCHEDULE_FILE} is not a valid solver schedule"):
        SolverStepSchedule.from_pretrained(tmp_path)


def test_pipeline_runs_the_schedule_and_loads_it_with_the_folder(tmp_path):
    pipe = ContinuousUNetPipeline(unet=make_tiny(), scheduler=DDIMScheduler.from_config(make_noise_scheduler().config))
    pipe.set_progress_bar_config(disable=True)
    schedule = SolverStepSchedule.from_steps([1, 4])  # 1 step below t=500, 4 above
    out = pipe(batch_size=1, num_inference_steps=10, solver_schedule=schedule, output_type="np")
    blocks = pipe.unet.num_ode_blocks
    expected = sum(blocks * (4 if int(t) >= 500 else 1) for t in pipe.scheduler.timesteps)
    assert out.ode_evaluations == expected  # counted, not computed: the settings really ran

    pipe.solver_schedule = schedule
    pipe.save_pretrained(tmp_path)
    loaded = ContinuousUNetPipeline.from_pretrained(tmp_path)
    assert loaded.solver_schedule == schedule
    loaded.set_progress_bar_config(disable=True)
    assert loaded(batch_size=1, num_inference_steps=10, output_type="np").ode_evaluations == expected


def test_training_over_step_counts(tmp_path):
    train(tmp_path, "--max_train_steps", "4", "--solver_steps_choices", "1", "3")
    config = json.loads((tmp_path / "unet" / "config.json").read_text())
    assert config["solver_steps"] == 3  # the saved model defaults to full effort
    # saved as the pipeline that applies a solver schedule (DDPMPipeline would ignore one)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_cunet", "ContinuousUNetPipeline"]


def test_greedy_search_meets_the_bound_with_fewer_evaluations():
    """On a synthetic quality function: cheap effort hurts only at high timesteps (bin 1)."""
    blocks = 3

    class Fake:
        def __call__(self, schedule):
            from evaluation.search_scoring import Trial

            steps = [s["steps"] for s in schedule.settings]
            fd = 10.0 + (4 - steps[1]) * 2.0 + (4 - steps[0]) * 0.05
            evaluations = sum(steps) * blocks
            return Trial(schedule, fd, evaluations, float(evaluations), 0.0)

    full, best, trials = greedy_search(Fake(), bins=2, levels=[1, 2, 4], tolerance=0.05, log=lambda *_: None)
    assert [s["steps"] for s in best.schedule.settings] == [1, 4]
    assert best.frechet_distance <= full.frechet_distance * 1.05
    assert best.evaluations_per_sample < full.evaluations_per_sample
    assert len(trials) > 5 and trials[0] is full and best.accepted  # full, 4 sensitivity trials, accumulation


def test_evaluator_scores_a_real_pipeline():
    from evaluation.digits import DigitFeatureNet

    unet = make_tiny(in_channels=1, out_channels=1)
    pipe = ContinuousUNetPipeline(unet=unet, scheduler=DDIMScheduler.from_config(make_noise_scheduler().config))
    pipe.set_progress_bar_config(disable=True)
    real = torch.rand(16, 1, 8, 8)
    evaluate = ScheduleEvaluator(pipe, real, DigitFeatureNet(size=8).eval(), num_samples=8, num_inference_steps=4)
    cheap, full = evaluate(SolverStepSchedule.from_steps([1])), evaluate(SolverStepSchedule.from_steps([2]))
    assert cheap.evaluations_per_sample * 2 == full.evaluations_per_sample
    assert 0 < cheap.gflops_per_sample < full.gflops_per_sample and cheap.frechet_distance > 0


def _search(folder, *extra):
    from training.step_search import main

    return main(["--pipeline", str(folder), "--levels", "1", "2", "--bins", "1", "--samples", "8",
                 "--num_inference_steps", "2", "--held_out", "50", *extra])  # fmt: skip


def test_search_runs_on_a_digits_model_and_refuses_what_it_cannot_judge(tmp_path):
    digits = tmp_path / "digits"
    train(digits, "--max_train_steps", "1")
    result = _search(digits)
    assert result["full"]["evaluations_per_sample"] > 0 and (digits / SCHEDULE_FILE).is_file()

    unrecorded = tmp_path / "unrecorded"  # a pipeline from elsewhere: no training record
    ContinuousUNetPipeline.from_pretrained(digits).save_pretrained(unrecorded)
    with pytest.raises(ValueError, match="does not say what it was trained on.*--trained_on_digits"):
        _search(unrecorded)
    assert _search(unrecorded, "--trained_on_digits")["best"]

    colour = tmp_path / "colour"
    train(colour, "--max_train_steps", "1", "--channels", "3")
    with pytest.raises(ValueError, match="3-channel model.*cannot judge it"):
        _search(colour)
    assert not (colour / SCHEDULE_FILE).exists()


def test_search_refuses_a_model_trained_on_other_greyscale_images(tmp_path):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        Image.new("L", (8, 8), color=i * 60).save(images / f"{i}.png")
    train(tmp_path / "out", "--max_train_steps", "1", "--train_data_dir", str(images), "--train_batch_size", "4")
    with pytest.raises(ValueError, match=r"metrics.json names 'local folder `images`'"):
        _search(tmp_path / "out")


def test_the_schedule_is_found_by_hub_id_through_the_cache(tmp_path, monkeypatch):
    import huggingface_hub
    from conftest import lay_out_hub_cache

    def no_request(*args, **kwargs):  # the snapshot holds the schedule: looking it up again was 23 s of retries
        raise AssertionError(f"a second Hub request while loading from the cache: hf_hub_download{args}")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_request)

    schedule = SolverStepSchedule.from_steps([1, 4])
    pipe = ContinuousUNetPipeline(unet=make_tiny(), scheduler=DDIMScheduler.from_config(make_noise_scheduler().config))
    pipe.solver_schedule = schedule
    cache = tmp_path / "hub"
    lay_out_hub_cache(cache, "org/cunet-steps", pipe)
    loaded = ContinuousUNetPipeline.from_pretrained("org/cunet-steps", cache_dir=cache, local_files_only=True)
    assert loaded.solver_schedule == schedule
    pipe.solver_schedule = None
    lay_out_hub_cache(cache, "org/cunet-plain", pipe)
    plain = ContinuousUNetPipeline.from_pretrained("org/cunet-plain", cache_dir=cache, local_files_only=True)
    assert plain.solver_schedule is None
