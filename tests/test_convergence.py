"""The convergence benchmark's queue in its tiny mode: real training on Fashion-MNIST, a real kill (SIGKILL) in the
middle and a relaunch that finishes the queue without training a finished run again or scoring a point twice; the
lock against a second launch; extending a run; --status."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, needs_data

from benchmarks import convergence
from training.checkpointing import RUN_RECORD_FILE, list_checkpoints, read_run_record
from training.export import read_run_values
from training.options import loss_weight_warmup_steps, make_config

pytestmark = needs_data
MODE = convergence.MODES["tiny"]


def points_by_run(folder, kind: str = "checkpoint") -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for point in convergence.read_points(folder):
        if point["kind"] == kind:
            found.setdefault(point["run"], []).append(point["step"])
    return found


def test_queue_survives_a_kill_and_never_repeats_work(tmp_path, capsys):
    folder = convergence.runs_folder(tmp_path, "tiny")
    command = [sys.executable, "-m", "benchmarks.convergence", "--mode", "tiny", "--runs", str(tmp_path)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not convergence.read_points(folder) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # no handler can run: what the next session finds after a stop
    process.wait()
    assert points_by_run(folder), "the first stage was scored before the kill"
    assert sum(len(steps) for steps in points_by_run(folder).values()) < 2 * len(MODE.runs), "killed part-way"

    convergence.main(["--mode", "tiny", "--runs", str(tmp_path)])  # the relaunch finishes the queue
    planned = {run.name: run.steps for run in MODE.runs}
    assert points_by_run(folder) == {name: [2, 4] for name in planned}, "each checkpoint scored once, in order"
    for run in MODE.runs:
        assert convergence.steps_done(folder, run) == run.steps
        assert read_run_values(folder / run.name)["training_steps"] == run.steps  # its pipeline exported
    finals = {(p["run"], p["kind"], p["guidance_scale"], p["sampling_steps"], p["samples"])
              for p in convergence.read_points(folder) if p["kind"] != "checkpoint"}  # fmt: skip
    settings = MODE.settings
    for run in MODE.runs:  # each end-of-run measurement once, on the last checkpoint
        assert (run.name, "guided", 2.0, settings.sampling_steps, settings.samples) in finals
        assert (run.name, "sweep", 1.0, 3, settings.samples) in finals
        assert ((run.name, "full", 1.0, settings.sampling_steps, settings.full_samples) in finals) == run.full_protocol
    assert sum(len(steps) for steps in points_by_run(folder, "guided").values()) == len(MODE.runs)
    timing = json.loads((folder / convergence.TIMING_FILE).read_text())
    assert set(timing["seconds_per_image"]) == {run.name for run in MODE.runs} and timing["threads"] >= 1
    # timed once the x1 pair had settled (its verdict need not wait for the x0.5 runs), then all again in one process
    timed = [json.loads(line.split("side by side: ")[1]) for line in capsys.readouterr().out.splitlines()
             if line.startswith("sampling seconds per image, side by side: ")]  # fmt: skip
    assert [set(found) for found in timed] == [{"cunet-x1", "unet2d-x1"}, {run.name for run in MODE.runs}]
    point = [p for p in convergence.read_points(folder) if p["kind"] == "checkpoint"][-1]
    for key in ("fid", "kid_mean", "precision", "recall", "class_accuracy", "held_out_error", "train_seconds"):
        assert point[key] is not None and point[key] == point[key], key  # present and not NaN
    assert point["guidance_scale"] == 1.0 and point["samples"] == MODE.settings.samples

    lines_before = (folder / convergence.POINTS_FILE).read_text()
    capsys.readouterr()
    convergence.main(["--mode", "tiny", "--runs", str(tmp_path)])  # a finished queue: nothing trained or scored
    assert "every run of the queue is done" in capsys.readouterr().out
    assert (folder / convergence.POINTS_FILE).read_text() == lines_before

    convergence.main(["--mode", "tiny", "--runs", str(tmp_path), "--extend", "unet2d-x1", "6"])
    convergence.main(["--mode", "tiny", "--runs", str(tmp_path)])  # only the extended run trains on, from step 4
    assert points_by_run(folder)["unet2d-x1"] == [2, 4, 6]
    assert points_by_run(folder)["cunet-x1"] == [2, 4]
    with pytest.raises(SystemExit, match="already trains to 6"):
        convergence.main(["--mode", "tiny", "--runs", str(tmp_path), "--extend", "unet2d-x1", "5"])

    capsys.readouterr()
    convergence.main(["--mode", "tiny", "--runs", str(tmp_path), "--status"])
    status = capsys.readouterr().out
    assert "unet2d-x1" in status and "6/6" in status and "FID" in status and "h left" in status
    assert "queue: not running (`make convergence` resumes it)" in status
    assert "scoring left" in status and "not counting" not in status.split("scoring left")[1]  # every run scored

    results = tmp_path / "results"
    convergence.main(["--mode", "tiny", "--runs", str(tmp_path), "--results", str(results)])
    collected = json.loads((results / convergence.RESULTS_FILE).read_text())
    row = next(row for row in collected["runs"] if row["name"] == "unet2d-x1")
    assert row["network"] == "unet2d" and row["params"] > 0 and [p["step"] for p in row["points"]] == [2, 4, 6]
    assert row["final"]["samples"] == settings.full_samples and row["final"]["step"] == 6  # measured again at 6
    assert row["recommended_guidance_scale"] in (1.0, 2.0) and row["converged"] is None  # no second seed here
    assert collected["seed_spread_fid"] is None and collected["timing"]["steps"]["unet2d-x1"] == 6
    assert (results / convergence.PLOT_FILE).stat().st_size > 10_000  # the FID-against-time plot
    assert all(p["train_seconds_median"] > 0 for p in row["points"])  # robust training time, from the run record
    section = "\n".join(convergence.report_section(collected, results))  # its part of BENCHMARKS.md
    assert "| `unet2d-x1` |" in section
    assert "`unet2d-x1`: finished at step 6 (extended from 4); not judged yet" in section
    assert f"| `unet2d-x1` | 1 | 3 | {settings.samples:,} |" in section  # the end-of-run sweep, at step 6
    assert f"| `unet2d-x1` | 1 | {settings.sampling_steps} | {settings.full_samples:,} |" in section  # the protocol
    assert section.count("(recommended)") == len(MODE.runs)  # one guidance scale marked for each run

    # a new machine: the runs folder is gone, the published results are not; the relaunch takes them up, retrains
    # the runs whose weights are needed and keeps each published point it reproduces. Published here without the x1
    # pair's timing (as if the machine went first), so the x1 pair retrains to be timed; the x0.5 cUNet, measured
    # and timed at its last step, is not retrained: its times stand beside the x1 pair's new ones
    fresh = tmp_path / "new-machine"
    published_file = tmp_path / "published" / convergence.RESULTS_FILE
    published_file.parent.mkdir()
    x1 = {"cunet-x1", "unet2d-x1"}
    untimed = {key: {name: value for name, value in by_run.items() if name not in x1}
               for key, by_run in collected["timing"].items() if key in ("steps", "seconds_per_image")}  # fmt: skip
    published_file.write_text(json.dumps({**collected, "timing": {**collected["timing"], **untimed}}))
    restored = convergence.restore_published("tiny", convergence.runs_folder(fresh, "tiny"), published_file)
    published = sum(
        len(row["points"]) + len(row["guided"]) + len(row["sweep"]) + bool(row["final"]) for row in collected["runs"]
    )
    assert restored == published == 7 + 3 * 2 + 2  # regular points; guided, sweep (each run), full (x1 pair)
    assert convergence.restore_published("tiny", convergence.runs_folder(fresh, "tiny"), published_file) == 0
    capsys.readouterr()
    convergence.main(["--mode", "tiny", "--runs", str(fresh)])
    out = capsys.readouterr().out
    assert out.count("its published point") == 5 and "scored anew" not in out  # 2 + 3 steps, none scored again
    again = fresh / "results"
    convergence.main(["--mode", "tiny", "--runs", str(fresh), "--results", str(again)])
    recollected = json.loads((again / convergence.RESULTS_FILE).read_text())
    for before, after in zip(collected["runs"], recollected["runs"]):
        assert [p["fid"] for p in after["points"]] == [p["fid"] for p in before["points"]]
        assert after["params"] == before["params"] and after["final"] == before["final"]
        kept = list_checkpoints(convergence.runs_folder(fresh, "tiny") / after["name"])
        assert bool(kept) == (after["name"] in x1), "only the runs whose weights are needed retrain"
        if kept:  # one clock: the retrained run's wall time at every point it reproduced
            retrained = read_run_record(kept[-1])["step_seconds"]
            assert [p["train_seconds"] for p in after["points"]] == [
                math.fsum(retrained[: p["step"]]) for p in after["points"]
            ]
    timing = recollected["timing"]
    assert timing["steps"] == collected["timing"]["steps"] and set(timing["seconds_per_image"]) == x1 | {"cunet-x0.5"}
    assert timing["seconds_per_image"]["cunet-x0.5"] == collected["timing"]["seconds_per_image"]["cunet-x0.5"]
    convergence.main(["--mode", "tiny", "--runs", str(fresh), "--results", str(again)])
    assert json.loads((again / convergence.RESULTS_FILE).read_text())["timing"] == timing  # measured once: it stands


def test_the_seed_spread_at_every_step_both_seeds_were_scored_is_reported():
    def row(name, seed, fids, planned=6, width="x0.5"):
        return {"name": name, "network": "cunet", "width": width, "objective": "edm", "seed": seed,
                "first_planned_steps": 4, "planned_steps": planned, "steps": max(fids),
                "points": [{"step": step, "fid": fid} for step, fid in fids.items()]}  # fmt: skip

    rows = [row("a", 0, {2: 9.0, 4: 5.0, 6: 4.0}), row("b", 1, {2: 8.0, 4: 5.5}),  # extended to 6, one still on
            row("c", 0, {2: 7.0, 4: 6.0, 6: 5.0}, width="x1")]  # no second seed: in no spread  # fmt: skip
    assert convergence.seed_spread(rows) is None
    assert convergence.seed_spread_by_step(rows) == {2: pytest.approx(1.0), 4: pytest.approx(0.5)}
    status = "\n".join(convergence.convergence_lines(rows, 0.7))
    assert "the last measured: 0.50 at step 4" in status
    assert "a: extended to 6 steps (first planned 4); at step 6" in status


def test_an_unstarted_run_borrows_the_pace_of_its_network_and_width():
    runs = convergence.MODES["cpu"].runs
    by_name = {run.name: run for run in runs}
    own = {"cunet-x1": 0.6, "cunet-x0.5": 0.2}
    assert convergence.pace(by_name["cunet-x1"], own, runs) == (0.6, "")
    assert convergence.pace(by_name["cunet-x0.5-seed1"], own, runs) == (0.2, " (pace of cunet-x0.5)")
    assert convergence.pace(by_name["cunet-x0.5-fdm-m2"], own, runs) == (0.2, " (pace of cunet-x0.5)")
    assert convergence.pace(by_name["unet2d-x0.5"], own, runs) == (None, "")  # the x1 UNet2DModel is no stand-in


def fake_checkpoint(runs: Path, name: str, step: int, seconds_per_step: float) -> None:
    """A checkpoint folder with only the run record's step times: what the queue's ordering reads of a run."""
    folder = runs / name / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / RUN_RECORD_FILE).write_text(json.dumps({"step_seconds": [seconds_per_step] * 3}))


def test_extended_runs_go_first_least_training_time_left_first(tmp_path):
    mode = convergence.MODES["cpu"]
    runs = {run.name: run for run in mode.runs}

    fake_checkpoint(tmp_path, "cunet-x1", 8000, 0.6)
    fake_checkpoint(tmp_path, "unet2d-x1", 10_000, 1.5)
    assert convergence.next_run(mode, tmp_path).name == "cunet-x1"  # first plans: the group's runs advance together
    for name, step, seconds in [("cunet-x1", 12_500, 0.6), ("unet2d-x1", 12_000, 1.5), ("cunet-x0.5", 12_000, 0.2),
                                ("cunet-x0.5-seed1", 12_000, 0.2)]:  # fmt: skip
        fake_checkpoint(tmp_path, name, step, seconds)
    assert convergence.next_run(mode, tmp_path).name == "unet2d-x0.5"  # all four done: the next group
    for name in ["cunet-x1", "unet2d-x1", "cunet-x0.5", "cunet-x0.5-seed1"]:
        convergence.record_extension(tmp_path, name, 18_000)
    assert convergence.next_run(mode, tmp_path).name == "cunet-x0.5"  # the seed pair: 6,000 steps at 0.2 s
    fake_checkpoint(tmp_path, "cunet-x0.5", 18_000, 0.2)
    fake_checkpoint(tmp_path, "cunet-x0.5-seed1", 18_000, 0.2)
    assert convergence.next_run(mode, tmp_path).name == "cunet-x1"  # 5,500 steps at 0.6 s before 6,000 at 1.5 s
    fake_checkpoint(tmp_path, "cunet-x1", 18_000, 0.6)
    assert convergence.next_run(mode, tmp_path) is runs["unet2d-x1"]


def test_lost_weights_a_verdict_waits_on_retrain_before_a_new_group_begins(tmp_path):
    """A new machine after the x1 pair finished (on record: its points; its end-of-run measurements not made, so its
    weights are needed): the pair retrains before the next group starts; once that group has begun, it trains on."""
    mode = convergence.MODES["tiny"]
    for name in ("cunet-x1", "unet2d-x1"):
        convergence.append_point(tmp_path, {"run": name, "step": 4, "kind": "checkpoint", "fid": 2.5})
    recovering = convergence.next_run(mode, tmp_path)
    assert recovering.group == 0 and convergence.steps_done(tmp_path, recovering) == 0
    fake_checkpoint(tmp_path, "cunet-x0.5", 2, 0.2)
    assert convergence.next_run(mode, tmp_path).name == "cunet-x0.5"  # begun: its group trains on first


def test_a_second_launch_leaves_a_running_queue_alone(tmp_path, capsys):
    folder = convergence.runs_folder(tmp_path, "tiny")
    with convergence.queue_lock(folder) as held:  # this test holds the queue, as a running launch would
        assert held
        with pytest.raises(SystemExit) as stopped:
            convergence.main(["--mode", "tiny", "--runs", str(tmp_path)])
        assert stopped.value.code == 0
        assert "already being run" in capsys.readouterr().out
        assert convergence.launch_in_background("tiny", folder) is None
        (folder / convergence.LOG_FILE).write_text("\n=== cunet-x1: step 2 -> 4 (of 4) ===\ntraining:  50%|\r")
        assert convergence.queue_state(folder) == "queue: running; its latest stage: cunet-x1: step 2 -> 4 (of 4)"
    assert not convergence.read_points(folder), "nothing was trained"


def test_points_file_tolerates_a_line_cut_by_a_kill(tmp_path):
    (tmp_path / convergence.POINTS_FILE).write_text('{"run": "a", "step": 2}\n{"run": "a", "st')
    convergence.append_point(tmp_path, {"run": "a", "step": 4})
    assert [point["step"] for point in convergence.read_points(tmp_path)] == [2, 4]


def test_runs_folder_option_variable_and_default(tmp_path, monkeypatch):
    monkeypatch.delenv(convergence.RUNS_VARIABLE, raising=False)
    assert convergence.runs_folder(None, "cpu") == convergence.DEFAULT_RUNS.expanduser() / "convergence-cpu"
    monkeypatch.setenv(convergence.RUNS_VARIABLE, str(tmp_path / "env"))
    assert convergence.runs_folder(None, "cpu") == tmp_path / "env" / "convergence-cpu"
    assert convergence.runs_folder(tmp_path / "opt", "cpu") == tmp_path / "opt" / "convergence-cpu"
    assert os.fspath(convergence.DEFAULT_RUNS).startswith("~"), "outside the work tree by default"


def test_cpu_queue_is_the_issue_plan():
    runs = convergence.MODES["cpu"].runs
    assert [(run.name, run.group) for run in runs] == [
        ("cunet-x1", 0), ("unet2d-x1", 0),
        ("cunet-x0.5", 1), ("cunet-x0.5-seed1", 1),  # the fastest seed pair first: the seed spread soonest
        ("unet2d-x0.5", 2), ("unet2d-x0.5-seed1", 2),
        ("cunet-x0.5-fdm-m1", 3), ("cunet-x0.5-fdm-m2", 3),
    ]  # fmt: skip
    for run in runs:
        options = convergence.train_options(run, convergence.MODES["cpu"].settings, ROOT, run.steps)
        assert options["lr_scheduler"] == "constant_with_warmup", "extensible without retraining"
        assert options["class_dropout_prob"] == 0.1 and options["train_batch_size"] == 64 and run.steps == 12_000
    measured_at_end = [run.name for run in runs if run.final_measurements]  # the seed runs give their FID only
    assert measured_at_end == ["cunet-x1", "unet2d-x1", "cunet-x0.5", "unet2d-x0.5"]
    plain, fdm = runs[:6], runs[6:]
    assert {run.objective for run in plain} == {"edm"} and [run.objective for run in fdm] == ["edm-fdm m=1",
                                                                                           "edm-fdm m=2"]  # fmt: skip
    for run in fdm:  # the x0.5 cUNet's recipe but the objective, with FDM's own warm-up (200 steps, its default)
        assert run.block_out_channels == runs[2].block_out_channels and run.group == 3
        options = convergence.train_options(run, convergence.MODES["cpu"].settings, ROOT, run.steps)
        assert make_config(**options).loss_weight_warmup_steps is None and loss_weight_warmup_steps(
            make_config(**options)) == 200  # fmt: skip


def test_the_seed_spread_pairs_seeds_of_one_objective_only():
    def row(network, width, objective, fid, seed=0):
        return {"network": network, "width": width, "objective": objective, "seed": seed, "steps": 10,
                "planned_steps": 10, "points": [{"step": 10, "fid": fid}]}  # fmt: skip

    rows = [
        row("cunet", "x0.5", "edm", 5.0),
        row("cunet", "x0.5", "edm-fdm m=1", 9.0),
        row("unet2d", "x0.5", "edm", 4.0),
    ]
    assert convergence.seed_spread(rows) is None  # no two seeds of one model yet (FDM is not a seed)
    rows += [row("cunet", "x0.5", "edm", 5.5, seed=1), row("unet2d", "x0.5", "edm", 4.2, seed=1)]
    assert convergence.seed_spread(rows) == pytest.approx(0.5)


def test_the_step_aware_study_waits_for_the_x1_cunet_and_renders_when_done(tmp_path):
    folder = convergence.runs_folder(tmp_path, "cpu")
    convergence.study_step_aware("cpu", folder)  # nothing finished: nothing run, nothing written
    assert not (folder / convergence.STEP_AWARE_FILE).exists()
    assert "Not run yet" in "\n".join(convergence.step_aware_lines(None, tmp_path))
    published = json.loads((ROOT / "benchmarks" / "results" / "step_aware.json").read_text())  # a real study's file
    text = "\n".join(convergence.step_aware_lines(published, tmp_path))
    assert "| setting | GFLOPs/sample |" in text and "Search on `" in text
    assert (tmp_path / convergence.STEP_AWARE_PLOT).stat().st_size > 1000


def test_scoring_left_counts_unscored_steps_and_end_of_run_measurements_by_their_cost(tmp_path):
    mode = convergence.MODES["cpu"]
    settings, (x1, _, _, seed1) = mode.settings, mode.runs[:4]
    # 12,000 steps scored every 2,000: 6 points; at the end 1.5 / 2 / 3 guided (2 points each: twice the batch),
    # 6, 8, 10, 15 and 50 sampler steps (0.3 + 0.4 + 0.5 + 0.75 + 2.5), and 10,000 samples (5) for the x1 pair; a seed
    # run has none of those
    sweep = 4.45
    assert convergence.scoring_left(x1, tmp_path, settings, []) == pytest.approx(6 + 6 + sweep + 5)
    assert convergence.scoring_left(seed1, tmp_path, settings, []) == 6
    scored = [{"run": "cunet-x1", "step": step, "kind": "checkpoint", "guidance_scale": 1.0, "sampling_steps": 20,
               "samples": 2000} for step in (2000, 4000)]  # fmt: skip
    scored.append({"run": "cunet-x1", "step": 12_000, "kind": "guided", "guidance_scale": 2.0, "sampling_steps": 20,
                   "samples": 2000})  # fmt: skip
    scored.append({**scored[0], "run": "unet2d-x1"})  # another run's point counts for nothing here
    assert convergence.scoring_left(x1, tmp_path, settings, scored) == pytest.approx(4 + 4 + sweep + 5)
    convergence.extend("cpu", tmp_path, "cunet-x1", 13_000)  # an extended run: a point at 12,000 and one at its end
    assert convergence.scoring_left(x1, tmp_path, settings, scored[:2]) == pytest.approx(5 + 6 + sweep + 5)


def test_scoring_seconds_per_point_are_the_least_disturbed_timing_per_unit_of_cost():
    settings = convergence.MODES["cpu"].settings
    plain = {"kind": "checkpoint", "guidance_scale": 1.0, "sampling_steps": 20, "samples": 2000}
    points = [
        {**plain, "run": "cunet-x1", "step": 16_000, "scoring_seconds": 181.0},
        {**plain, "run": "cunet-x1", "kind": "guided", "guidance_scale": 2.0, "scoring_seconds": 4715.0},  # shared CPU
        {**plain, "run": "cunet-x1", "kind": "sweep", "sampling_steps": 10, "scoring_seconds": 80.0},  # 0.5 units
        {**plain, "run": "unet2d-x1", "step": 12_000, "sampling_s_per_image": 0.2},  # restored: no scoring time
        {**plain, "run": "unet2d-x1", "step": 10_000, "sampling_s_per_image": 0.25},
    ]
    seconds = convergence.regular_point_seconds(points, settings)
    assert seconds == {"cunet-x1": pytest.approx(160.0), "unet2d-x1": pytest.approx(0.2 * 2000)}


def test_the_end_of_run_table_says_where_fewer_sampler_steps_score_better():
    settings = {"samples": 2000, "full_samples": 10_000, "test_images": 10_000, "sampling_steps": 20}
    scores = {"kid_mean": 0.02, "precision": 0.9, "recall": 0.85, "class_accuracy": 0.88}

    def point(steps: int, fid: float, scale: float = 1.0, samples: int = 2000) -> dict:
        return {"sampling_steps": steps, "fid": fid, "guidance_scale": scale, "samples": samples, **scores}

    row = {"name": "cunet-x1", "points": [{"step": 18_000, "fid": 1.64, **scores}], "recommended_guidance_scale": 1.5,
           "sweep": [point(50, 1.82), point(8, 0.69)], "guided": [point(20, 0.85, 1.5)], "final": None}  # fmt: skip
    lines = convergence.end_of_run_lines({"settings": settings, "runs": [row]})
    table = [line for line in lines if line.startswith("| `cunet-x1`")]
    assert [line.split(" | ")[2] for line in table] == ["8", "20", "50", "20"]  # the sweep in order, then guided
    assert "| 1.5 (recommended) | 20 |" in table[-1]
    said = "- `cunet-x1` at scale 1: the lowest FID with 8 sampler steps (0.69, against 1.64 at the recipe's 20)."
    assert said in lines
    row["sweep"] = [point(50, 1.82)]  # the recipe's steps are the best: nothing to say
    lines = convergence.end_of_run_lines({"settings": settings, "runs": [row]})
    assert not any(line.startswith("- ") for line in lines)


def test_status_judges_finished_runs_once_a_seed_spread_exists_and_says_how_to_extend(tmp_path):
    mode = convergence.MODES["cpu"]

    def scored(run: str, fids: dict[int, float]) -> list[dict]:
        return [{"run": run, "step": step, "kind": "checkpoint", "fid": fid} for step, fid in fids.items()]

    points = scored("cunet-x1", {8000: 4.0, 12_000: 3.0}) + scored("unet2d-x1", {8000: 3.2, 12_000: 3.0})
    points += scored("unet2d-x0.5", {12_000: 5.0}) + scored("cunet-x0.5", {8000: 6.0})  # one seed; one unfinished

    def lines_for(points: list[dict]) -> list[str]:
        rows = [convergence.judged_row(run, tmp_path, points) for run in mode.runs]
        return convergence.convergence_lines(rows, mode.settings.convergence_fraction)

    assert lines_for(points) == [
        "convergence: not judged now (the seed spread needs both seeds of one model finished at their planned steps)"
    ]
    points += scored("unet2d-x0.5-seed1", {12_000: 5.4})  # the spread: 0.4
    lines = lines_for(points)
    assert "spread 0.40" in lines[0] and len(lines) == 5  # the four finished runs, none of the unfinished one
    assert lines[1].startswith("  cunet-x1: not converged (final FID 3.00 at step 12000): the queue extends it")
    assert lines[2] == "  unet2d-x1: converged (final FID 3.00 at step 12000)"
    convergence.extend("cpu", tmp_path, "cunet-x1", 18_000)
    assert lines_for(points)[1] == "  cunet-x1: extended to 18000 steps (first planned 12000); at step 12000"
    convergence.extend("cpu", tmp_path, "unet2d-x0.5-seed1", 18_000)  # the only seed pair trains on: no spread now,
    lines = lines_for(points)  # yet the extended runs are still listed
    assert lines[0].startswith("convergence: not judged now") and len(lines) == 3
    assert lines[2] == "  unet2d-x0.5-seed1: extended to 18000 steps (first planned 12000); at step 12000"


def test_the_queue_extends_unconverged_runs_with_their_seeds_and_measures_only_settled_ones(tmp_path):
    mode = convergence.MODES["cpu"]
    runs = {run.name: run for run in mode.runs}

    def score(run: str, fids: dict[int, float]) -> None:
        for step, fid in fids.items():
            convergence.append_point(tmp_path, {"run": run, "step": step, "kind": "checkpoint", "fid": fid})

    def settled(name: str) -> bool:
        rows, spread = convergence.judgements(mode, tmp_path)
        return convergence.settled(runs[name], rows[name], spread, mode)

    score("cunet-x1", {8000: 4.0, 12_000: 3.0})  # moved 1.0 from 70% of its steps to the end
    score("unet2d-x1", {8000: 3.2, 12_000: 3.0})
    score("cunet-x0.5", {8000: 6.0, 12_000: 5.0})
    assert convergence.extend_unconverged("cpu", tmp_path) == [] and not settled("cunet-x1")  # no spread: wait
    score("unet2d-x0.5", {8000: 4.1, 12_000: 4.0})
    score("unet2d-x0.5-seed1", {8000: 4.5, 12_000: 4.4})  # the spread: 0.4
    assert sorted(convergence.extend_unconverged("cpu", tmp_path)) == ["cunet-x0.5", "cunet-x0.5-seed1", "cunet-x1"]
    planned = {name: convergence.planned_steps(run, tmp_path) for name, run in runs.items()}
    assert planned["cunet-x1"] == planned["cunet-x0.5"] == planned["cunet-x0.5-seed1"] == 18_000  # 1.5x, seeds too
    assert planned["unet2d-x1"] == planned["unet2d-x0.5"] == 12_000
    assert not settled("cunet-x1") and settled("unet2d-x1") and settled("unet2d-x0.5")  # converged: measured now
    assert convergence.extend_unconverged("cpu", tmp_path) == []  # nothing judged twice while the runs train on

    score("cunet-x1", {14_000: 2.6, 16_000: 2.0, 18_000: 1.5})  # still falling beyond the spread
    assert convergence.extend_unconverged("cpu", tmp_path) == ["cunet-x1"]
    assert convergence.planned_steps(runs["cunet-x1"], tmp_path) == 24_000  # 27,000 capped at 2x the plan
    score("cunet-x1", {20_000: 1.4, 22_000: 1.2, 24_000: 0.9})
    assert convergence.extend_unconverged("cpu", tmp_path) == [] and settled("cunet-x1")  # at its cap: measured


def test_the_published_cpu_results_restore_a_new_runs_folder(tmp_path):
    """What a new machine's relaunch does with the committed results: every published point kept, the extensions
    taken up, the next run one that still learns (the runs finished on record retrain for their weights last)."""
    mode = convergence.MODES["cpu"]
    published_file = ROOT / "benchmarks" / "results" / convergence.RESULTS_FILE
    published = json.loads(published_file.read_text())
    restored = convergence.restore_published("cpu", tmp_path, published_file)
    assert restored == sum(len(row["points"]) + len(row["guided"]) + len(row["sweep"]) + bool(row["final"])
                           for row in published["runs"])  # fmt: skip
    runs = {run.name: run for run in mode.runs}
    points = convergence.read_points(tmp_path)
    # a run published between its scoring points (its newest checkpoint past the last point) restarts from that point
    last_point = {row["name"]: max((point["step"] for point in row["points"]), default=0) for row in published["runs"]}
    for row in published["runs"]:
        assert convergence.planned_steps(runs[row["name"]], tmp_path) == row["planned_steps"]
        assert convergence.recorded_steps(runs[row["name"]], points) == last_point[row["name"]] <= row["steps"]
    learning = [run for run in mode.runs
                if convergence.recorded_steps(run, points) < convergence.planned_steps(run, tmp_path)]  # fmt: skip
    chosen = convergence.next_run(mode, tmp_path)
    assert chosen in learning if learning else convergence.weights_needed(chosen, mode, tmp_path, points)
    assert "cunet-x0.5-seed1" not in {run.name for run in learning} | {chosen.name}  # finished, its weights unneeded
    collected = convergence.collect("cpu", tmp_path)
    for before, after in zip(published["runs"], collected["runs"]):
        assert after["params"] == before["params"]
        assert [{key: p[key] for key in old} for p, old in zip(after["points"], before["points"])] == before["points"]
        assert after["guided"] == before["guided"] and after["converged"] == before["converged"]
    assert collected["seed_spread_by_step"] == {
        int(step): gap for step, gap in published["seed_spread_by_step"].items()
    }
    status = {line.split()[0]: line for line in convergence.status_lines("cpu", tmp_path)[2:] if "step" in line}
    learning_names = {run.name for run in learning}
    for row in published["runs"]:
        if not row["points"]:  # published before its first scoring point: nothing of it was kept
            assert status[row["name"]].endswith("not scored yet") and "weights lost" not in status[row["name"]]
            continue
        # still learning: retrains; the x1 pair (measured, timed side by side and studied at its last step) and a
        # seed-1 run (its FID only): not retrained for weights nothing loads again
        if row["name"] in learning_names or row["name"] in ("cunet-x1", "unet2d-x1", "cunet-x0.5-seed1"):
            again = "retrains them" if row["name"] in learning_names else "not needed again"
            assert f"(weights lost, {again}; scored to step {last_point[row['name']]} before)" in status[row["name"]]
    assert " 0.0 h left" in status["cunet-x0.5-seed1"] and " 0.0 h left" in status["cunet-x1"]


def test_the_last_stage_line_is_found_from_the_end_of_a_long_log(tmp_path):
    log = tmp_path / convergence.LOG_FILE
    assert convergence.last_stage_line(log) is None
    bars = "training:  50%|#####     | 1000/2000\r" * 3000  # ~120 kB of progress bars after each stage line
    log.write_text(f"=== a: step 0 -> 2 (of 4) ===\n{bars}\n=== a: step 2 -> 4 (of 4) ===\n{bars}\nscored\n")
    assert convergence.last_stage_line(log, window=100) == "=== a: step 2 -> 4 (of 4) ==="
    log.write_text(f"=== b: step 0 -> 2 (of 4) ===\n{bars}")  # the only stage line at the very start
    assert convergence.last_stage_line(log, window=100) == "=== b: step 0 -> 2 (of 4) ==="
    log.write_text(bars)
    assert convergence.last_stage_line(log, window=100) is None


def test_the_plot_sets_fid_against_sampling_time_or_until_timed_against_sampler_steps():
    """The right panel shows each settled run's sweep against its side-by-side sampling times; before those are in,
    against the sampler steps themselves (ticks at the steps scored), not an empty panel."""
    from dataclasses import asdict

    from training.plotting import pyplot

    def row(name, network, fid, sweep, seconds=None):
        return {"name": name, "network": network, "points": [{"step": 2, "train_seconds": 60.0, "fid": fid}],
                "sweep": [{"sampling_steps": steps, "fid": value} for steps, value in sweep],
                "seconds_per_image": seconds}  # fmt: skip

    settings = asdict(MODE.settings)
    recipe = settings["sampling_steps"]
    runs = [row("cunet-x1", "cunet", 3.0, [(1, 5.0), (10, 2.5)]), row("unet2d-x1", "unet2d", 2.0, [])]
    fig = convergence.figure({"settings": settings, "runs": runs}, {"fid": 0.2})
    right = fig.axes[1]
    assert "sampler steps" in right.get_xlabel()
    assert list(right.get_xticks()) == sorted({1, 10, recipe})  # the floor's line adds no tick
    (line,) = [line for line in right.lines if line.get_label() == "cunet-x1"]  # the unswept run is not drawn
    assert list(line.get_ydata()) == [fid for _, fid in sorted({1: 5.0, 10: 2.5, recipe: 3.0}.items())]
    pyplot().close(fig)
    runs[0]["seconds_per_image"] = {"1": 0.01, "10": 0.1, str(recipe): 0.2}
    fig = convergence.figure({"settings": settings, "runs": runs}, None)
    right = fig.axes[1]
    assert right.get_xlabel().startswith("sampling ms per image")
    (line,) = right.lines
    assert list(line.get_xdata()) == [10.0, 100.0, 200.0] and list(line.get_ydata()) == [5.0, 2.5, 3.0]
    assert [text.get_text() for text in right.texts] == ["1", "10", str(recipe)]  # each point's sampler steps
    pyplot().close(fig)
