"""Classifier-free guidance on Fashion-MNIST: does a sample of class c look like class c, and at what FID?

A cUNet and a UNet2DModel of the same widths, trained alike (EDM, labels replaced by the null class with
probability 0.1, the Fashion benchmark's CPU recipe), each sampled at several guidance scales with the same noise
and the same balanced labels. The committed judge (`evaluation.fashion_judge`) classifies every sample: the share it
puts in the class asked for is the class accuracy (its own accuracy on real test images is the ceiling printed
beside it); FID, KID and precision/recall are the Fashion benchmark's, against the 10,000 test images, with the
floor (as many real training images) beside them.

    python -m benchmarks.guidance --mode cpu     # 2 CPU cores, ~3.5 h: two seeds of each network; the first
                                                 # cUNet at five scales, the other models at three, every cUNet at
                                                 # 3 guided in sigma [0.3, 5] too
    python -m benchmarks.guidance --mode tiny    # seconds: the smoke test

Resumable: a stopped run resumes training from the latest checkpoint and keeps every scored scale. Results:
guidance.json, guidance.png (FID and class accuracy against the scale) and guidance_grid.png (one row per class) in
outputs/benchmarks/results/, and the report BENCHMARKS.md beside them (with --publish: the tracked
benchmarks/results/ and BENCHMARKS.md).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from diffusers_cunet.pipelines import ContinuousUNetPipeline
from evaluation.fashion_judge import judge_metadata, load_judge
from evaluation.fashion_scores import (
    balanced_labels,
    class_conditional_scores,
    generate,
    sample_scores,
    test_image_features,
)
from training.fashion_mnist import CLASS_NAMES, split_tensors
from training.loop import train
from training.options import make_config
from training.plotting import pyplot

from . import paths
from .common import chosen_variants
from .fashion import EDM, EULER1, FashionSettings, FashionVariant, sampler, train_options
from .paths import shown
from .quality import write_results

RESULTS_FILE, PLOT_FILE, GRID_FILE = "guidance.json", "guidance.png", "guidance_grid.png"
GUIDED = {**EDM, "class_column": "label", "class_dropout_prob": 0.1}
CLASSES = 10
ACCURACY_TARGET = 0.95  # issue 27: a scale whose samples the judge puts in their class this often, at FID <= scale 1's


@dataclass
class GuidanceSettings(FashionSettings):
    scales: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0, 5.0)
    # the UNet2DModel's scales, when fewer (its guided sampling costs ~2.5x the cUNet's on 2 CPU cores)
    baseline_scales: tuple[float, ...] | None = None
    grid_columns: int = 8  # samples per class in the grid
    repeat_seeds: tuple[int, ...] = ()  # both networks trained again with each of these seeds ...
    repeat_scales: tuple[float, ...] = (1.0, 2.0)  # ... and scored at these scales
    # the cUNets also sampled at these scales with guidance only for sigma in `interval` (EDM2's guidance interval)
    interval: tuple[float, float] | None = None
    interval_scales: tuple[float, ...] = ()

    def points_of(self, variant: FashionVariant) -> list[tuple[float, tuple[float, float] | None]]:
        """The (scale, guidance interval) settings a model is scored at."""
        if variant.seed != self.seed:
            scales = self.repeat_scales
        elif variant.model_type != "cunet" and self.baseline_scales:
            scales = self.baseline_scales
        else:
            scales = self.scales
        points = [(scale, None) for scale in scales]
        if variant.model_type == "cunet" and self.interval:  # each beside its plain counterpart, of the same model
            points += [(scale, None) for scale in self.interval_scales if scale not in scales]
            points += [(scale, self.interval) for scale in self.interval_scales]
        return points


def setting_key(scale: float, interval) -> tuple[float, tuple[float, ...]]:
    """A sampling setting as one comparable key: its scale and its guidance interval (`()`: guided at every step)."""
    return scale, tuple(interval or ())


def point_key(point: dict[str, Any]) -> tuple[float, tuple[float, ...]]:
    """A scored point's setting (points scored before intervals existed have no `guidance_interval`)."""
    return setting_key(point["scale"], point.get("guidance_interval"))


