"""Both networks trained to convergence on Fashion-MNIST, in the background, across sessions.

A queue of training runs (EDM, class-conditional with a learned null class, batch 64, AdamW at a constant learning
rate after warm-up, so a run can be extended past its planned steps without retraining) lives in a runs folder
outside the work tree. Each run is trained in stages of `score_every` steps; after each stage its newest checkpoint's
EMA weights are sampled and scored by the committed judge (`evaluation.fashion_judge`) and the point is appended to
`<runs>/points.jsonl`. Within a group the run with the fewest steps goes next, so every run of a group advances
together; a group starts when the one before it is done. Once a seed pair has finished, the seed spread judges each
finished run: an unconverged one is extended by itself (`extend_unconverged`; extended runs train before any other,
the one with the least training time left first), and the end-of-run measurements, the side-by-side timing and the
step-aware study wait until a run is settled (converged, or at its step cap).

    make convergence                                  # = python -m benchmarks.convergence --background: start or
                                                      # resume the queue in the background (idempotent)
    python -m benchmarks.convergence                  # the same in the foreground
    python -m benchmarks.convergence --status         # each run's step, latest scores, hours left
    python -m benchmarks.convergence --extend cunet-x1 16000   # train a run further than planned
    python -m benchmarks.convergence --publish        # only collect: benchmarks/results/convergence.json (+ .png)
    python -m benchmarks.convergence --mode tiny      # seconds: the smoke test

The runs folder: `--runs`, else `$DIFFUSERS_CUNET_RUNS`, else `~/.cache/diffusers-cunet/runs`; each mode has its
own `convergence-<mode>/` in it. A relaunch resumes every unfinished run from its newest checkpoint (exactly: the
trainer's resume), never trains a finished run again, and scores only checkpoints not scored yet; a second launch
while one is running exits at once (a lock file). `--background` runs a snapshot of the committed code
(`git archive HEAD` into `<runs>/code/`), so editing the work tree never changes a queue that is running; its output
goes to `<runs>/queue.log`.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from training.plotting import pyplot

from . import paths
from .convergence_verdicts import sampling_curve, sweep_fids, timed_sweep, verdict_lines, verdicts
from .fashion import EULER1
from .fashion import RESULTS_FILE as FASHION_RESULTS_FILE
from .guidance import GUIDED
from .quality import Variant

RESULTS_FILE = "convergence.json"
PLOT_FILE = "convergence.png"
RUNS_VARIABLE = "DIFFUSERS_CUNET_RUNS"
DEFAULT_RUNS = Path("~/.cache/diffusers-cunet/runs")
POINTS_FILE = "points.jsonl"  # one scored checkpoint a line, appended
EXTENSIONS_FILE = "extensions.json"  # steps a run was extended to, by name
LOCK_FILE = "queue.lock"
RESTORED_FILE = "restored.json"  # where a new runs folder's points came from (the published results), and the params
TIMING_FILE = "timing.json"  # sampling seconds per image of the finished models, measured side by side
STEP_AWARE_FILE = "step_aware.json"  # block skipping, feature reuse on the finished x1 cUNet (benchmarks.step_aware)
STEP_AWARE_PLOT = "convergence_step_aware.png"
STUDIED = ("cunet-x1", "cunet-x0.5")  # the step-aware study's subject and the narrower cUNet beside it
LOG_FILE = "queue.log"
CODE_FOLDER = "code"  # the committed code a background queue runs


@dataclass
class ConvergenceRun(Variant):
    """A training run of the queue: its planned steps and its group (a group starts when the one before is done)."""

    steps: int = 12_000
    group: int = 0
    full_protocol: bool = False  # also scored on 10,000 samples at the end
    final_measurements: bool = True  # guided scales and sampler-step sweep on the last checkpoint

    @property
    def objective(self) -> str:
        """`edm`, or `edm-fdm m=<multiplier>`: runs compared for the seed spread share it."""
        options = self.train_options()
        if options.get("preconditioning") == "edm-fdm":
            return f"edm-fdm m={options.get('fdm_momentum', 1.0):g}"
        return options.get("preconditioning", "none")


@dataclass
class ConvergenceSettings:
    batch_size: int = 64
    learning_rate: float = 1e-3
    warmup_steps: int = 500
    score_every: int = 2000
    # a checkpoint this often between scores (unscored): a session that ends mid-stage loses at most this many steps
    checkpoint_every: int = 500
    samples: int = 2000  # generated images scored at each point, labels uniform over the classes, guidance scale 1
    sampling_steps: int = 20  # EDM DPM-Solver++, the recipe's sampler
    sample_batch: int = 250
    held_out: int = 256  # test images of the held-out denoising error
    test_images: int = 10_000  # real images FID/KID are measured against
    max_train_samples: int | None = None
    grid_images: int = 20  # the exported sample grid of each stage (two per class)
    seed: int = 0  # of sampling: every point of every run sees the same noise and labels
    # at the end of each run, on its last checkpoint: guided scales (the recommended one is chosen from them), the
    # recipe's sampler at other step counts, and (runs with `full_protocol`) 10,000 samples against the test images.
    # The sweep is dense below the recipe's 20 steps: the converged x1 cUNet's FID is lowest there (BENCHMARKS.md's
    # end-of-run table: 0.69 at 8 steps against 1.64 at 20, 2026-12-07), so each network is also seen near its best
    final_scales: tuple[float, ...] = (1.5, 2.0, 3.0)
    final_sweep: tuple[int, ...] = (6, 8, 10, 15, 50)
    full_samples: int = 10_000
    # sampling seconds per image of the x1 and x0.5 pairs once settled (at the recipe's steps and the sweep's), side
    # by side in one process, in batches of `timing_images`: 64, where both x1 networks sample fastest per image on 2
    # CPU cores (one forward pass at batch 16 / 64 / 250: UNet2DModel 7.5 / 6.7 / 9.0 ms an image, cUNet 3.0 / 2.7 /
    # 2.9, 2026-12-06), so neither is timed where it is slow (at 250 the ratio would favour the cUNet: 0.32 / 0.41)
    timing_images: int = 64
    timing_repeats: int = 5
    convergence_fraction: float = 0.7  # FID here within the seed spread of the final FID: converged
    # a finished run judged not converged trains on to 1.5x its steps (its seed siblings with it), at most this many
    # times its planned steps; its end-of-run measurements wait for the verdict, so none is made on a model that
    # trains on (each costs ~40 min for the x1 cUNet, ~100 min for the x1 UNet2DModel on 2 CPU cores)
    extension_cap: float = 2.0
    # block skipping and feature reuse searched on the finished x1 cUNet, against fewer sampler steps and the x0.5
    # cUNet at equal FLOPs (benchmarks.step_aware's study in this mode; ~1 h on 2 CPU cores)
    study_step_aware: bool = True

    @property
    def timing_steps(self) -> list[int]:
        """The sampler step counts the settled runs are timed at: the recipe's and the sweep's."""
        return sorted({self.sampling_steps, *self.final_sweep})


@dataclass
class Mode:
    settings: ConvergenceSettings
    runs: list[ConvergenceRun] = field(default_factory=list)

    @property
    def judges_convergence(self) -> bool:
        """Whether it trains some model with two seeds: only then is there a seed spread to judge runs by."""
        models = [run_model(run) for run in self.runs]
        return any(models.count(model) > 1 for model in models)


FDM_MULTIPLIERS = (1.0, 2.0)  # EDM-FDM's momentum multiplier m: ours so far, and FDM's own code's default


def _runs(x1: tuple[int, ...], half: tuple[int, ...], steps: int) -> list[ConvergenceRun]:
    """The queue, group by group: the x1 pair (also scored by the full protocol); the x0.5 cUNet with a second seed,
    then the x0.5 UNet2DModel with a second seed (the first seed pair gives the seed spread at ~1.5 h on the CPU
    instead of ~5.5 h, so the x1 pair is judged, and extended where it has not converged, before the slowest pair
    trains; a seed-1 run gives its FID only and skips the end-of-run measurements); then the x0.5 cUNet with EDM-FDM
    at each multiplier (FDM's loss-weight warm-up; set against the x0.5 cUNet's plain EDM run)."""
    out = [
        ConvergenceRun("cunet-x1", "cunet", x1, EULER1, GUIDED, 0, steps=steps, group=0, full_protocol=True),
        ConvergenceRun("unet2d-x1", "unet2d", x1, None, GUIDED, 0, steps=steps, group=0, full_protocol=True),
    ]
    for group, (network, block) in enumerate([("cunet", EULER1), ("unet2d", None)], start=1):
        out += [ConvergenceRun(f"{network}-x0.5{f'-seed{seed}' if seed else ''}", network, half, block, GUIDED, seed,
                               steps=steps, group=group, final_measurements=seed == 0) for seed in (0, 1)]  # fmt: skip
    for multiplier in FDM_MULTIPLIERS:
        fdm = {**GUIDED, "preconditioning": "edm-fdm", "fdm_momentum": multiplier}
        out.append(ConvergenceRun(f"cunet-x0.5-fdm-m{multiplier:g}", "cunet", half, EULER1, fdm, 0, steps=steps,
                                  group=3, final_measurements=False))  # fmt: skip
    return out


MODES = {
    "tiny": Mode(
        ConvergenceSettings(
            batch_size=4,
            warmup_steps=1,
            score_every=2,
            samples=12,
            sampling_steps=2,
            sample_batch=12,
            held_out=4,
            test_images=24,
            max_train_samples=32,
            grid_images=2,
            checkpoint_every=1,
            final_scales=(2.0,),
            final_sweep=(3,),
            full_samples=24,
            timing_images=2,
            timing_repeats=1,
            study_step_aware=False,  # benchmarks.step_aware's tiny mode tests the study itself
        ),
        _runs((16, 32), (16, 32), steps=4)[:3],  # the queue's order: a pair, then a group after it,
    ),  # fmt: skip
    # 2 CPU cores: ~11 h of training for the first four runs (issue 36's budget), ~15 h with the seed pair and the FDM
    # pair, plus their scoring and the step-aware study: spread over sessions
    "cpu": Mode(ConvergenceSettings(), _runs((32, 64, 128), (16, 32, 64), steps=12_000)),
}


def runs_folder(option: Path | None, mode: str) -> Path:
    """Where `mode`'s runs live: the option, else $DIFFUSERS_CUNET_RUNS, else ~/.cache/diffusers-cunet/runs."""
    root = option or Path(os.environ.get(RUNS_VARIABLE) or DEFAULT_RUNS)
    return root.expanduser() / f"convergence-{mode}"


