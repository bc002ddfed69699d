"""The convergence verdicts against numbers worked out by hand: crossings interpolated between scored points, the
same-width comparison, the cUNets at least as good as each UNet2DModel, EDM-FDM against plain EDM."""

from __future__ import annotations

import pytest

from benchmarks.convergence_verdicts import first_crossing, outcome, verdict_lines, verdicts

RECIPE_STEPS = 20


def row(name, network, width, points, sweep=(), seconds=None, objective="edm", seed=0, params=1.0, done=True):
    """A results-file row: `points` as (training seconds, FID) at steps 1, 2, ...; `sweep` as (sampler steps, FID);
    `done`: finished and settled (judged converged or at its cap)."""
    return {
        "name": name, "network": network, "width": width, "objective": objective, "seed": seed, "params": params,
        "steps": len(points) if done else len(points) - 1, "planned_steps": len(points), "settled": done,
        "points": [{"step": i + 1, "train_seconds": 10 * t, "train_seconds_median": t, "fid": fid}
                   for i, (t, fid) in enumerate(points)],
        "sweep": [{"sampling_steps": steps, "fid": fid} for steps, fid in sweep],
        "seconds_per_image": {str(k): v for k, v in (seconds or {}).items()},
    }  # fmt: skip


CUNET = row("cunet-x1", "cunet", "x1", [(100, 12.0), (200, 9.0), (300, 8.0)], sweep=[(10, 9.5), (50, 7.9)],
            seconds={10: 0.01, 20: 0.02, 50: 0.05}, params=0.4)  # fmt: skip
UNET2D = row("unet2d-x1", "unet2d", "x1", [(300, 11.0), (600, 9.5), (900, 8.5)], sweep=[(10, 10.0), (50, 8.4)],
             seconds={10: 0.03, 20: 0.06, 50: 0.15})  # fmt: skip


def test_first_crossing_interpolates_and_says_when_it_is_only_a_bound():
    assert first_crossing([1, 2, 3], [10, 6, 4], 5) == (pytest.approx(2.5), False)
    assert first_crossing([3, 1, 2], [4, 10, 6], 5) == (pytest.approx(2.5), False)  # taken in order of x
    assert first_crossing([1, 2], [4, 3], 5) == (1, True)  # already there at the first point: at most 1
    assert first_crossing([1, 2], [7, 6], 5) is None
    assert first_crossing([1, 2, 3], [6, 4, 7], 5) == (pytest.approx(1.5), False)  # the first crossing counts


def test_outcome_uses_the_seed_spread():
    assert outcome(9.0, 9.5, 0.6) == "within the seed spread"
    assert outcome(8.0, 9.5, 0.6) == "better" and outcome(10.5, 9.5, 0.6) == "worse"
    assert outcome(8.0, 9.5, None) == "lower" and outcome(10.0, 9.5, None) == "higher"


def test_same_width_verdict_by_hand():
    found = verdicts([CUNET, UNET2D], spread=0.6, recipe_steps=RECIPE_STEPS)
    (pair,) = found["same_width"]
    assert pair["outcome"] == "within the seed spread"  # 8.0 against 8.5
    # the cUNet reaches 8.5 halfway between its 200 s (9.0) and 300 s (8.0) points; the UNet2DModel at its last
    train = pair["train_seconds_to_unet2d_fid"]
    assert train["cunet"] == (pytest.approx(250.0), False) and train["unet2d"] == (pytest.approx(900.0), False)
    assert pair["train_time_ratio"] == pytest.approx(250 / 900)
    # sampling: the cUNet's 9.5 at 10 ms and 8.0 at 20 ms cross 8.5 at 16.7 ms; the UNet2DModel's own 20 steps
    sample = pair["sampling_seconds_per_image_at_unet2d_fid"]
    assert sample["cunet"][0] == pytest.approx(0.01 + 0.01 / 1.5) and sample["unet2d"][0] == pytest.approx(0.06)
    assert pair["sampling_time_ratio"] == pytest.approx((0.01 + 0.01 / 1.5) / 0.06)
    assert pair["params_ratio"] == pytest.approx(0.4)
    # to within the seed spread of 8.5 (FID <= 9.1): the cUNet between 100 s (12.0) and 200 s (9.0), the UNet2DModel
    # between 600 s (9.5) and 900 s (8.5)
    tolerant = pair["within_spread"]
    assert tolerant["target_fid"] == pytest.approx(9.1)
    assert tolerant["train_seconds"]["cunet"][0] == pytest.approx(100 + 100 * 2.9 / 3)
    assert tolerant["train_seconds"]["unet2d"][0] == pytest.approx(600 + 300 * 0.4)
    (across,) = found["across_widths"]
    (good,) = across["cunets_at_least_as_good"]
    assert good["run"] == "cunet-x1" and good["sampling_time_ratio"] == pytest.approx(0.02 / 0.06)
    text = "\n".join(verdict_lines(found))
    assert (
        "**x1** (same objective; both 3 steps): the cUNet's final FID **8.00** against the UNet2DModel's **8.50** "
        "(seed spread 0.60): **within the seed spread**" in text
    )
    assert "cUNet 0.07 h, UNet2DModel 0.25 h (0.28x)" in text


