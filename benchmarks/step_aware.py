"""Step-aware compute against today's default, on Fashion-MNIST: GFLOPs per sample against FID.

    python -m benchmarks.step_aware --mode cpu      # ~60 min on 2 CPU cores (uses benchmarks.fashion's models)

The default is what the presets ship: one Euler step per ODE block, EDM DPM-Solver++ with 20 steps. Against it:
- **block-skip schedules** (`training.skip_search`: which ODE blocks to leave out in each timestep bin), searched
  on the x1 EDM cUNet as trained and on one trained with random block skipping (`--block_skip_prob`);
- **feature reuse** (`cache_interval`, `cache_levels`: DeepCache-style, no retraining);
- **the honest baselines** at fewer FLOPs: the same model with fewer DPM-Solver++ steps, and the x0.5 cUNet.
Each is scored with the Fashion-MNIST judge (FID against the 10,000 test images), its cost counted by the FLOP
counter over a whole sampling call (per sample). The searches score fewer samples (common random numbers); every
setting in the table is scored again on `final_samples`, the default and the searched schedules on two seeds.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffusers_cunet.atomic_write import replace_text
from diffusers_cunet.pipelines import ContinuousUNetPipeline
from diffusers_cunet.step_schedule import SolverStepSchedule
from evaluation.fashion_judge import load_judge
from evaluation.fashion_scores import test_image_features
from evaluation.search_scoring import SampleEvaluator
from training.plotting import pyplot
from training.skip_search import full_schedule, search_result, skip_search

from . import fashion, paths
from .paths import shown

RESULTS_FILE = "step_aware.json"
SUBJECT, SKIP_TRAINED, NARROW = "cunet-x1-edm", "cunet-x1-edm-skip", "cunet-x0.5-edm"
FLOP_TARGET, CACHE_TARGET, FID_TOLERANCE = 0.40, 1.5, 0.05  # the targets: savings at <= 5% worse FID


@dataclass
class StepAwareSettings:
    bins: int
    search_samples: int
    final_samples: int
    fewer_steps: tuple[int, ...]
    caches: tuple[tuple[int, int], ...]  # (cache_interval, cache_levels)
    seeds: tuple[int, ...] = (0, 1)  # the subject's default and searched schedule are scored on each
    other_seeds: tuple[int, ...] = (0,)  # those of the other models
    tolerance: float = FID_TOLERANCE
    blocks: tuple[str, ...] | None = None  # the ODE blocks the search may skip (None: all)


MODES = {
    "tiny": StepAwareSettings(
        bins=2,
        search_samples=16,
        final_samples=24,
        fewer_steps=(2,),
        caches=((2, 1),),
        blocks=("mid_block", "up_blocks.0"),
    ),  # fmt: skip
    # the searches score 300 samples per schedule (common random numbers: enough to rank schedules), the table 2,000
    "cpu": StepAwareSettings(
        bins=3, search_samples=300, final_samples=2000, fewer_steps=(16, 12), caches=((2, 1), (3, 1))
    ),  # fmt: skip
}


def load(folder: Path, steps: int) -> ContinuousUNetPipeline:
    """A trained run's saved pipeline (EMA weights) with the benchmark's sampler at `steps` steps."""
    pipe = ContinuousUNetPipeline.from_pretrained(folder)
    pipe.scheduler = fashion.sampler(dict(pipe.scheduler.config), steps)
    return pipe


def schedule_from(entry: dict[str, Any], start: SolverStepSchedule) -> SolverStepSchedule:
    """The schedule of a saved trial: `start` with the trial's skipped blocks per bin."""
    schedule = start
    for index, blocks in enumerate(entry["skip_per_bin"]):
        schedule = schedule.with_skip(index, blocks)
    return schedule


@dataclass(frozen=True)
class Subjects:
    """The models a step-aware study scores, by name: the subject (searched, ~30 min on 2 CPU cores; with feature
    reuse and fewer sampler steps beside it), a model trained with random block skipping (scored with the subject's
    schedule) and the x0.5 cUNet (the narrower network at fewer FLOPs), each a saved pipeline folder; the last two
    where there are any."""

    folders: dict[str, Path]
    subject: str = SUBJECT
    skip_trained: str | None = SKIP_TRAINED
    narrow: str | None = NARROW