def planned_steps(run: ConvergenceRun, folder: Path) -> int:
    """The run's steps: planned, or extended (`--extend`)."""
    path = folder / EXTENSIONS_FILE
    extended = json.loads(path.read_text()) if path.is_file() else {}
    return max(run.steps, extended.get(run.name, 0))


def step_cap(run: ConvergenceRun, settings: ConvergenceSettings) -> int:
    """The most steps the queue extends `run` to by itself."""
    return int(run.steps * settings.extension_cap)


def record_extension(folder: Path, name: str, steps: int) -> None:
    """Write that run `name` trains to `steps` (atomically: a kill leaves the old file or the new one)."""
    from diffusers_cunet.atomic_write import replace_text

    path = folder / EXTENSIONS_FILE
    extended = json.loads(path.read_text()) if path.is_file() else {}
    folder.mkdir(parents=True, exist_ok=True)
    replace_text(path, json.dumps({**extended, name: steps}, indent=2))


def steps_done(folder: Path, run: ConvergenceRun) -> int:
    """The step of the run's newest complete checkpoint (0 before the first)."""
    from training.checkpointing import checkpoint_step, list_checkpoints

    kept = list_checkpoints(folder / run.name)
    return checkpoint_step(kept[-1]) if kept else 0


def read_points(folder: Path) -> list[dict[str, Any]]:
    """The scored points so far, in the order they were scored, the latest of each `point_key` (a line cut short by a
    kill is passed over)."""
    path = folder / POINTS_FILE
    if not path.is_file():
        return []
    latest: dict[tuple, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        try:
            point = json.loads(line)
        except json.JSONDecodeError:
            continue  # the last line of a process killed while appending
        latest.pop(point_key(point), None)  # a point measured again (a retrained run's) replaces the earlier one
        latest[point_key(point)] = point
    return list(latest.values())


def append_point(folder: Path, point: dict[str, Any]) -> None:
    """One scored point, appended as a line and forced to disk (a kill leaves at most a cut last line)."""
    path = folder / POINTS_FILE
    text = path.read_text() if path.is_file() else ""
    with path.open("a") as file:
        if text and not text.endswith("\n"):
            file.write("\n")  # after a cut line, start a fresh one
        file.write(json.dumps(point) + "\n")
        file.flush()
        os.fsync(file.fileno())


def point_key(point: dict[str, Any]) -> tuple:
    """What a point measured: the run, step, kind (`checkpoint`, `guided`, `sweep` or `full`) and sampling setting."""
    return (point["run"], point["step"], point.get("kind", "checkpoint"), point.get("guidance_scale", 1.0),
            point.get("sampling_steps"), point.get("samples"))  # fmt: skip


def restore_published(mode_name: str, folder: Path, results_file: Path) -> int:
    """A runs folder with no points yet (a new machine: checkpoints are never committed) takes up the results published
    for `mode_name` in `results_file`: every point (the regular ones marked `restored`), the extensions, the timing
    and the step-aware study, and each run's parameter count (`restored.json`). Runs whose weights are still needed
    retrain from step 0, and each restored point they pass is checked against the retrained run
    (`score_new_checkpoints`). Nothing is restored from results of another mode or scoring protocol. Returns the
    number of points restored."""
    from diffusers_cunet.atomic_write import replace_text

    if read_points(folder) or not results_file.is_file():
        return 0
    published = json.loads(results_file.read_text())
    settings = MODES[mode_name].settings
    if published.get("mode") != mode_name or published.get("settings") != json.loads(json.dumps(asdict(settings))):
        print(f"{results_file} holds results of another mode or protocol: nothing restored", flush=True)
        return 0
    plain = {"kind": "checkpoint", "guidance_scale": 1.0, "sampling_steps": settings.sampling_steps,
             "samples": settings.samples}  # fmt: skip
    points = []
    for row in published["runs"]:
        points += [{"run": row["name"], **plain, **point, "restored": True} for point in row["points"]]
        points += [*row["guided"], *row["sweep"], *([row["final"]] if row["final"] else [])]
        if row["planned_steps"] > row["first_planned_steps"]:
            record_extension(folder, row["name"], row["planned_steps"])
    for name, data in ((TIMING_FILE, published.get("timing")), (STEP_AWARE_FILE, published.get("step_aware"))):
        if data:
            replace_text(folder / name, json.dumps(data, indent=2))
    params = {row["name"]: row["params"] for row in published["runs"]}
    record = {"from": str(results_file), "published": published["date"], "params": params}
    replace_text(folder / RESTORED_FILE, json.dumps(record, indent=2))
    replace_text(folder / POINTS_FILE, "".join(json.dumps(point) + "\n" for point in points))
    print(f"new runs folder: {len(points)} points of {len(published['runs'])} runs restored from {results_file} "
          f"(published {published['date']}); runs whose weights are needed retrain from step 0, "
          "each restored point checked against the retrained run's held-out error", flush=True)  # fmt: skip
    return len(points)


def recorded_steps(run: ConvergenceRun, points: list[dict[str, Any]]) -> int:
    """The last step of `run` with a regular point (scored here, or restored from the published results)."""
    return max((p["step"] for p in points if p["run"] == run.name and p.get("kind", "checkpoint") == "checkpoint"),
               default=0)  # fmt: skip


def read_timing(folder: Path) -> dict[str, Any] | None:
    """`timing.json`: the settled runs' sampling seconds per image and the step each was timed at (None before any)."""
    path = folder / TIMING_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def read_study(folder: Path) -> dict[str, Any] | None:
    """`step_aware.json`: the step-aware study's searches, rows and verdicts (None before it starts)."""
    path = folder / STEP_AWARE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def timing_partners(run: ConvergenceRun, mode: Mode) -> list[ConvergenceRun]:
    """The runs `run`'s sampling time is set against: the other network's, of its width, measured at their end."""
    return [other for other in mode.runs if other.final_measurements and other.model_type != run.model_type
            and run_model(other)[1] == run_model(run)[1]]  # fmt: skip


def timing_due(run: ConvergenceRun, mode: Mode, folder: Path) -> bool:
    """Whether `run` is to be timed again: it, or a run it is set against, has no timing at its planned steps (a
    pair's two runs are timed in one process, so both are needed)."""
    if not run.final_measurements:
        return False
    timed = (read_timing(folder) or {}).get("steps", {})
    return any(timed.get(other.name) != planned_steps(other, folder) for other in [run, *timing_partners(run, mode)])


def step_aware_done(name: str, folder: Path) -> bool:
    """Whether the step-aware study holds `name`'s rows: the subject's (its verdicts written), the narrower cUNet's."""
    study = read_study(folder) or {}
    return "verdicts" in study and (name != STUDIED[1] or narrow_scored(study, name))


def weights_needed(run: ConvergenceRun, mode: Mode, folder: Path, points: list[dict[str, Any]]) -> bool:
    """Whether anything still ahead loads `run`'s final weights: an end-of-run measurement not made, the side-by-side
    timing, the step-aware study. A run finished on record (a new machine) retrains only where one does."""
    total, done = planned_steps(run, folder), {point_key(point) for point in points}
    measuring = any(point_key({"run": run.name, "step": total, **task}) not in done
                    for task in final_tasks(run, mode.settings))  # fmt: skip
    studying = mode.settings.study_step_aware and run.name in STUDIED and not step_aware_done(run.name, folder)
    return measuring or timing_due(run, mode, folder) or studying


def trains_again(run: ConvergenceRun, folder: Path, points: list[dict[str, Any]], mode: Mode) -> bool:
    """Whether `run` has training ahead: short of its planned steps, unless it finished on record (its points
    restored on a new machine) and nothing loads its weights."""
    planned = planned_steps(run, folder)
    if steps_done(folder, run) >= planned:
        return False
    return recorded_steps(run, points) < planned or weights_needed(run, mode, folder, points)


def final_tasks(run: ConvergenceRun, settings: ConvergenceSettings) -> list[dict[str, Any]]:
    """What is measured on a run's last checkpoint beyond its regular point: each a `kind` and its setting."""
    if not run.final_measurements:
        return []
    tasks = [{"kind": "guided", "guidance_scale": scale, "sampling_steps": settings.sampling_steps,
              "samples": settings.samples} for scale in settings.final_scales]  # fmt: skip
    tasks += [{"kind": "sweep", "guidance_scale": 1.0, "sampling_steps": steps, "samples": settings.samples}
              for steps in settings.final_sweep]  # fmt: skip
    if run.full_protocol:
        tasks.append({"kind": "full", "guidance_scale": 1.0, "sampling_steps": settings.sampling_steps,
                      "samples": settings.full_samples})  # fmt: skip
    return tasks


def scoring_cost(task: dict[str, Any], settings: ConvergenceSettings) -> float:
    """A measurement's cost in regular points (2,000 samples, the recipe's steps, scale 1): sampling dominates, so
    it grows with the samples and sampler steps, and doubles under guidance (one call of twice the batch)."""
    guided = 2.0 if task["guidance_scale"] != 1 else 1.0
    return task["samples"] / settings.samples * task["sampling_steps"] / settings.sampling_steps * guided


def regular_point_seconds(points: list[dict[str, Any]], settings: ConvergenceSettings) -> dict[str, float]:
    """Each run's scoring seconds per regular point (each timed point's seconds over its `scoring_cost`), by name: the
    least over its points, as timeit keeps the fastest repeat: the work is the same, and a point scored while
    other work shared the two cores (a test run, a release's own measurements) took up to 12x longer. A run with no
    timed point: its sampling seconds per image times the samples."""
    found: dict[str, float] = {}
    sampling: dict[str, list[float]] = {}
    for point in points:
        if point.get("scoring_seconds"):
            seconds = point["scoring_seconds"] / scoring_cost(point, settings)
            found[point["run"]] = min(seconds, found.get(point["run"], math.inf))
        elif point.get("sampling_s_per_image") and point.get("kind", "checkpoint") == "checkpoint":
            sampling.setdefault(point["run"], []).append(point["sampling_s_per_image"])
    for run, seconds in sampling.items():  # a point restored from the results file has no scoring time: sampling is
        found.setdefault(run, min(seconds) * settings.samples)  # nearly all of it (cunet-x1: 176 s of 181)
    return found


def scoring_left(run: ConvergenceRun, folder: Path, settings: ConvergenceSettings,
                 points: list[dict[str, Any]]) -> float:  # fmt: skip
    """The scoring still ahead of `run`, in regular points: its unscored scoring steps and end-of-run measurements."""
    total = planned_steps(run, folder)
    done = {point_key(point) for point in points}
    regular = {step for step in range(settings.score_every, total + 1, settings.score_every)} | {total}
    plain = {"run": run.name, "kind": "checkpoint", "guidance_scale": 1.0, "sampling_steps": settings.sampling_steps,
             "samples": settings.samples}  # fmt: skip
    left = sum(1 for step in regular if point_key({**plain, "step": step}) not in done)
    return left + sum(scoring_cost(task, settings) for task in final_tasks(run, settings)
                      if point_key({"run": run.name, "step": total, **task}) not in done)  # fmt: skip


def next_run(mode: Mode, folder: Path) -> ConvergenceRun | None:
    """The run that trains the next stage (None when all are done). Runs extended past their first plan go first, the
    one with the least training time left first: the cheapest seed pair gives the spread every extended run is
    judged by, and each run finished sooner is judged sooner while the last one finishes when it would anyway (the
    x1 cUNet, which the release waits for, is then not held behind the x1 UNet2DModel). Otherwise the unfinished run
    with the fewest steps in the first group that has one, so a group's runs advance together. A run finished on
    record (its points restored) but whose weights were lost trains again only where they are needed, the one with
    the least training left first (what it unblocks is measured sooner): before a later group begins (the verdict of
    its own group waits on those weights, a new group's does not yet), else after all others."""
    points = read_points(folder)
    per_step = step_times(mode, folder)

    def seconds_left(run: ConvergenceRun) -> float:
        seconds, _ = pace(run, per_step, mode.runs)
        return (planned_steps(run, folder) - steps_done(folder, run)) * (seconds or math.inf)

    unfinished = [run for run in mode.runs if trains_again(run, folder, points, mode)]
    learning = [run for run in unfinished if recorded_steps(run, points) < planned_steps(run, folder)]
    if not learning:
        return min(unfinished, key=seconds_left) if unfinished else None  # only weights to recover
    extended = [run for run in learning if planned_steps(run, folder) > run.steps]
    if extended:
        return min(extended, key=seconds_left)
    group = min(run.group for run in learning)
    begun = any(recorded_steps(run, points) or steps_done(folder, run) for run in learning if run.group == group)
    recovering = [run for run in unfinished if run not in learning and run.group < group]
    if recovering and not begun:
        return min(recovering, key=seconds_left)
    return min((run for run in learning if run.group == group), key=lambda run: steps_done(folder, run))


def train_options(run: ConvergenceRun, settings: ConvergenceSettings, folder: Path, steps: int) -> dict[str, Any]:
    """The trainer's options for `run` up to `steps`: constant learning rate after warm-up (extensible), a
    checkpoint every `checkpoint_every` steps (so at every scoring step), the held-out error at the end of each
    stage."""
    return dict(
        output_dir=folder / run.name, dataset_name="fashion_mnist", image_fit="pad", model_preset="fashion-32",
        held_out_samples=settings.held_out, held_out_split="test", max_train_samples=settings.max_train_samples,
        train_batch_size=settings.batch_size, max_train_steps=steps, learning_rate=settings.learning_rate,
        lr_scheduler="constant_with_warmup", lr_warmup_steps=settings.warmup_steps,
        checkpointing_steps=settings.checkpoint_every, checkpoints_total_limit=2, validation_steps=0,
        num_validation_images=settings.grid_images, validation_inference_steps=settings.sampling_steps,
        report_to="none", logging_steps=10, resume_from_checkpoint="latest", **run.train_options(),
    )  # fmt: skip


class Scorer:
    """The judge, the test images' features and the floor, loaded once per process."""

    def __init__(self, settings: ConvergenceSettings):
        from evaluation.fashion_judge import load_judge
        from evaluation.fashion_scores import sample_scores, test_image_features
        from training.fashion_mnist import split_tensors

        self.settings = settings
        self.judge = load_judge()
        self.test_features = test_image_features(settings.test_images)
        train_images = split_tensors("train")[0][: settings.samples]
        self.floor = sample_scores(self.judge, None, train_images, real_features=self.test_features)

    def score(self, unet, noise_config: dict[str, Any], guidance_scale: float = 1.0,
              samples: int | None = None, sampling_steps: int | None = None) -> dict[str, Any]:  # fmt: skip
        """Every judge score of samples drawn with uniform labels at `guidance_scale`, the class accuracy and the
        sampling seconds per image."""
        from diffusers_cunet.pipelines import ContinuousUNetPipeline
        from evaluation.fashion_scores import class_conditional_scores

        from .fashion import sampler

        settings = self.settings
        count, steps = samples or settings.samples, sampling_steps or settings.sampling_steps
        pipeline = ContinuousUNetPipeline(unet=unet.eval(), scheduler=sampler(noise_config, steps))
        return class_conditional_scores(pipeline, self.judge, self.test_features, count, steps, settings.seed,
                                        settings.sample_batch, guidance_scale)  # fmt: skip


def held_out_at(output: Path, step: int) -> float | None:
    """The held-out denoising error the trainer measured at `step` (the exported metrics of the stage it ended)."""
    path = output / "metrics.json"
    if not path.is_file():
        return None
    return next((entry["mean"] for entry in json.loads(path.read_text()).get("held_out_error", [])
                 if entry["step"] == step), None)  # fmt: skip


def score_final_tasks(run: ConvergenceRun, folder: Path, scorer: Scorer, step: int) -> None:
    """The end-of-run measurements (`final_tasks`) of `run`'s checkpoint at `step` not made yet, each appended."""
    from training.checkpointing import list_checkpoints

    from .common import load_ema

    done = {point_key(point) for point in read_points(folder)}
    todo = [task for task in final_tasks(run, scorer.settings)
            if point_key({"run": run.name, "step": step, **task}) not in done]  # fmt: skip
    if not todo:
        return
    output = folder / run.name
    checkpoint = next((path for path in list_checkpoints(output) if path.name == f"checkpoint-{step}"), None)
    if checkpoint is None:
        return  # lost with a machine: measured once the run has retrained to `step`
    unet = load_ema(checkpoint, run.model_type)
    noise_config = json.loads((output / "scheduler" / "scheduler_config.json").read_text())
    for task in todo:
        started = time.perf_counter()
        scores = scorer.score(unet, noise_config, task["guidance_scale"], task["samples"], task["sampling_steps"])
        point = {"run": run.name, "step": step, **scores, "kind": task["kind"],
                 "scoring_seconds": time.perf_counter() - started}  # fmt: skip
        append_point(folder, point)
        print(f"{run.name} step {step} {task['kind']} (scale {task['guidance_scale']:g}, {task['sampling_steps']} "
              f"steps, {task['samples']} samples): FID {point['fid']:.2f}, class accuracy "
              f"{point['class_accuracy']:.3f}", flush=True)  # fmt: skip


def time_finished_runs(mode: Mode, folder: Path) -> None:
    """Sampling seconds per image of the settled runs measured at their end (the x1 and x0.5 pairs), side by side in
    one process (each step count, each repeat, every model in turn; the median kept), written to `timing.json`: once
    both networks have a settled run, and again, all of them in one process, each time another settles (so a pair's
    verdict need not wait for the other width, and the final times are still of one process). A run whose weights
    were lost with a machine and are not needed again (`timing_due`: its pair was timed at its last step) keeps its
    earlier times: a pair's two runs are always timed in one process, the two pairs then in two."""
    from diffusers_cunet.pipelines import ContinuousUNetPipeline
    from training.checkpointing import list_checkpoints

    from .common import load_ema
    from .fashion import sampler

    rows, spread = judgements(mode, folder)
    # a run still training, or retraining lost weights, is timed (with all the others again) once settled
    runs = [
        run
        for run in mode.runs
        if run.final_measurements and finished_with_weights(run, rows[run.name], spread, mode, folder)
    ]
    if len({run.model_type for run in runs}) < 2:
        return  # no ratio without both networks
    steps = {run.name: steps_done(folder, run) for run in runs}
    earlier = read_timing(folder) or {"steps": {}, "seconds_per_image": {}}
    if steps.items() <= earlier["steps"].items():
        return  # each timed at this step already (restored ones too, while their lost weights are retrained)
    settings = mode.settings
    pipelines = {}
    for run in runs:
        output = folder / run.name
        unet = load_ema(list_checkpoints(output)[-1], run.model_type).eval()
        noise_config = json.loads((output / "scheduler" / "scheduler_config.json").read_text())
        pipelines[run.name] = ContinuousUNetPipeline(unet=unet, scheduler=sampler(noise_config, 0))
        pipelines[run.name].set_progress_bar_config(disable=True)
    from evaluation.fashion_scores import balanced_labels

    labels = balanced_labels(settings.timing_images)
    seconds: dict[str, dict[str, list[float]]] = {name: {} for name in pipelines}
    for sampling_steps in settings.timing_steps:
        for _ in range(settings.timing_repeats):
            for name, pipeline in pipelines.items():
                started = time.perf_counter()
                pipeline(batch_size=len(labels), class_labels=labels, num_inference_steps=sampling_steps,
                         generator=torch.Generator().manual_seed(settings.seed), output_type="pt")  # fmt: skip
                per_image = (time.perf_counter() - started) / len(labels)
                seconds[name].setdefault(str(sampling_steps), []).append(per_image)
    medians = {name: {steps_: sorted(values)[len(values) // 2] for steps_, values in by_steps.items()}
               for name, by_steps in seconds.items()}  # fmt: skip
    kept = [name for name in earlier["steps"] if name not in steps]
    steps = {**{name: earlier["steps"][name] for name in kept}, **steps}
    medians = {**{name: earlier["seconds_per_image"][name] for name in kept}, **medians}
    result = {"steps": steps, "seconds_per_image": medians, "batch": settings.timing_images,
              "repeats": settings.timing_repeats, "threads": torch.get_num_threads()}  # fmt: skip
    from diffusers_cunet.atomic_write import replace_text

    replace_text(folder / TIMING_FILE, json.dumps(result, indent=2))
    print(f"sampling seconds per image, side by side: {json.dumps(medians)}", flush=True)


def finished_with_weights(run: ConvergenceRun, row: dict[str, Any], spread: float | None, mode: Mode,
                          folder: Path) -> bool:  # fmt: skip
    """Whether `run` has settled and its checkpoint of the last scored step is here (not lost with a machine, or
    retrained since): the models the timing and the step-aware study load."""
    return settled(run, row, spread, mode) and steps_done(folder, run) >= row["steps"]


def narrow_scored(study: dict[str, Any], narrow: str) -> bool:
    """Whether the step-aware study holds its row of the narrower cUNet."""
    return any(row["label"] == f"{narrow} default" for row in study.get("rows", []))


def study_step_aware(mode_name: str, folder: Path) -> None:
    """Issue 36's item 6b, once the x1 cUNet has finished: block skipping searched on it and scored with feature reuse
    and fewer sampler steps beside it (`benchmarks.step_aware.study`, resumable: every scored setting is kept in
    `step_aware.json`); the x0.5 cUNet joins as soon as its weights are here too (it settled long before, but a new
    machine retrains its weights after every run that still learns: the x1 study does not wait ~10 h for it). Once the
    x1 cUNet's rows are kept, its lost weights are not retrained for the x0.5 cUNet's row."""
    from training.loop import exported, train
    from training.options import make_config

    from . import step_aware

    mode = MODES[mode_name]
    runs = {run.name: run for run in mode.runs if run.name in STUDIED}
    if not mode.settings.study_step_aware or set(runs) != set(STUDIED):
        return
    subject, narrow = STUDIED
    rows, spread = judgements(mode, folder)
    ready = [name for name in STUDIED if finished_with_weights(runs[name], rows[name], spread, mode, folder)]
    studied = step_aware_done(subject, folder)
    if not studied and subject not in ready:
        return  # the x1 cUNet is still training, or retraining its lost weights (its rows not kept)
    if studied and (narrow not in ready or step_aware_done(narrow, folder)):
        return  # nothing left to score until the x0.5 cUNet's weights are here
    for name in ready:  # the pipeline folder holds the last step's export (a kill may have come between)
        steps = planned_steps(runs[name], folder)
        if not exported(folder / name, steps):
            train(make_config(**train_options(runs[name], mode.settings, folder, steps)))
    subjects = step_aware.Subjects({name: folder / name for name in ready}, subject, None, narrow)
    beside = f" (beside {narrow})" if narrow in ready else f" ({narrow} joins once its weights are retrained)"
    print(f"\n=== step-aware study of {subject}{beside} ===", flush=True)
    step_aware.study(
        mode_name, subjects, mode.settings.sampling_steps, mode.settings.test_images, folder / STEP_AWARE_FILE
    )


def scored_step(step: int, run: ConvergenceRun, folder: Path, settings: ConvergenceSettings) -> bool:
    """Whether a checkpoint at `step` is one the queue scores: every `score_every` steps and the run's last (the
    checkpoints between, and those a preemption signal saves, only keep the progress)."""
    return step % settings.score_every == 0 or step == planned_steps(run, folder)


def reproduced(published: dict[str, Any], held_out_error: float | None) -> bool:
    """Whether a retrained checkpoint is the one a published point scored: the same held-out denoising error (the
    same weights give the same error on the same seeded noise; a run that diverged in any bit moves it)."""
    expected = published.get("held_out_error")
    return None not in (expected, held_out_error) and math.isclose(expected, held_out_error, rel_tol=1e-9)


def score_new_checkpoints(run: ConvergenceRun, folder: Path, scorer: Scorer) -> None:
    """Score every scoring-step checkpoint of `run` that has no point yet, or only a restored one that the retrained
    checkpoint does not reproduce, oldest first, appending each point."""
    from training.checkpointing import checkpoint_step, list_checkpoints, read_run_record

    from .common import load_ema

    scored = {point["step"]: point for point in read_points(folder)
              if point["run"] == run.name and point.get("kind", "checkpoint") == "checkpoint"}  # fmt: skip
    output = folder / run.name
    noise_config = json.loads((output / "scheduler" / "scheduler_config.json").read_text())
    for checkpoint in list_checkpoints(output):
        step = checkpoint_step(checkpoint)
        known = scored.get(step)
        if known and not known.get("restored") or not scored_step(step, run, folder, scorer.settings):
            continue
        held_out = held_out_at(output, step)
        if known and reproduced(known, held_out):
            append_point(folder, {**{k: v for k, v in known.items() if k != "restored"}, "reproduced": True})
            print(f"{run.name} step {step}: retrained to the published held-out error {known['held_out_error']!r}: "
                  f"its published point (FID {known['fid']:.2f}) stands", flush=True)  # fmt: skip
            continue
        if known:
            print(
                f"{run.name} step {step}: the retrained run differs from the published one (held-out error "
                f"{held_out!r} against {known.get('held_out_error')!r}): scored anew",
                flush=True,
            )
        started = time.perf_counter()
        unet = load_ema(checkpoint, run.model_type)
        record = read_run_record(checkpoint)
        point = {"run": run.name, "step": step, "kind": "checkpoint", "train_seconds": record["train_time"],
                 "held_out_error": held_out, **scorer.score(unet, noise_config)}  # fmt: skip
        point["scoring_seconds"] = time.perf_counter() - started
        append_point(folder, point)
        print(f"{run.name} step {step}: FID {point['fid']:.2f} (floor {scorer.floor['fid']:.2f}), class accuracy "
              f"{point['class_accuracy']:.3f}, scored in {point['scoring_seconds']:.0f} s", flush=True)  # fmt: skip


def queue_is_running(folder: Path) -> bool:
    """Whether another process holds the queue's lock."""
    with queue_lock(folder) as held:
        return not held


def launch_in_background(mode_name: str, folder: Path) -> int | None:
    """Start the queue as a detached process running a snapshot of the committed code (the work tree where it is
    no git checkout); returns its process id (None when a queue is already running)."""
    import shutil
    import subprocess

    if queue_is_running(folder):
        return None
    code = paths.ROOT
    if (paths.ROOT / ".git").exists():
        code = folder / CODE_FOLDER
        shutil.rmtree(code, ignore_errors=True)
        code.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(paths.ROOT), "archive", "HEAD"], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(code)], input=archive.stdout, check=True)
    command = [sys.executable, "-m", "benchmarks.convergence", "--mode", mode_name, "--runs", str(folder.parent)]
    with (folder / LOG_FILE).open("a") as log:
        process = subprocess.Popen(command, cwd=code, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)  # fmt: skip
    return process.pid