def test_a_losing_cunet_is_said_plainly_and_unsettled_runs_give_no_verdict():
    slow = row("cunet-x1", "cunet", "x1", [(100, 14.0), (200, 12.0)], seconds={20: 0.02})
    found = verdicts([slow, UNET2D], spread=0.6, recipe_steps=RECIPE_STEPS)
    (pair,) = found["same_width"]
    assert pair["outcome"] == "worse" and pair["train_seconds_to_unet2d_fid"]["cunet"] is None
    assert found["across_widths"][0]["cunets_at_least_as_good"] == []
    text = "\n".join(verdict_lines(found))
    assert "cUNet never (within its steps)" in text and "none: every cUNet's FID is higher" in text
    assert "(same objective; cUNet 2 steps, UNet2DModel 3)" in text  # each trained to its own end
    # what each pays for the quality both reach, the cUNet's final 12.0: the cUNet at its 200 s point, the
    # UNet2DModel already at its first (300 s, only a bound)
    both = pair["at_cunet_fid"]
    assert both["target_fid"] == 12.0 and both["train_seconds"] == {"cunet": (200, False), "unet2d": (300, True)}
    assert both["train_time_ratio"] == pytest.approx(200 / 300)
    assert (
        "To the cUNet's own final FID, the quality both reach (FID <= 12.00): training cUNet 0.06 h, "
        "UNet2DModel <= 0.08 h (0.67x)" in text
    )
    assert found_pair_at_cunet_fid(CUNET, UNET2D) is None  # a cUNet at least as good needs no such line
    unfinished = row("cunet-x1", "cunet", "x1", [(100, 9.0), (200, 8.0)], done=False)
    assert verdicts([unfinished, UNET2D], 0.6, RECIPE_STEPS)["same_width"] == []
    # finished its plan but not judged converged yet (the queue may extend it): no verdict either
    assert verdicts([CUNET, {**UNET2D, "settled": False}], 0.6, RECIPE_STEPS) == {
        "same_width": [],
        "across_widths": [],
        "fdm": [],
    }
    assert "None yet" in "\n".join(verdict_lines(verdicts([unfinished, UNET2D], 0.6, RECIPE_STEPS)))


def found_pair_at_cunet_fid(cunet, unet2d):
    return verdicts([cunet, unet2d], spread=0.6, recipe_steps=RECIPE_STEPS)["same_width"][0]["at_cunet_fid"]


def test_fdm_is_set_against_the_same_cunets_plain_edm_run_and_is_no_seed():
    half = row("cunet-x0.5", "cunet", "x0.5", [(50, 12.0), (100, 10.0)])
    fdm = row("cunet-x0.5-fdm-m2", "cunet", "x0.5", [(50, 13.0), (100, 11.5)], objective="edm-fdm m=2")
    found = verdicts([half, fdm], spread=0.6, recipe_steps=RECIPE_STEPS)
    (entry,) = found["fdm"]
    assert (entry["run"], entry["edm_run"], entry["fid"], entry["edm_fid"]) == ("cunet-x0.5-fdm-m2", "cunet-x0.5",
                                                                                11.5, 10.0)  # fmt: skip
    assert entry["outcome"] == "worse" and entry["steps_to_edm_fid"]["fdm"] is None and not entry["meets_target"]
    assert found["same_width"] == [] and found["across_widths"] == []  # FDM runs stand in no network comparison
    # steps 1..4: FDM reaches EDM's final 8.0 halfway between its steps 2 (9.0) and 3 (7.0); EDM at its step 4
    quick = row("cunet-x0.5-fdm-m1", "cunet", "x0.5", [(1, 12.0), (2, 9.0), (3, 7.0), (4, 6.5)],
                objective="edm-fdm m=1")  # fmt: skip
    plain = row("cunet-x0.5", "cunet", "x0.5", [(1, 12.0), (2, 10.0), (3, 9.0), (4, 8.0)])
    (entry,) = verdicts([plain, quick], spread=0.6, recipe_steps=RECIPE_STEPS)["fdm"]
    assert entry["steps_to_edm_fid"] == {"fdm": (pytest.approx(2.5), False), "edm": (4, False)}
    assert entry["step_ratio"] == pytest.approx(2.5 / 4) and not entry["meets_target"]  # 0.625x > 0.6x
    text = "\n".join(verdict_lines({"same_width": [], "across_widths": [], "fdm": [entry]}))
    assert "at step 2 against EDM's 4 (0.62x; target <= 0.6x: not met)" in text and "None yet" not in text


def test_sampling_times_not_in_yet_are_said_to_be_untimed_not_unreached():
    untimed = [{**CUNET, "seconds_per_image": {}}, {**UNET2D, "seconds_per_image": {}}]
    found = verdicts(untimed, spread=0.6, recipe_steps=RECIPE_STEPS)
    (pair,) = found["same_width"]
    assert not pair["sampling_timed"] and pair["within_spread"]["sampling_timed"] is False
    assert pair["train_time_ratio"] == pytest.approx(250 / 900)  # training times do not wait for the timing
    text = "\n".join(verdict_lines(found))
    assert "Sampling time per image at that FID: not timed yet (" in text and "sampling not timed yet." in text
    assert "not reached" not in text and "sampling time not timed yet)" in text
    assert verdicts([CUNET, UNET2D], 0.6, RECIPE_STEPS)["same_width"][0]["sampling_timed"]