MODES = {
    "tiny": GuidanceSettings(
        steps=4,
        batch_size=8,
        samples=20,
        sampling_steps=3,
        checkpoints=1,
        held_out=8,
        test_images=48,
        max_train_samples=256,
        sample_batch=10,
        scales=(1.0, 3.0),
        grid_columns=2,
        repeat_seeds=(1,),
        repeat_scales=(1.0,),
        interval=(0.3, 5.0),
        interval_scales=(3.0,),
    ),  # fmt: skip
    # the Fashion benchmark's CPU training (500 steps, batch 64); 1,000 samples per scale (100 per class); the
    # UNet2DModel at three of the cUNet's five scales (sized to the 2-core machine's time); a second seed of both at
    # scales 1, 2 and 3; the cUNets at scale 3 guided only for sigma in [0.3, 5] too (no guidance where the image is
    # still mostly noise, sigma_data = 0.5, nor where little is left to decide; not tuned)
    "cpu": GuidanceSettings(
        steps=500,
        batch_size=64,
        samples=1000,
        baseline_scales=(1.0, 2.0, 3.0),
        repeat_seeds=(1,),
        repeat_scales=(1.0, 2.0, 3.0),
        interval=(0.3, 5.0),
        interval_scales=(3.0,),
    ),  # fmt: skip
}


def variants(mode: str) -> list[FashionVariant]:
    """Both networks at the mode's seed (the cUNet first: its samples make the class grid), then at each repeat
    seed."""
    settings = MODES[mode]
    widths = (16, 32) if mode == "tiny" else (32, 64, 128)
    out = []
    for seed in (settings.seed, *settings.repeat_seeds):
        suffix = "" if seed == settings.seed else f"-seed{seed}"
        out += [
            FashionVariant(f"cunet-x1-edm-guided{suffix}", "cunet", widths, EULER1, GUIDED, seed=seed),
            FashionVariant(f"unet2d-x1-edm-guided{suffix}", "unet2d", widths, None, GUIDED, seed=seed),
        ]
    return out


def score_scale(pipeline, scale: float, test_features, judge, settings: GuidanceSettings,
                interval: tuple[float, float] | None = None) -> dict[str, Any]:  # fmt: skip
    """One point of the benchmark: `class_conditional_scores` at guidance `scale` (within `interval`), in this
    benchmark's format (`scale`, the sampler's steps left to the settings)."""
    scores = class_conditional_scores(pipeline, judge, test_features, settings.samples, settings.sampling_steps,
                                      settings.seed, settings.sample_batch, scale, interval)  # fmt: skip
    del scores["sampling_steps"]
    return {"scale": scores.pop("guidance_scale"), **scores}


def run(mode: str, runs: Path, results_dir: Path, only: list[str] | None = None) -> dict[str, Any]:
    """Train (or resume) each model (those named in `only`, if given), score every scale not scored yet, and write
    the results after each."""
    settings = MODES[mode]
    chosen = chosen_variants(variants(mode), only, mode)
    results_path = results_dir / RESULTS_FILE
    judge = load_judge()
    test_features = test_image_features(settings.test_images)
    floor = sample_scores(judge, None, split_tensors("train")[0][: settings.samples], real_features=test_features)
    previous = json.loads(results_path.read_text()) if results_path.exists() else {}
    rows = {row["name"]: row for row in previous.get("runs", [])} if previous.get("mode") == mode else {}
    pipelines = {}
    for variant in chosen:
        output = runs / variant.name
        print(f"\n=== {variant.name} ({settings.steps} steps) ===", flush=True)
        result = train(make_config(**train_options(variant, settings.steps, settings, output)))
        noise_config = json.loads((output / "scheduler" / "scheduler_config.json").read_text())
        pipeline = ContinuousUNetPipeline(unet=result.unet.eval(), scheduler=sampler(noise_config, 0))
        pipelines[variant.name] = pipeline
        row = rows.setdefault(variant.name, {**asdict(variant), "points": []})
        if not result.already_done or "train_seconds_median" not in row:  # a finished run's are kept as measured
            row.update(steps=settings.steps, held_out_error=result.held_out_error[-1]["mean"],
                       train_seconds_median=result.median_step_seconds * settings.steps)  # fmt: skip
        done = {point_key(point) for point in row["points"]}
        for scale, interval in settings.points_of(variant):
            if setting_key(scale, interval) in done:
                continue
            point = score_scale(pipeline, scale, test_features, judge, settings, interval)
            row["points"] = sorted([*row["points"], point], key=point_key)
            accuracy, fid, ms = point["class_accuracy"], point["fid"], point["sampling_s_per_image"] * 1e3
            within = f" within sigma {list(interval)}" if interval else ""
            print(f"{variant.name} scale {scale}{within}: class accuracy {accuracy:.3f}, FID {fid:.2f} "
                  f"(floor {floor['fid']:.2f}), {ms:.0f} ms/image", flush=True)  # fmt: skip
            save(results_path, mode, settings, floor, rows)
    results = save(results_path, mode, settings, floor, rows)
    if variants(mode)[0].name in pipelines:  # (the FID/accuracy plot is drawn with the report section)
        class_grid(pipelines[variants(mode)[0].name], settings, results_dir / GRID_FILE)
    return results