@contextmanager
def queue_lock(folder: Path) -> Iterator[bool]:
    """Whether this process holds the queue (False: another launch is running it)."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / LOCK_FILE).open("a+") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        file.seek(0)
        file.truncate()
        file.write(str(os.getpid()))
        file.flush()
        yield True


def work(mode_name: str, folder: Path) -> None:
    """Train and score until every run of the queue is done (a relaunch resumes where a stopped one was)."""
    from training.loop import train
    from training.options import make_config

    mode = MODES[mode_name]
    restore_published(mode_name, folder, paths.PUBLISHED_RESULTS / RESULTS_FILE)
    scorer = None
    while True:
        for run in mode.runs:  # scores missed by a process stopped between a stage and its scoring
            if (folder / run.name / "scheduler").is_dir():
                scorer = scorer or Scorer(mode.settings)
                score_new_checkpoints(run, folder, scorer)
        extend_unconverged(mode_name, folder)
        rows, spread = judgements(mode, folder)
        for run in mode.runs:
            if settled(run, rows[run.name], spread, mode):
                scorer = scorer or Scorer(mode.settings)
                score_final_tasks(run, folder, scorer, rows[run.name]["steps"])
        time_finished_runs(mode, folder)
        study_step_aware(mode_name, folder)
        run = next_run(mode, folder)
        if run is None:
            print("every run of the queue is done", flush=True)
            return
        done, total = steps_done(folder, run), planned_steps(run, folder)
        target = min(total, (done // mode.settings.score_every + 1) * mode.settings.score_every)
        print(f"\n{STAGE_MARK}{run.name}: step {done} -> {target} (of {total}) ===", flush=True)
        train(make_config(**train_options(run, mode.settings, folder, target)))


def step_times(mode: Mode, folder: Path) -> dict[str, float]:
    """Each trained run's median seconds per optimizer step so far (its newest checkpoint's run record), by name; for
    a run with no checkpoint (its weights lost with a machine), that of its last restored point."""
    from training.checkpointing import list_checkpoints, read_run_record

    points = read_points(folder)
    found = {}
    for run in mode.runs:
        kept = list_checkpoints(folder / run.name)
        seconds = sorted(read_run_record(kept[-1]).get("step_seconds", []) if kept else [])
        timed = [p for p in points if p["run"] == run.name and p.get("train_seconds_median")]
        if seconds:
            found[run.name] = seconds[len(seconds) // 2]
        elif timed:
            found[run.name] = timed[-1]["train_seconds_median"] / timed[-1]["step"]
    return found


def pace(run: ConvergenceRun, own: dict[str, float], runs: list[ConvergenceRun]) -> tuple[float | None, str]:
    """`run`'s own value in `own` (seconds a step, or a point's scoring seconds, by run name), else that of the first
    run of its network and width that has one (a seed sibling, or the plain EDM run of an FDM run: one network costs
    the same per step and per point), with a note naming it; (None, "") where none has."""
    if run.name in own:
        return own[run.name], ""
    network = run_model(run)[:2]  # network and width, whatever the objective
    donor = next((other.name for other in runs if other.name in own and run_model(other)[:2] == network), None)
    return (own[donor], f" (pace of {donor})") if donor else (None, "")


STAGE_MARK = "=== "  # how the queue's log announces each training stage


def queue_state(folder: Path) -> str:
    """Whether a queue is running on `folder`, and the training stage its log announced last."""
    if not queue_is_running(folder):
        return "queue: not running (`make convergence` resumes it)"
    stage = last_stage_line(folder / LOG_FILE)
    return "queue: running" + (f"; its latest stage: {stage.strip('= ')}" if stage else "")


def last_stage_line(log: Path, window: int = 1 << 16) -> str | None:
    """The last line of the queue's log that announces a stage (None where none does), read from the end in growing
    windows: the log grows by megabytes of progress bars over the queue's life, the last stage is near its end."""
    if not log.is_file():
        return None
    with log.open("rb") as file:
        size = file.seek(0, os.SEEK_END)
        while True:
            start = max(0, size - window)
            file.seek(start)
            lines = file.read().decode(errors="replace").splitlines()[1 if start else 0 :]  # the first may be cut
            stages = [line for line in lines if line.startswith(STAGE_MARK)]
            if stages or not start:
                return stages[-1] if stages else None
            window *= 4


