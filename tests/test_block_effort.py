"""Step-aware compute below one solver step: skipping ODE blocks per timestep bin, and reusing deep features across
sampling steps (DeepCache-style), in the model, the schedule, the pipelines and training."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import make_tiny, needs_data
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    UNet2DModel,
)
from training_helpers import train

from diffusers_cunet.feature_cache import DeepFeatureCache
from diffusers_cunet.flops import count_call_flops, count_forward_flops
from diffusers_cunet.noise_schedule import make_noise_scheduler
from diffusers_cunet.pipelines import ContinuousUNetPipeline
from diffusers_cunet.preconditioning import edm_scheduler
from diffusers_cunet.step_schedule import SCHEDULE_FILE, SolverStepSchedule


def inputs(batch: int = 2, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 8, 8, generator=generator), torch.tensor([300, 700])[:batch]


def without_block(model, name: str):
    """A copy of `model` whose block `name` has a zero vector field: integrating it changes nothing (the reference
    for skipping it)."""
    copy = make_tiny()
    copy.load_state_dict(model.state_dict())
    with torch.no_grad():
        for parameter in copy.get_submodule(name).dynamics.conv2.parameters():
            parameter.zero_()
    return copy


# ---------------------------------------------------------------------------------------------- skipping blocks
def test_block_names_follow_the_forward_order():
    model = make_tiny()
    assert model.ode_block_names == ("down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.0", "up_blocks.1")
    assert all(hasattr(model.get_submodule(name), "dynamics") for name in model.ode_block_names)


@pytest.mark.parametrize("name", ["down_blocks.0", "mid_block", "up_blocks.1"])
def test_a_skipped_block_is_the_identity(name):
    model = make_tiny()
    x, t = inputs()
    with torch.no_grad():
        skipped = model(x, t, solver={"skip": [name]}).sample
        reference = without_block(model, name)(x, t).sample
        full = model(x, t).sample
    torch.testing.assert_close(skipped, reference, rtol=0, atol=1e-6)
    assert (skipped - full).abs().max() > 1e-3  # the block did something that skipping left out


def test_skipping_is_counted_and_checked():
    model = make_tiny()  # 5 blocks, 2 Euler steps each
    assert model.evaluations_per_call() == 10
    assert model.evaluations_per_call({"steps": 1, "skip": ["mid_block", "up_blocks.0"]}) == 3
    assert model.evaluations_per_call(top_levels=1) == 4  # a cached call: the top level's two blocks
    x, t = inputs()
    model.ode_function_evaluations(reset=True)
    with torch.no_grad():
        model(x, t, solver={"skip": ["down_blocks.1"]})
    assert model.ode_function_evaluations() == 8  # the counter of the blocks that ran agrees
    with pytest.raises(ValueError, match=r"Unknown ODE block\(s\) \['mid'\]"):
        model(x, t, solver={"skip": ["mid"]})
    with pytest.raises(ValueError, match="list of ODE block names"):
        model(x, t, solver={"skip": "mid_block"})
    full = count_forward_flops(model)
    assert count_call_flops(lambda: model(x[:1], 500, solver={"skip": ["mid_block"]})) < full


def test_skipping_blocks_in_training_and_validation(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"no ODE block\(s\) 'mid_blok' \(did you mean 'mid_block'\?\)"):
        train(
            tmp_path / "bad", "--max_train_steps", "1", "--block_skip_prob", "0.5", "--block_skip_blocks", "mid_blok"
        )
    # options that are wrong on their own fail at parse time, before any model is built or data read
    for extra, message in [(["--block_skip_blocks", "mid_block"], "needs --block_skip_prob > 0"),
                           (["--block_skip_prob", "1"], "must lie in [0, 1)")]:  # fmt: skip
        with pytest.raises(SystemExit):
            train(tmp_path / "early", "--max_train_steps", "1", *extra)
        assert message in capsys.readouterr().err
        assert not (tmp_path / "early").exists()
    plain = train(tmp_path / "plain", "--max_train_steps", "3", "--seed", "3")
    skipping = train(tmp_path / "skip", "--max_train_steps", "3", "--seed", "3", "--block_skip_prob", "0.9")
    # the same seed, noise and batches: the losses differ only because blocks were left out
    losses = [entry["loss"] for entry in skipping.loss_history]
    assert losses != [entry["loss"] for entry in plain.loss_history] and all(map(math.isfinite, losses))
    index = json.loads((tmp_path / "skip" / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_cunet", "ContinuousUNetPipeline"]  # the pipeline that applies skips
    card = (tmp_path / "skip" / "README.md").read_text()
    assert "skipped at random (per batch, each) | p = 0.9 of down_blocks.0, down_blocks.1, mid_block" in card


# ---------------------------------------------------------------------------------------------- schedules
def test_schedules_with_skips_and_edm_bins_round_trip(tmp_path):
    schedule = SolverStepSchedule.for_edm(
        [{"method": "euler", "steps": 1, "skip": ["mid_block"]}, {"method": "euler", "steps": 1}], 0.002, 80.0
    )
    assert schedule.timestep_kind == "c_noise" and schedule.skipped(0) == ("mid_block",)
    low, high = math.log(0.002) / 4, math.log(80.0) / 4
    assert [schedule.bin_of(c) for c in (low, -0.3, -0.2, high, 5.0)] == [0, 0, 1, 1, 1]  # midpoint -0.22
    schedule.save_pretrained(tmp_path)
    assert SolverStepSchedule.from_pretrained(tmp_path) == schedule
    assert schedule.with_skip(1, ["up_blocks.0"]).skipped(1) == ("up_blocks.0",)
    assert schedule.with_skip(0, []).settings[0] == {"method": "euler", "steps": 1}
    # a file written before skips and EDM bins existed still loads, as a discrete schedule
    (tmp_path / SCHEDULE_FILE).write_text(json.dumps({"num_train_timesteps": 1000, "settings": [{"steps": 1}]}))
    assert SolverStepSchedule.from_pretrained(tmp_path).timestep_kind == "discrete"
    with pytest.raises(ValueError, match="list of ODE block names"):
        SolverStepSchedule(({"steps": 1, "skip": "mid_block"},))
    with pytest.raises(ValueError, match="c_noise_range"):
        SolverStepSchedule(({"steps": 1},), c_noise_range=(1.0, -1.0))


def test_pipelines_apply_skip_schedules_of_their_kind():
    model = make_tiny(preconditioning={"type": "edm"})
    pipe = ContinuousUNetPipeline(unet=model, scheduler=edm_scheduler(model))
    pipe.set_progress_bar_config(disable=True)
    schedule = SolverStepSchedule.for_edm([{"steps": 1, "skip": ["mid_block", "up_blocks.0"]}, {"steps": 1}],
                                          0.002, 80.0)  # fmt: skip
    out = pipe(batch_size=1, num_inference_steps=6, solver_schedule=schedule, output_type="pt")
    bins = [schedule.bin_of(float(c)) for c in pipe.scheduler.timesteps]
    assert 0 < bins.count(0) < len(bins)  # both bins were used
    assert out.ode_evaluations == sum(3 if b == 0 else 5 for b in bins)
    discrete = SolverStepSchedule.from_steps([1, 2])
    with pytest.raises(ValueError, match="SolverStepSchedule.for_edm"):
        pipe(batch_size=1, num_inference_steps=2, solver_schedule=discrete)
    ddim = ContinuousUNetPipeline(unet=make_tiny(), scheduler=DDIMScheduler.from_config(make_noise_scheduler().config))
    with pytest.raises(ValueError, match="integer timesteps"):
        ddim(batch_size=1, num_inference_steps=2, solver_schedule=schedule)


# ---------------------------------------------------------------------------------------------- feature reuse
def test_a_cached_call_on_the_same_input_reproduces_the_full_call():
    model = make_tiny()
    x, t = inputs()
    for levels in (1, 2):
        cache = DeepFeatureCache(levels)
        with torch.no_grad():
            full = model(x, t, feature_cache=cache).sample
            assert cache.features is not None
            cache.refresh = False
            reused = model(x, t, feature_cache=cache).sample
            moved = model(x + 0.5, t, feature_cache=cache).sample
        torch.testing.assert_close(reused, full, rtol=0, atol=1e-6)
        assert (moved - full).abs().max() > 1e-3  # the top levels did run on the new input


def test_feature_cache_errors():
    model = make_tiny()
    x, t = inputs()
    with pytest.raises(ValueError, match="must refresh it"):
        model(x, t, feature_cache=DeepFeatureCache(1, refresh=False))
    with pytest.raises(ValueError, match="between 1 and 2"):
        model(x, t, feature_cache=DeepFeatureCache(3))
    cache = DeepFeatureCache(1)
    with torch.no_grad():
        model(x, t, feature_cache=cache)
    cache.refresh = False
    with pytest.raises(ValueError, match="batch of 2"):
        model(x[:1], t[:1], feature_cache=cache)
    with pytest.raises(ValueError, match="levels"):
        DeepFeatureCache(0)


def scheduler_for(name: str, model):
    config = make_noise_scheduler().config
    return {
        "ddim": lambda: DDIMScheduler.from_config(config),
        "dpm++": lambda: DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++"),
        "euler": lambda: EulerDiscreteScheduler.from_config(config),
        "heun": lambda: HeunDiscreteScheduler.from_config(config),
        "edm": lambda: edm_scheduler(model),
    }[name]()


@pytest.mark.parametrize("name", ["ddim", "dpm++", "euler", "heun", "edm"])
def test_interval_one_equals_the_plain_pipeline_and_longer_ones_save(name):
    model = make_tiny(preconditioning={"type": "edm"}) if name == "edm" else make_tiny()
    pipe = ContinuousUNetPipeline(unet=model, scheduler=scheduler_for(name, model))
    pipe.set_progress_bar_config(disable=True)

    def run(**kwargs):
        return pipe(batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(0),
                    output_type="np", **kwargs)  # fmt: skip

    plain = run()
    every = run(cache_interval=1, cache_levels=1)
    np.testing.assert_array_equal(every.images, plain.images)  # bit for bit
    assert every.ode_evaluations == plain.ode_evaluations
    cached = run(cache_interval=2, cache_levels=1)
    calls = plain.ode_evaluations // 10  # 10 evaluations per whole call
    assert cached.ode_evaluations == 10 * math.ceil(calls / 2) + 4 * (calls // 2)
    assert np.abs(cached.images - plain.images).max() > 0  # the reuse really happened
    assert np.isfinite(cached.images).all()


def test_feature_reuse_saves_counted_flops_and_refuses_other_models():
    pipe = ContinuousUNetPipeline(unet=make_tiny(), scheduler=scheduler_for("ddim", None))
    pipe.set_progress_bar_config(disable=True)

    def flops(**kwargs):
        return count_call_flops(lambda: pipe(batch_size=1, num_inference_steps=6, output_type="pt", **kwargs))

    plain, cached = flops(), flops(cache_interval=3, cache_levels=1)
    assert cached < plain * 0.8
    with pytest.raises(ValueError, match="cache_interval must be a positive integer"):
        pipe(batch_size=1, num_inference_steps=2, cache_interval=0)
    with pytest.raises(ValueError, match="between 1 and 2"):
        pipe(batch_size=1, num_inference_steps=2, cache_interval=2, cache_levels=3)
    blocks = {"down_block_types": ("DownBlock2D",) * 2, "up_block_types": ("UpBlock2D",) * 2}
    unet = UNet2DModel(sample_size=8, block_out_channels=(16, 32), norm_num_groups=8, layers_per_block=1, **blocks)
    with pytest.raises(ValueError, match="needs a ContinuousUNet2DModel"):
        ContinuousUNetPipeline(unet=unet, scheduler=scheduler_for("ddim", None))(
            batch_size=1, num_inference_steps=2, cache_interval=2
        )


# ---------------------------------------------------------------------------------------------- the benchmark
@needs_data
def test_step_aware_benchmark_tiny_mode(tmp_path):
    from benchmarks import fashion, step_aware

    results = tmp_path / "results"
    data = step_aware.run("tiny", tmp_path / "runs", results / step_aware.RESULTS_FILE)
    labels = {row["label"] for row in data["rows"]}
    assert {"cunet-x1-edm default", "cunet-x1-edm searched skips", "cunet-x1-edm cache 2/1",
            "cunet-x1-edm 2 steps", "cunet-x1-edm-skip default"} <= labels  # fmt: skip
    search = data["searches"]["cunet-x1-edm"]
    assert len(search["trials"]) >= 1 + 2 * 2  # the full schedule and each move alone
    rows = {(row["label"], row["seed"]): row for row in data["rows"]}
    default = rows[("cunet-x1-edm default", 0)]
    cached = rows[("cunet-x1-edm cache 2/1", 0)]
    assert cached["gflops_per_sample"] < default["gflops_per_sample"]
    assert cached["evaluations_per_sample"] < default["evaluations_per_sample"]
    assert data["verdicts"]["cunet-x1-edm cache 2/1"]["flop_ratio"] < 1
    text = "\n".join(step_aware.report_section(data, results))
    assert "block skipping and feature reuse" in text and (results / "step_aware.png").stat().st_size > 0
    # started again, it keeps the searches and scored rows
    again = step_aware.run("tiny", tmp_path / "runs", results / step_aware.RESULTS_FILE)
    assert again["rows"] == data["rows"] and again["searches"] == data["searches"]

    # the subject's weights lost (a new machine), its rows kept: a narrower model joins without it
    joining = tmp_path / "joining.json"
    kept = [row for row in data["rows"] if row["model"] == "cunet-x1-edm"]
    joining.write_text(json.dumps({**data, "rows": kept}))
    narrow = step_aware.Subjects({"cunet-x1-edm-skip": tmp_path / "runs" / "cunet-x1-edm-skip"},
                                 skip_trained=None, narrow="cunet-x1-edm-skip")  # fmt: skip
    tiny = fashion.MODES["tiny"]
    joined = step_aware.study("tiny", narrow, tiny.sampling_steps, tiny.test_images, joining)
    assert joined["rows"][: len(kept)] == kept and [row["label"] for row in joined["rows"][len(kept) :]] == [
        "cunet-x1-edm-skip default"
    ]
    joining.write_text(json.dumps({**data, "rows": [], "searches": {}}))
    with pytest.raises(ValueError, match="no pipeline folder for cunet-x1-edm"):
        step_aware.study("tiny", narrow, tiny.sampling_steps, tiny.test_images, joining)


def test_skip_search_refuses_models_the_judge_cannot_score(tmp_path):
    from training import skip_search

    ContinuousUNetPipeline(unet=make_tiny(), scheduler=scheduler_for("ddim", None)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no 1-channel 32x32 model"):
        skip_search.main(["--pipeline", str(tmp_path)])


@needs_data
def test_the_skip_searchs_scoring_samples_a_class_conditional_model_with_balanced_labels():
    """A guidable model is scored as the convergence queue scores it (labels balanced over the classes, scale 1),
    not on its null class alone: the evaluator's samples are exactly `generate`'s with those labels."""
    from evaluation.fashion_judge import load_judge
    from evaluation.fashion_scores import balanced_labels, generate, test_image_features
    from evaluation.search_scoring import SampleEvaluator

    unet = make_tiny(sample_size=32, in_channels=1, out_channels=1, num_class_embeds=11, null_class_label=10)
    pipe = ContinuousUNetPipeline(unet=unet.eval(), scheduler=DDIMScheduler.from_config(make_noise_scheduler().config))
    evaluate = SampleEvaluator(pipe, load_judge(), test_image_features(100), 12, 2, seed=3, batch_size=5)
    images, _ = evaluate.samples()
    expected, _ = generate(pipe, 12, 2, 3, 5, class_labels=balanced_labels(12))
    torch.testing.assert_close(images, expected, rtol=0, atol=0)
    unconditional, _ = generate(pipe, 12, 2, 3, 5)
    assert not torch.equal(images, unconditional)  # the null class alone would have been another sample
    assert evaluate.evaluations_per_sample() > 0 and evaluate.gflops_per_sample() > 0


def test_each_cheaper_setting_is_set_against_fewer_sampler_steps_at_its_gflops():
    from benchmarks.step_aware import fewer_steps_curve, fid_by_fewer_steps, settings_table

    def row(label, gflops, fid, seed=0):
        return {"label": label, "seed": seed, "gflops_per_sample": gflops, "fid": fid, "evaluations_per_sample": 1,
                "sampling_s_per_image": 0.01}  # fmt: skip

    results = {"subject": "m", "rows": [row("m default", 8.0, 10.0), row("m default", 8.0, 10.2, seed=1),
                                        row("m 12 steps", 4.0, 11.0), row("m skips", 6.0, 10.2),
                                        row("m cache", 3.0, 12.0), row("m-other default", 8.0, 14.0)]}  # fmt: skip
    assert fewer_steps_curve(results) == [(4.0, 11.0), (8.0, 10.0)]  # seed 0 of the subject's default and steps only
    assert fid_by_fewer_steps(fewer_steps_curve(results), 6.0) == pytest.approx(10.5)
    assert fid_by_fewer_steps(fewer_steps_curve(results), 3.0) is None  # cheaper than any step count measured
    table = "\n".join(settings_table(results))
    assert "| `m skips` |" in table and "| 10.50 (better) |" in table  # 10.2 against 10.5 at 6 GFLOPs
    assert "| `m-other default` |" in table and "| 10.00 (worse) |" in table  # another model at the default's cost
    assert table.count("| - |") >= 3  # the default, the steps row and the cache row outside the curve