def point_label(point: dict[str, Any]) -> str:
    """`3`, or `3 (sigma in [0.3, 5])` for a point guided only within an interval."""
    interval = point.get("guidance_interval")
    return f"{point['scale']:g}" + (f" (sigma in [{interval[0]:g}, {interval[1]:g}])" if interval else "")


def verdicts(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per network: the settings (scale, interval) whose FID is no worse than scale 1's and whose class accuracy
    meets the target, and the most accurate setting at FID no worse than scale 1's."""
    out = {}
    for row in rows:
        plain = next((p for p in row["points"] if point_key(p) == (1.0, ())), None)
        if plain is None:
            continue
        fair = [p for p in row["points"] if p["fid"] <= plain["fid"]]
        best = max(fair, key=lambda p: p["class_accuracy"])
        meeting = [point_label(p) for p in fair if p is not plain and p["class_accuracy"] >= ACCURACY_TARGET]
        out[row["name"]] = {"scales_meeting_target": meeting, "best_scale_at_fid_no_worse": point_label(best),
                            "best_accuracy_at_fid_no_worse": best["class_accuracy"]}  # fmt: skip
    return out


def save(path: Path, mode: str, settings: GuidanceSettings, floor: dict, rows: dict[str, dict]) -> dict[str, Any]:
    """The results so far, with the machine, the judge (its accuracy on real test images) and the verdicts, written
    atomically."""
    runs = list(rows.values())
    return write_results(path, mode, settings, floor, runs, judge=judge_metadata(), verdicts=verdicts(runs))


def plot(results: dict[str, Any], path: Path) -> None:
    """FID (left) and class accuracy (right) against the guidance scale, one line per network."""
    plt = pyplot()

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    for row in results["runs"]:
        for within, style in ((False, dict(marker="o")), (True, dict(marker="x", linestyle="--"))):
            points = [p for p in row["points"] if bool(p.get("guidance_interval")) == within]
            if not points:
                continue
            label = row["name"] + (f" (sigma in {points[0]['guidance_interval']})" if within else "")
            scales = [p["scale"] for p in points]
            left.plot(scales, [p["fid"] for p in points], label=label, **style)
            right.plot(scales, [p["class_accuracy"] for p in points], label=label, **style)
    left.axhline(results["reference_real_vs_real"]["fid"], color="grey", linestyle=":", label="floor (real vs real)")
    right.axhline(results["judge"]["test_accuracy"], color="grey", linestyle=":", label="judge on real test images")
    left.set(xlabel="guidance scale", ylabel="FID (judge features)", title="FID")
    right.set(xlabel="guidance scale", ylabel="share judged the class asked for", title="class accuracy")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def class_grid(pipeline, settings: GuidanceSettings, path: Path) -> None:
    """One row per class, `grid_columns` samples each, one panel per guidance scale (the same noise in each)."""
    plt = pyplot()

    scales = sorted(settings.scales)
    labels = balanced_labels(CLASSES * settings.grid_columns)
    images_by_scale = {
        scale: generate(
            pipeline,
            len(labels),
            settings.sampling_steps,
            settings.seed,
            len(labels),
            class_labels=labels,
            guidance_scale=scale,
        )[0]  # fmt: skip
        for scale in scales
    }
    fig, axes = plt.subplots(1, len(scales), figsize=(2.0 + 1.6 * len(scales) * settings.grid_columns / 8, 4.4))
    for axis, scale in zip(axes if len(scales) > 1 else [axes], scales):
        images = images_by_scale[scale][:, 0]
        rows = []
        for c in range(CLASSES):
            chosen = torch.nn.functional.pad(images[labels == c], (1, 1, 1, 1), value=0.5)
            rows.append(torch.cat(list(chosen), dim=1))
        axis.imshow(torch.cat(rows, dim=0).numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        axis.set_title(f"guidance scale {scale:g}", fontsize=9)
        axis.set_xticks([])
        height = images.shape[-1] + 2
        axis.set_yticks([height * (c + 0.5) for c in range(CLASSES)], CLASS_NAMES if axis is axes[0] else [""] * 10,
                        fontsize=7)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------ its section of the report
def scales_table(results: dict[str, Any]) -> list[str]:
    """Class accuracy / FID of every run at each plain scale (guided at every step), one column per scale, and the
    ODE evaluations per image each scale costs."""
    scales = sorted({p["scale"] for row in results["runs"] for p in row["points"] if not point_key(p)[1]})
    lines = ["| network, seed | " + " | ".join(f"scale {scale:g}" for scale in scales) + " |",
             "|---|" + "---:|" * len(scales)]  # fmt: skip
    evaluations: dict[float, int] = {}
    for row in results["runs"]:
        at = {p["scale"]: p for p in row["points"] if not point_key(p)[1]}
        cells = [f"{at[s]['class_accuracy']:.1%} / {at[s]['fid']:.2f}" if s in at else "-" for s in scales]
        network = "cUNet" if row["model_type"] == "cunet" else "UNet2DModel"
        lines.append(f"| {network}, seed {row['seed']} | " + " | ".join(cells) + " |")
        evaluations.update(
            {s: p["ode_evaluations_per_image"] for s, p in at.items() if p["ode_evaluations_per_image"]}
        )
    counts = " | ".join(str(evaluations.get(scale, "-")) for scale in scales)
    lines.append(f"| ODE evaluations per image | {counts} |")
    ceiling = results["judge"]["test_accuracy"]
    samples = results["settings"]["samples"]
    return lines + [f"\nCells: class accuracy / FID, {samples:,} samples per scale; the judge's own accuracy on real "
                    f"test images: {ceiling:.1%}."]  # fmt: skip


def report_section(results: dict[str, Any], folder: Path) -> list[str]:
    settings, floor, judge = results["settings"], results["reference_real_vs_real"], results["judge"]
    lines = [
        "\n## Classifier-free guidance on Fashion-MNIST: class accuracy and FID against the scale\n",
        f"`python -m benchmarks.guidance --mode {results['mode']}` ({results['date']}, torch {results['torch']}, "
        f"{results['threads']} threads, {results['device']}). Both networks trained alike: EDM, "
        f"{settings['steps']} steps of batch {settings['batch_size']}, labels replaced by the null class with "
        f"probability 0.1. Each scale: {settings['samples']} samples ({settings['samples'] // 10} per class, the same "
        f"noise and labels at every scale), EDM DPM-Solver++ {settings['sampling_steps']} steps. Class accuracy = the "
        f"share the judge classifies as the class asked for (its accuracy on real test images, the ceiling: "
        f"{judge['test_accuracy']:.1%}); FID in the judge's features against {settings['test_images']:,} test images "
        f"(floor, {settings['samples']} real training images: {floor['fid']:.2f}). Target: a scale with FID no worse "
        f"than scale 1's and class accuracy >= {ACCURACY_TARGET:.0%}.\n",
        "| network | scale | class accuracy | FID | KID | precision | recall | ODE evals/image | ms/image |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["runs"]:
        for p in row["points"]:
            evaluations = p["ode_evaluations_per_image"] if p["ode_evaluations_per_image"] is not None else "-"
            lines.append(f"| `{row['name']}` | {point_label(p)} | {p['class_accuracy']:.1%} | {p['fid']:.2f} | "
                         f"{p['kid_mean']:.3f} | {p['precision']:.3f} | {p['recall']:.3f} | {evaluations} | "
                         f"{p['sampling_s_per_image'] * 1e3:.0f} |")  # fmt: skip
    for name, verdict in verdicts(results["runs"]).items():
        meeting = ", ".join(verdict["scales_meeting_target"]) or "none"
        lines.append(f"\n`{name}`: scales meeting the target: {meeting}; the most accurate scale at FID no worse than "
                     f"scale 1's: {verdict['best_scale_at_fid_no_worse']} "
                     f"({verdict['best_accuracy_at_fid_no_worse']:.1%}).")  # fmt: skip
    plot(results, folder / PLOT_FILE)
    lines.append(f"\n![FID and class accuracy against the guidance scale]({shown(folder / PLOT_FILE)})\n")
    if (folder / GRID_FILE).exists():
        lines.append(f"![one row per class at each scale (cUNet)]({shown(folder / GRID_FILE)})\n")
    return lines


def main(argv: list[str] | None = None) -> paths.BenchmarkRun:
    parser = paths.benchmark_parser(__doc__, MODES, "cpu", only=True)
    args = parser.parse_args(argv)
    results, report_file = paths.outputs(args)
    start = time.perf_counter()
    run(args.mode, args.runs or paths.ROOT / "outputs" / "bench" / f"guidance-{args.mode}", results, args.only)
    return paths.BenchmarkRun("Guidance benchmark", "benchmarks.guidance", args, results, report_file, start)


if __name__ == "__main__":
    from .report import finish  # the command line: run, then rewrite the report

    finish(main())