def status_lines(mode_name: str, folder: Path) -> list[str]:
    """Each run's step, latest scores and estimated hours left (its median seconds per step so far)."""

    mode = MODES[mode_name]
    points = read_points(folder)
    lines = [f"runs folder: {folder}", queue_state(folder)]
    rows = [judged_row(run, folder, points) for run in mode.runs]
    step_time = step_times(mode, folder)
    point_cost = regular_point_seconds(points, mode.settings)

    hours_left = scoring_hours = 0.0
    unknown_training, unknown_scoring = [], []
    for run, row in zip(mode.runs, rows):
        done, total = steps_done(folder, run), planned_steps(run, folder)
        ahead = total - done if trains_again(run, folder, points, mode) else 0
        per_step, borrowed = pace(run, step_time, mode.runs)
        left = ahead * per_step / 3600 if per_step else None
        hours_left += left or 0.0
        if per_step is None:
            unknown_training.append(run.name)
        cost, _ = pace(run, point_cost, mode.runs)
        if cost is None:
            unknown_scoring.append(run.name)
        else:
            scoring_hours += scoring_left(run, folder, mode.settings, points) * cost / 3600
        latest = row["points"][-1] if row["points"] else None
        scores = (f"FID {latest['fid']:.2f}, KID {latest['kid_mean']:.4f}, precision {latest['precision']:.3f}, "
                  f"recall {latest['recall']:.3f}, class accuracy {latest['class_accuracy']:.3f} at step "
                  f"{latest['step']}") if latest else "not scored yet"  # fmt: skip
        timing = f"{per_step:.2f} s/step{borrowed}, {left:.1f} h left" if per_step else "no step timed yet"
        if recorded_steps(run, points) > done:  # a new machine: the published points stand, the weights do not
            again = "retrains them" if ahead else "not needed again"
            timing += f" (weights lost, {again}; scored to step {recorded_steps(run, points)} before)"
        lines.append(f"{run.name:<18} step {done:>6}/{total:<6} {timing}; {scores}")
    untimed_text = f", not counting {', '.join(unknown_training)} (no run of their network and width timed yet)" if (
        unknown_training) else ""  # fmt: skip
    lines.append(f"training left (at each run's pace): {hours_left:.1f} h{untimed_text}")
    unscored_text = f", not counting {', '.join(unknown_scoring)} (no run of their network and width scored yet)" if (
        unknown_scoring) else ""  # fmt: skip
    lines.append(f"scoring left (at each run's fastest point, its end-of-run measurements included): "
                 f"{scoring_hours:.1f} h{unscored_text}")  # fmt: skip
    return lines + convergence_lines(rows, mode.settings.convergence_fraction)