def run(mode: str, runs: Path, results_path: Path) -> dict[str, Any]:
    """The Fashion-MNIST benchmark's models (trained by it, kept if already there), studied at its sampler steps."""
    fashion_settings = fashion.MODES[mode]
    present = [variant.name for variant in fashion.variants(mode)]
    names = [name for name in (SUBJECT, SKIP_TRAINED, NARROW) if name in present]
    fashion.run(mode, runs, results_path.parent / fashion.RESULTS_FILE, only=names)
    subjects = Subjects({name: runs / name for name in names})
    return study(mode, subjects, fashion_settings.sampling_steps, fashion_settings.test_images, results_path)


def study(mode: str, subjects: Subjects, steps: int, test_images: int, results_path: Path) -> dict[str, Any]:
    """Search and score the `subjects` (saved pipelines, sampled with the Fashion sampler at `steps`) against the
    first `test_images` test images; resumable: settings already scored in `results_path` are kept, so a subject
    whose rows are all there may come without its folder (its weights lost with a machine) and a model joins it."""
    settings = MODES[mode]
    subject, narrow = subjects.subject, subjects.narrow
    skip_trained = subjects.skip_trained if subjects.skip_trained in subjects.folders else None
    judge = load_judge()
    real_features = test_image_features(test_images)
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    if results.get("mode") != mode or results.get("subject", SUBJECT) != subject:
        results = {"mode": mode, "subject": subject, "settings": vars(settings) | {"sampling_steps": steps},
                   "searches": {}, "rows": []}  # fmt: skip

    if subject not in subjects.folders and subject not in results["searches"]:
        raise ValueError(f"no pipeline folder for {subject}, and {results_path} holds none of its rows: the study "
                         "starts from it")  # fmt: skip

    def save() -> None:
        replace_text(results_path, json.dumps(results, indent=2))

    done = {(row["label"], row["seed"]) for row in results["rows"]}

    def score(label: str, model: str, pipe, sampling_steps: int, seed: int, **options) -> None:
        if (label, seed) in done:
            return
        evaluator = SampleEvaluator(pipe, judge, real_features, settings.final_samples, sampling_steps, seed)
        row = {"label": label, "model": model, "seed": seed, **evaluator.scores(seed, **options)}
        row["options"] = {key: getattr(value, "to_dict", lambda v=value: v)() for key, value in options.items()}
        results["rows"].append(row)
        done.add((label, seed))
        print(f"{label} (seed {seed}): FID {row['fid']:.2f}, {row['gflops_per_sample']:.3f} GFLOPs/sample", flush=True)
        save()

    for model in [name for name in (subject, skip_trained) if name in subjects.folders]:
        pipe = load(subjects.folders[model], steps)
        start = full_schedule(pipe, settings.bins)
        if model == subject and model not in results["searches"]:
            print(f"\n=== block-skip search on {model} ({settings.search_samples} samples each) ===", flush=True)
            evaluator = SampleEvaluator(pipe, judge, real_features, settings.search_samples, steps)
            begin = time.perf_counter()
            blocks = list(settings.blocks or pipe.unet.ode_block_names)
            full, best, trials = skip_search(evaluator, start, blocks, settings.tolerance)
            seconds = time.perf_counter() - begin
            record = {"search_seconds": seconds, "samples": settings.search_samples, "tolerance": settings.tolerance}
            results["searches"][model] = search_result(full, best, trials, **record)
            save()
        # a model that was not searched runs the subject's schedule: does skip training make those skips cheaper?
        source = model if model in results["searches"] else subject
        best = schedule_from(results["searches"][source]["best"], start)
        skips = "searched skips" if source == model else f"{source}'s searched skips"
        for seed in settings.seeds if model == subject else settings.other_seeds:
            score(f"{model} default", model, pipe, steps, seed)
            score(f"{model} {skips}", model, pipe, steps, seed, solver_schedule=best)
        if model != subject:
            continue
        for interval, levels in settings.caches:
            score(f"{model} cache {interval}/{levels}", model, pipe, steps, 0, cache_interval=interval,
                  cache_levels=levels)  # fmt: skip
        for fewer in settings.fewer_steps:
            score(f"{model} {fewer} steps", model, load(subjects.folders[model], fewer), fewer, 0)
    if narrow in subjects.folders:
        score(f"{narrow} default", narrow, load(subjects.folders[narrow], steps), steps, 0)
    results["verdicts"] = verdicts(results)
    save()
    return results