POINT_FIELDS = ("step", "train_seconds", "fid", "kid_mean", "kid_std", "precision", "recall", "class_accuracy",
                "held_out_error", "sampling_s_per_image", "scoring_seconds")  # fmt: skip


def median_step_time(step_seconds: list[float], step: int) -> float | None:
    """Training seconds to `step` as the median optimizer step times the steps: robust to other work on a shared
    machine, which the wall time (`train_seconds`) is not (None where the run record has too few steps)."""
    if len(step_seconds) < step or step <= 0:
        return None
    return statistics.median(step_seconds[:step]) * step


def wall_seconds(point: dict[str, Any], step_seconds: list[float]) -> float:
    """A point's training wall time (`train_seconds`). A published point that a retrained run reproduced reads the
    retrained run's clock (its step times to there), so that the points of a run on a new machine read one clock
    as far as the retrained run has come, instead of the lost run's to one step and the new run's from the next."""
    if point.get("reproduced") and len(step_seconds) >= point["step"]:
        return math.fsum(step_seconds[: point["step"]])
    return point["train_seconds"]


def model_key(row: dict[str, Any]) -> tuple[str, str, str]:
    """What seeds of one model share: network, width and objective (of a `judged_row`)."""
    return row["network"], row["width"], row.get("objective", "edm")


def run_model(run: ConvergenceRun) -> tuple[str, str, str]:
    """`model_key` of a run."""
    return run.model_type, run.name.split("-")[1], run.objective


def seed_spread(rows: list[dict[str, Any]]) -> float | None:
    """The largest final-FID difference between two seeds of one network, width and objective (None before any
    pair)."""
    by_model: dict[tuple[str, str, str], list[float]] = {}
    for row in rows:
        if row["points"] and row["steps"] >= row["planned_steps"]:
            by_model.setdefault(model_key(row), []).append(row["points"][-1]["fid"])
    return widest_seed_gap(by_model)


def widest_seed_gap(fids_by_model: dict[tuple[str, str, str], list[float]]) -> float | None:
    """The largest FID difference between two seeds of one model (None where no model has two)."""
    gaps = [max(fids) - min(fids) for fids in fids_by_model.values() if len(fids) > 1]
    return max(gaps) if gaps else None


def converged(row: dict[str, Any], spread: float | None, fraction: float) -> bool | None:
    """FID at `fraction` of the steps within `spread` of the final FID (None while either is unknown)."""
    if spread is None or not row["points"] or row["steps"] < row["planned_steps"]:
        return None
    final = row["points"][-1]
    earlier = min(row["points"], key=lambda point: abs(point["step"] - fraction * final["step"]))
    return abs(earlier["fid"] - final["fid"]) <= spread


def seed_spread_by_step(rows: list[dict[str, Any]]) -> dict[int, float]:
    """The seed spread at every step where two seeds of one model were both scored (the largest over models): the
    threshold the criterion uses at each end a pair reaches, and how much that threshold itself moves."""
    by_step: dict[int, dict[tuple[str, str, str], list[float]]] = {}
    for row in rows:
        for point in row["points"]:
            by_step.setdefault(point["step"], {}).setdefault(model_key(row), []).append(point["fid"])
    gaps = {step: widest_seed_gap(fids_by_model) for step, fids_by_model in sorted(by_step.items())}
    return {step: gap for step, gap in gaps.items() if gap is not None}


def judgements(mode: Mode, folder: Path) -> tuple[dict[str, dict[str, Any]], float | None]:
    """Each run's `judged_row` by name, and the seed spread they give (None before a seed pair has finished)."""
    points = read_points(folder)
    rows = {run.name: judged_row(run, folder, points) for run in mode.runs}
    return rows, seed_spread(list(rows.values()))


def settled(run: ConvergenceRun, row: dict[str, Any], spread: float | None, mode: Mode) -> bool:
    """Whether `run`'s last scored step is its final one (its end-of-run measurements and the studies of it are
    made there): finished and converged, or finished at its step cap, or finished in a mode that trains no model
    twice (its convergence can never be judged)."""
    if not row["points"] or row["steps"] < row["planned_steps"]:
        return False
    if not mode.judges_convergence:
        return True
    return bool(converged(row, spread, mode.settings.convergence_fraction)) or (
        row["planned_steps"] >= step_cap(run, mode.settings)
    )