def verdicts(results: dict[str, Any]) -> dict[str, Any]:
    """Each setting against the shipped default (the x1 cUNet, one Euler step per block, the default sampler; per
    seed where there are two): FLOP ratio, worst FID change, whether it meets its target (feature reuse: 1.5x
    fewer FLOPs; the rest: 40% fewer; both at <= 5% worse FID)."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for row in results["rows"]:
        rows.setdefault(row["label"], []).append(row)
    subject = results.get("subject", SUBJECT)
    reference = {row["seed"]: row for row in rows.get(f"{subject} default", [])}
    if not reference:
        return {}
    out = {}
    for label, entries in rows.items():
        if label == f"{subject} default":
            continue
        changes = [row["fid"] / reference[row["seed"]]["fid"] - 1 for row in entries if row["seed"] in reference]
        flop_ratio = entries[0]["gflops_per_sample"] / reference[0]["gflops_per_sample"]
        worst = max(changes) if changes else None
        saving_needed = 1 / CACHE_TARGET if "cache" in label else 1 - FLOP_TARGET
        meets = worst is not None and worst <= FID_TOLERANCE and flop_ratio <= saving_needed
        out[label] = {"flop_ratio": flop_ratio, "fid_change": worst, "seeds": len(changes), "meets_target": meets}
    return out


# ------------------------------------------------------------------------------ its section of the report
def by_label(results: dict[str, Any]) -> dict[str, dict[int, dict[str, Any]]]:
    rows: dict[str, dict[int, dict[str, Any]]] = {}
    for row in results["rows"]:
        rows.setdefault(row["label"], {})[row["seed"]] = row
    return rows


def plot(results: dict[str, Any], path: Path) -> None:
    """FID (seed 0) against GFLOPs per sample for every scored setting, with the default's tolerance band."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = by_label(results)
    markers = {"default": "s", "searched skips": "*", "cache": "^", "steps": "o"}
    for label, seeds in rows.items():
        row = seeds.get(0) or next(iter(seeds.values()))
        kind = next((key for key in markers if key in label), "default")
        size = 90 if kind == "searched skips" else 50
        ax.scatter(row["gflops_per_sample"], row["fid"], marker=markers[kind], s=size)
        ax.annotate(label.replace("cunet-", ""), (row["gflops_per_sample"], row["fid"]), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")  # fmt: skip
    default = rows.get(f"{results.get('subject', SUBJECT)} default", {}).get(0)
    if default:
        ax.axhline(default["fid"] * (1 + FID_TOLERANCE), ls="--", c="k", lw=0.8, label="default FID + 5%")
        ax.axvline(default["gflops_per_sample"] * (1 - FLOP_TARGET), ls=":", c="gray", lw=0.8, label="40% fewer FLOPs")
        ax.legend(fontsize=8)
    ax.set(xlabel="GFLOPs per sample (counted over a whole sampling call)", ylabel="FID (lower is better)",
           title="Fashion-MNIST: step-aware compute against the default")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fid_text(seeds: dict[int, dict[str, Any]]) -> str:
    return " / ".join(f"{seeds[seed]['fid']:.2f}" for seed in sorted(seeds))


def fewer_steps_curve(results: dict[str, Any]) -> list[tuple[float, float]]:
    """(GFLOPs per sample, FID) of the subject at the default's and each smaller sampler step count (seed 0): the
    honest baseline a cheaper setting must beat at its own FLOPs."""
    return sorted((row["gflops_per_sample"], row["fid"]) for row in results["rows"]
                  if row["seed"] == 0 and on_fewer_steps_curve(results, row["label"]))  # fmt: skip


def on_fewer_steps_curve(results: dict[str, Any], label: str) -> bool:
    """Whether `label` is the subject at the default or at fewer sampler steps."""
    subject = re.escape(results.get("subject", SUBJECT))
    return re.fullmatch(rf"{subject} (default|\d+ steps)", label) is not None


def fid_by_fewer_steps(curve: list[tuple[float, float]], gflops: float) -> float | None:
    """The FID fewer sampler steps give at `gflops` (linear between the curve's neighbours; None outside it)."""
    for (low, low_fid), (high, high_fid) in zip(curve, curve[1:]):
        if low <= gflops <= high:
            return low_fid + (high_fid - low_fid) * (gflops - low) / (high - low) if high > low else low_fid
    return None


def settings_table(results: dict[str, Any]) -> list[str]:
    """Every scored setting against the default: GFLOPs, evaluations, FID of both seeds, time, target met, and the
    FID fewer sampler steps give at the same GFLOPs (the alternative that costs nothing to build)."""
    rows = by_label(results)
    verdicts = results.get("verdicts", {})
    subject = results.get("subject", SUBJECT)
    default = rows.get(f"{subject} default", {}).get(0)
    curve = fewer_steps_curve(results)
    lines = [
        "| setting | GFLOPs/sample | x default | ODE evals/sample | FID (seed 0 / 1) | FID change (worst) | "
        "s/image | target | fewer steps' FID at these GFLOPs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, seeds in rows.items():
        row = seeds.get(0) or next(iter(seeds.values()))
        verdict = verdicts.get(label)
        ratio = f"{row['gflops_per_sample'] / default['gflops_per_sample']:.2f}x" if default else "-"
        change = f"{verdict['fid_change']:+.1%}" if verdict and verdict["fid_change"] is not None else "-"
        met = ("yes" if verdict["meets_target"] else "no") if verdict else "(reference)"
        milliseconds = row["sampling_s_per_image"] * 1000
        on_curve = on_fewer_steps_curve(results, label)
        baseline = None if on_curve else fid_by_fewer_steps(curve, row["gflops_per_sample"])
        against = "-" if baseline is None else f"{baseline:.2f} ({'better' if row['fid'] < baseline else 'worse'})"
        lines.append(f"| `{label}` | {row['gflops_per_sample']:.3f} | {ratio} | {row['evaluations_per_sample']} | "
                     f"{fid_text(seeds)} | {change} | {milliseconds:.1f} ms | {met} | {against} |")  # fmt: skip
    return lines


def search_lines(results: dict[str, Any]) -> list[str]:
    """Each block-skip search: how many schedules, how long, the skips kept per bin, FID and GFLOPs it ended at."""
    lines = []
    for model, search in results.get("searches", {}).items():
        bins = search["best"]["skip_per_bin"]
        described = "; ".join(f"bin {i} ({'least' if i == 0 else 'most' if i == len(bins) - 1 else 'mid'} noise): "
                              + (", ".join(f"`{b}`" for b in blocks) if blocks else "none")
                              for i, blocks in enumerate(bins))  # fmt: skip
        lines.append(
            f"\nSearch on `{model}`: {len(search['trials'])} schedules in {search['search_seconds']:.0f} s; kept "
            f"skips: {described}. On the search's samples: FID {search['full']['fid']:.2f} -> "
            f"{search['best']['fid']:.2f} ({search['fid_change']:+.1%}) at {search['flop_saving']:.0%} fewer GFLOPs."
        )
    return lines


def report_section(results: dict[str, Any], folder: Path) -> list[str]:
    settings = results["settings"]
    lines = [
        "\n## Step-aware compute on Fashion-MNIST: block skipping and feature reuse against today's default\n",
        f"Mode `{results['mode']}`. The default is the shipped setting: the x1 EDM cUNet (`{SUBJECT}`, trained by the "
        f"Fashion-MNIST benchmark), one Euler step per ODE block, EDM DPM-Solver++ with {settings['sampling_steps']} "
        f"steps. Every row is {settings['final_samples']} samples scored against the test images; GFLOPs per sample "
        "are counted by torch's FLOP counter over a whole sampling call (every network call as it ran). Block-skip "
        f"schedules were searched on {settings['search_samples']} samples per schedule (common random numbers, "
        f"{settings['bins']} c_noise bins, FID within {FID_TOLERANCE:.0%} of the full network), then scored here on "
        "two seeds beside the default. Targets: a skip schedule with >= "
        f"{FLOP_TARGET:.0%} fewer FLOPs, feature reuse with >= {CACHE_TARGET}x fewer, each at <= "
        f"{FID_TOLERANCE:.0%} worse FID (worst seed), and a lower FID than fewer sampler steps give at the same "
        "GFLOPs (the last column: linear between the default and the fewer-steps rows, seed 0; '-' outside their "
        "range).\n",
        *settings_table(results),
    ]
    lines += search_lines(results)
    plot(results, folder / "step_aware.png")
    lines.append(f"\n![FID against GFLOPs per sample]({shown(folder / 'step_aware.png')})\n")
    if not math.isfinite(sum(row["fid"] for row in results["rows"])):
        lines.append("Some settings produced non-finite FIDs (see the JSON).\n")
    return lines


def main(argv: list[str] | None = None) -> paths.BenchmarkRun:
    parser = paths.benchmark_parser(
        __doc__, MODES, "cpu", runs_help="where the Fashion-MNIST training runs are (or go)"
    )
    args = parser.parse_args(argv)
    results, report_file = paths.outputs(args)
    start = time.perf_counter()
    run(args.mode, args.runs or paths.ROOT / "outputs" / "bench" / f"fashion-{args.mode}", results / RESULTS_FILE)
    return paths.BenchmarkRun("Step-aware benchmark", "benchmarks.step_aware", args, results, report_file, start)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from .report import finish  # the command line: run, then rewrite the report

    finish(main())