def extension_target(run: ConvergenceRun, row: dict[str, Any], settings: ConvergenceSettings) -> int:
    """The steps a finished, unconverged run trains on to: 1.5x its last, on the scoring grid, at most its cap."""
    grid = settings.score_every
    return min(step_cap(run, settings), -(-row["steps"] * 3 // 2 // grid) * grid)


def extend_unconverged(mode_name: str, folder: Path) -> list[str]:
    """Extend every finished run that the seed spread judges not converged, and its other seeds with it (so seeds
    are compared at equal steps), up to its cap; the names extended."""
    mode = MODES[mode_name]
    rows, spread = judgements(mode, folder)
    extended = []
    for run in mode.runs:
        row = rows[run.name]
        if converged(row, spread, mode.settings.convergence_fraction) is not False:
            continue
        target = extension_target(run, row, mode.settings)
        for sibling in mode.runs:
            if model_key(rows[sibling.name]) == model_key(row) and planned_steps(sibling, folder) < target:
                record_extension(folder, sibling.name, target)
                extended.append(sibling.name)
                fid = row["points"][-1]["fid"]
                print(f"{sibling.name}: {run.name} has not converged (FID {fid:.2f} at step {row['steps']}, seed "
                      f"spread {spread:.2f}): it now trains to {target} steps", flush=True)  # fmt: skip
    return extended


def recommended_point(guided: list[dict[str, Any]], plain: dict[str, Any]) -> dict[str, Any]:
    """The point (a guided one, or `plain` at scale 1) with the best class accuracy at an FID no worse than scale
    1's: the recommended guidance scale's."""
    fair = [point for point in [plain, *guided] if point["fid"] <= plain["fid"]]
    return max(fair, key=lambda point: point["class_accuracy"])


def judged_row(run: ConvergenceRun, folder: Path, points: list[dict[str, Any]]) -> dict[str, Any]:
    """What the convergence criterion reads of a run: its model (network, width, objective), seed, planned and scored
    steps, and its regular points (scale 1, the recipe's sampler), oldest first."""
    regular = sorted((p for p in points if p["run"] == run.name and p.get("kind", "checkpoint") == "checkpoint"),
                     key=lambda p: p["step"])  # fmt: skip
    network, width, objective = run_model(run)
    return {"name": run.name, "network": network, "width": width, "seed": run.seed, "objective": objective,
            "first_planned_steps": run.steps, "planned_steps": planned_steps(run, folder),
            "steps": regular[-1]["step"] if regular else steps_done(folder, run), "points": regular}  # fmt: skip


def convergence_lines(rows: list[dict[str, Any]], fraction: float) -> list[str]:
    """Each finished run's convergence by the criterion (`judged_row`s), and what to do about a run that has not
    converged."""
    spread = seed_spread(rows)
    if spread is None:
        measured = seed_spread_by_step(rows)
        last = f"; the last measured: {measured[max(measured)]:.2f} at step {max(measured)}" if measured else ""
        lines = ["convergence: not judged now (the seed spread needs both seeds of one model finished at their "
                 f"planned steps{last})"]  # fmt: skip
    else:
        lines = [f"convergence (FID at {fraction:.0%} of the steps within the seed spread "
                 f"{spread:.2f} of the final FID):"]  # fmt: skip
    for row in rows:
        verdict = converged(row, spread, fraction)
        if verdict is None and row["planned_steps"] > row["first_planned_steps"]:
            lines.append(f"  {row['name']}: extended to {row['planned_steps']} steps (first planned "
                         f"{row['first_planned_steps']}); at step {row['steps']}")  # fmt: skip
        if verdict is None:
            continue  # not finished
        final = row["points"][-1]
        if verdict:
            lines.append(f"  {row['name']}: converged (final FID {final['fid']:.2f} at step {final['step']})")
        else:
            lines.append(f"  {row['name']}: not converged (final FID {final['fid']:.2f} at step {final['step']}): "
                         f"the queue extends it up to its step cap; past that, by hand (--extend)")  # fmt: skip
    return lines


def collect(mode_name: str, folder: Path) -> dict[str, Any]:
    """The results file: per run its configuration, parameters, scored points (scale 1, the recipe's sampler), the
    end-of-run measurements and the convergence verdict; the seed spread; the side-by-side sampling times."""
    from diffusers_cunet.flops import count_parameters
    from evaluation.fashion_judge import judge_metadata
    from training.checkpointing import list_checkpoints, read_run_record

    from .common import load_ema

    mode = MODES[mode_name]
    points = read_points(folder)
    timing = read_timing(folder)
    restored_path = folder / RESTORED_FILE
    restored = json.loads(restored_path.read_text())["params"] if restored_path.is_file() else {}
    rows = []
    for run in mode.runs:
        own = [point for point in points if point["run"] == run.name]
        judged = judged_row(run, folder, own)
        regular, last = judged.pop("points"), judged["steps"]
        kept = list_checkpoints(folder / run.name)
        if not regular and not kept:
            continue  # not started
        step_seconds = read_run_record(kept[-1]).get("step_seconds", []) if kept else []
        at_end = [p for p in own if p["step"] == last and p.get("kind") in ("guided", "sweep", "full")]
        guided = sorted((p for p in at_end if p["kind"] == "guided"), key=lambda p: p["guidance_scale"])
        row = {
            **judged, "block_out_channels": list(run.block_out_channels),
            "params": count_parameters(load_ema(kept[-1], run.model_type)) if kept else restored.get(run.name),
            "points": [{**{key: p.get(key) for key in POINT_FIELDS}, "train_seconds": wall_seconds(p, step_seconds),
                        "train_seconds_median": median_step_time(step_seconds, p["step"])
                        or p.get("train_seconds_median")} for p in regular],
            "guided": guided, "sweep": [p for p in at_end if p["kind"] == "sweep"],
            "final": next((p for p in at_end if p["kind"] == "full"), None),
            "recommended_guidance_scale": recommended_point(guided, regular[-1])["guidance_scale"] if guided else None,
            "seconds_per_image": (timing or {}).get("seconds_per_image", {}).get(run.name),
        }  # fmt: skip
        rows.append(row)
    spread = seed_spread(rows)
    by_name = {run.name: run for run in mode.runs}
    for row in rows:
        row["converged"] = converged(row, spread, mode.settings.convergence_fraction)
        row["settled"] = settled(by_name[row["name"]], row, spread, mode)  # only a settled run enters a verdict
    study = read_study(folder)
    return {"mode": mode_name, "settings": asdict(mode.settings), "runs": rows, "seed_spread_fid": spread,
            "seed_spread_by_step": seed_spread_by_step(rows),
            "verdicts": verdicts(rows, spread, mode.settings.sampling_steps), "step_aware": study,
            "timing": timing, "judge": judge_metadata(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d")}  # fmt: skip


def plot(results: dict[str, Any], path: Path) -> Path:
    """Save `figure` (the metric's floor read from the results folder `path` is in) to `path`."""
    plt = pyplot()
    fig = figure(results, metric_floor(path.parent))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plain_log_ticks(axis: Any) -> None:
    """Ticks of a log axis at 1, 2 and 5 times the powers of ten, written as plain numbers (0.5, not 5 x 10^-1)."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FormatStrFormatter("%g"))
    axis.set_minor_formatter(NullFormatter())


def figure(results: dict[str, Any], floor: dict[str, Any] | None) -> Any:
    """FID against training hours, one line per run (left), and, for the settled runs, FID against sampling
    seconds per image at the recipe's and the sweep's sampler steps (right; the times measured side by side; until
    they are in, FID against the sampler steps themselves), the floor beside."""
    fig, (left, right) = pyplot().subplots(1, 2, figsize=(10, 3.6))
    recipe_steps = results["settings"]["sampling_steps"]
    timed_in = any(sampling_curve(row, recipe_steps) for row in results["runs"] if row["points"])
    for row in (row for row in results["runs"] if row["points"]):  # started, scored at least once
        style = dict(marker="o", linestyle="-" if row["network"] == "cunet" else "--")
        (drawn,) = left.plot([(p.get("train_seconds_median") or p["train_seconds"]) / 3600 for p in row["points"]],
                             [p["fid"] for p in row["points"]],
                             label=row["name"], **style)  # fmt: skip
        style["color"] = drawn.get_color()  # each run one colour in both panels
        if timed_in:  # the sweep and the recipe's steps, each point labelled with its step count
            points = timed_sweep(row, recipe_steps)
            if points:
                right.plot([1000 * seconds for _, seconds, _ in points], [fid for _, _, fid in points],
                           label=row["name"], **style)  # fmt: skip
            for steps, seconds, fid in points:
                right.annotate(str(steps), (1000 * seconds, fid), textcoords="offset points", xytext=(0, 5),
                               ha="center", fontsize=6, color=style["color"])  # fmt: skip
        elif row.get("sweep"):
            right.plot(*zip(*sorted(sweep_fids(row, recipe_steps).items())), label=row["name"], **style)
    sampler_steps = sorted({x for line in right.lines for x in line.get_xdata()})  # before the floor's line
    for axis in (left, right):
        if floor is not None:  # how far from real images the scores are, on the same judge
            axis.axhline(floor["fid"], color="grey", linestyle=":", label=f"floor (real images): {floor['fid']:.2f}")
        axis.set_yscale("log")
        plain_log_ticks(axis.yaxis)
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
    left.set(xlabel="training hours (2 CPU cores)", ylabel="FID (judge features, 2,000 samples)",
             title="FID against training time")  # fmt: skip
    if timed_in:
        right.set_xscale("log")
        plain_log_ticks(right.xaxis)
        right.set(xlabel=f"sampling ms per image (batches of {results['settings']['timing_images']}, side by side)",
                  ylabel="FID", title="settled runs, at each sampler step count (labels)")  # fmt: skip
    else:
        right.set_xscale("log")
        right.set_xticks(sampler_steps, [f"{x:g}" for x in sampler_steps])
        right.minorticks_off()
        right.set(xlabel="sampler steps (EDM DPM-Solver++, guidance scale 1)", ylabel="FID",
                  title="settled runs (sampling times not in yet)")  # fmt: skip
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------ its section of the report
def status_text(row: dict[str, Any]) -> str:
    """`step 2,000 of 12,000` (and where the plan was extended, from what), or that the run is finished
    (`--status` estimates the hours left)."""
    first = row["first_planned_steps"]
    extended = f" (extended from {first:,})" if row["planned_steps"] > first else ""
    if row["steps"] >= row["planned_steps"]:
        return f"finished at step {row['steps']:,}{extended}"
    progress = f"step {row['steps']:,} of {row['planned_steps']:,}{extended}"
    return progress + ("" if row["points"] else ", not scored yet")


def metric_floor(folder: Path) -> dict[str, Any] | None:
    """The metric's floor, as the Fashion benchmark measured it with the same judge and protocol (real training
    images in place of samples), where its results are in `folder`."""
    fashion_file = folder / FASHION_RESULTS_FILE
    return json.loads(fashion_file.read_text())["reference_real_vs_real"] if fashion_file.is_file() else None


def floor_text(folder: Path) -> str:
    """The floor (`metric_floor`) in words, for the section's heading ("" where it is not measured)."""
    floor = metric_floor(folder)
    if floor is None:
        return ""
    return (f"; the floor ({floor['samples']:,} real training images scored the same way): FID {floor['fid']:.2f}, "
            f"precision {floor['precision']:.3f}, recall {floor['recall']:.3f}")  # fmt: skip


def report_section(results: dict[str, Any], folder: Path) -> list[str]:
    """The convergence section of BENCHMARKS.md: every scored point of every run, the verdicts where the runs are
    finished, the plot (written to `folder`)."""
    settings = results["settings"]
    lines = [
        "\n## Fashion-MNIST at convergence (the 2-core CPU queue)\n",
        f"`python -m benchmarks.convergence` ({results['date']}, torch {results['torch']}): EDM, class-conditional "
        f"with a null class (dropped with probability 0.1), batch {settings['batch_size']}, AdamW "
        f"{settings['learning_rate']:g} constant after a {settings['warmup_steps']}-step warm-up, EMA. Every "
        f"{settings['score_every']:,} steps: {settings['samples']:,} samples of the EMA weights (labels uniform, "
        f"guidance scale 1, EDM DPM-Solver++ {settings['sampling_steps']} steps) against the "
        f"{settings['test_images']:,} test images, in the judge's features (its accuracy on them: "
        f"{results['judge']['test_accuracy']:.1%}){floor_text(folder)}. Hours are training hours on 2 CPU cores: the "
        "median optimizer step times the steps (the machine was shared with other work at times, which the wall "
        "time in the JSON counts).\n",
        "| run | params | step | training h | FID | KID | precision | recall | class accuracy | held-out error |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["runs"]:
        params = f"{row['params'] / 1e6:.2f} M" if row["params"] else "-"
        for point in row["points"]:
            held_out = f"{point['held_out_error']:.4f}" if point.get("held_out_error") is not None else "-"
            hours = (point.get("train_seconds_median") or point["train_seconds"]) / 3600
            lines.append(f"| `{row['name']}` | {params} | {point['step']:,} | {hours:.2f} | "
                         f"{point['fid']:.2f} | {point['kid_mean']:.3f} | {point['precision']:.3f} | "
                         f"{point['recall']:.3f} | {point['class_accuracy']:.1%} | {held_out} |")  # fmt: skip
    lines.append("")
    for row in results["runs"]:
        extended_on = row["first_planned_steps"] < row["planned_steps"] and row["steps"] < row["planned_steps"]
        waiting = "judged at its new end" if extended_on else "not judged yet"
        verdict = {True: "converged", False: "not converged", None: waiting}[row["converged"]]
        lines.append(f"- `{row['name']}`: {status_text(row)}; {verdict}.")
    spread, fraction = results["seed_spread_fid"], results["settings"]["convergence_fraction"]
    lines.append(f"\nSeed spread of the final FID: {spread:.2f}." if spread is not None else
                 f"\nNo seed pair is finished at its planned steps now: convergence (FID at {fraction:.0%} of the "
                 f"steps within the seed spread of the final FID) is judged when one is.")  # fmt: skip
    if results["seed_spread_by_step"] and any(row["planned_steps"] > row["first_planned_steps"]
                                               for row in results["runs"]):  # fmt: skip
        measured = ", ".join(f"{int(step):,}: {value:.2f}" for step, value in results["seed_spread_by_step"].items())
        lines.append(f"Seed spread at each step both seeds were scored: {measured}. A judgement uses the spread "
                     "at the seed pair's planned end at that time; the runs that moved more than it since "
                     f"{fraction:.0%} of their steps were extended with their seeds.")  # fmt: skip
    lines += end_of_run_lines(results)
    lines += verdict_lines(results["verdicts"])
    plot(results, folder / PLOT_FILE)
    caption = "FID against training hours; settled runs: FID against sampling time (sampler steps until timed)"
    lines.append(f"\n![{caption}]({paths.shown(folder / PLOT_FILE)})\n")
    return lines + step_aware_lines(results.get("step_aware"), folder)


def end_of_run_lines(results: dict[str, Any]) -> list[str]:
    """Each settled run's end-of-run measurements (`final_tasks`) beside its last regular point: the sampler-step
    sweep, the guided scales (the recommended one marked) and the 10,000-sample protocol ([] before any)."""
    settings = results["settings"]
    measured = [row for row in results["runs"] if row["guided"] or row["sweep"] or row["final"]]
    if not measured:
        return []
    lines = [
        "\n### End-of-run measurements\n",
        "Each settled run's last checkpoint (EMA weights), labels uniform, EDM DPM-Solver++ at the steps given, "
        f"{settings['samples']:,} samples (the last row {settings['full_samples']:,}: the standard protocol) against "
        f"the {settings['test_images']:,} test images (sampling times: the verdicts', measured side by side; each "
        "measurement's own shared the CPU with other work at times).\n",
        "| run | guidance scale | sampler steps | samples | FID | KID | precision | recall | class accuracy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in measured:
        last = {**row["points"][-1], "guidance_scale": 1.0, "sampling_steps": settings["sampling_steps"],
                "samples": settings["samples"]}  # fmt: skip
        for point in [*sorted([last, *row["sweep"]], key=lambda point: point["sampling_steps"]), *row["guided"],
                      *([row["final"]] if row["final"] else [])]:  # fmt: skip
            scale = f"{point['guidance_scale']:g}"
            if point["guidance_scale"] == row["recommended_guidance_scale"] and (point in row["guided"] or (
                    point is last)):  # fmt: skip
                scale += " (recommended)"
            lines.append(f"| `{row['name']}` | {scale} | {point['sampling_steps']} | {point['samples']:,} | "
                         f"{point['fid']:.2f} | {point['kid_mean']:.3f} | {point['precision']:.3f} | "
                         f"{point['recall']:.3f} | {point['class_accuracy']:.1%} |")  # fmt: skip
    lines.append("")
    for row in measured:  # where the sampler's step count matters more than the recipe assumes
        best = min(row["sweep"], key=lambda point: point["fid"], default=None)
        last = row["points"][-1]
        if best is not None and best["fid"] < last["fid"]:
            recipe = settings["sampling_steps"]
            lines.append(f"- `{row['name']}` at scale 1: the lowest FID with {best['sampling_steps']} sampler steps "
                         f"({best['fid']:.2f}, against {last['fid']:.2f} at the recipe's {recipe}).")  # fmt: skip
    return lines


def step_aware_lines(study: dict[str, Any] | None, folder: Path) -> list[str]:
    """The step-aware study of the finished x1 cUNet (item 6b), or that it comes when the x1 cUNet is done."""
    from . import step_aware

    subject, narrow = STUDIED
    lines = ["\n### Step-aware compute on the converged x1 cUNet\n"]
    if not study or "verdicts" not in study:
        return lines + [
            f"Not run yet: it starts when `{subject}` has settled (finished and judged converged, or at its step "
            "cap; the queue runs it)."
        ]
    settings = study["settings"]
    pending = "" if narrow_scored(study, narrow) else (
        " (its row comes once the queue has retrained its weights, lost with an earlier machine)")  # fmt: skip
    lines += [
        f"`{subject}` at its last step, EDM DPM-Solver++ {settings['sampling_steps']} steps, labels balanced, "
        f"guidance scale 1: block skips searched on {settings['search_samples']} samples per schedule, then every "
        f"setting scored on {settings['final_samples']:,} samples (the default and the searched skips on two seeds), "
        f"against the honest alternatives at fewer FLOPs: fewer sampler steps and the x0.5 cUNet (`{narrow}`)"
        f"{pending}.\n",
        *step_aware.settings_table(study),
        *step_aware.search_lines(study),
    ]
    step_aware.plot(study, folder / STEP_AWARE_PLOT)
    lines.append(f"\n![FID against GFLOPs per sample]({paths.shown(folder / STEP_AWARE_PLOT)})\n")
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=sorted(MODES), default="cpu")
    parser.add_argument("--runs", type=Path, default=None, help=f"runs folder (default: ${RUNS_VARIABLE}, else "
                        f"{DEFAULT_RUNS})")  # fmt: skip
    parser.add_argument("--status", action="store_true", help="print each run's progress and exit")
    parser.add_argument("--background", action="store_true", help=f"run the queue detached (committed code; output "
                        f"to <runs>/{LOG_FILE})")  # fmt: skip
    parser.add_argument("--extend", nargs=2, metavar=("RUN", "STEPS"), help="train RUN to STEPS (more than planned)")
    paths.add_publish_option(parser)
    parser.add_argument("--results", type=Path, default=None, help="results folder (overrides --publish)")
    parser.add_argument("--report", type=Path, default=None, help="report file (overrides --publish)")
    return parser.parse_args(argv)


def extend(mode_name: str, folder: Path, name: str, steps: int) -> None:
    """Record that run `name` trains to `steps` (the queue's next launch takes it up)."""
    runs = {run.name: run for run in MODES[mode_name].runs}
    if name not in runs:
        raise SystemExit(f"No {mode_name}-mode run named {name!r}; they are {sorted(runs)}.")
    if steps <= planned_steps(runs[name], folder):
        raise SystemExit(f"{name} already trains to {planned_steps(runs[name], folder)} steps; extend it past that.")
    record_extension(folder, name, steps)
    print(f"{name} now trains to {steps} steps (relaunch the queue to go on)")


def main(argv: list[str] | None = None) -> paths.BenchmarkRun | None:
    """The command line; a `BenchmarkRun` when it collected the results (the report is then rewritten)."""
    args = parse_args(argv)
    start = time.perf_counter()
    folder = runs_folder(args.runs, args.mode)
    if args.status:
        print("\n".join(status_lines(args.mode, folder)))
        return
    if args.extend:
        extend(args.mode, folder, args.extend[0], int(args.extend[1]))
        return
    if args.background:
        pid = launch_in_background(args.mode, folder)
        if pid is None:
            print(f"the {args.mode} queue in {folder} is already running; nothing started")
        else:
            print(f"the {args.mode} queue runs in the background (process {pid}); its log: {folder / LOG_FILE}; "
                  f"progress: python -m benchmarks.convergence --status")  # fmt: skip
        return
    if args.publish or args.results:
        from diffusers_cunet.atomic_write import replace_text

        results, report_file = paths.outputs(args)
        collected = collect(args.mode, folder)
        replace_text(results / RESULTS_FILE, json.dumps(collected, indent=2))
        plot(collected, results / PLOT_FILE)
        print(f"wrote {results / RESULTS_FILE} and {results / PLOT_FILE}")
        return paths.BenchmarkRun("Convergence results", "benchmarks.convergence", args, results, report_file, start)
    with queue_lock(folder) as held:
        if not held:
            print(f"the {args.mode} queue in {folder} is already being run by another process; nothing to do")
            sys.exit(0)
        work(args.mode, folder)
    return None


if __name__ == "__main__":
    collected_run = main()
    if collected_run is not None:
        from .report import finish  # the command line: collect, then rewrite the report

        finish(collected_run)
