"""Fashion-MNIST decides the quality claims: cUNets against diffusers' UNet2DModel, each pair on one objective,
scored by FID, KID, precision/recall and class coverage in the committed judge's features (`evaluation.fashion_judge`)
against the 10,000 test images, with the floor (as many real training images) beside them.

    python -m benchmarks.fashion --mode cpu        # 2 CPU cores, ~3 h (measured): x1 pairs (EDM, two seeds;
                                                   # DDPM-style), x0.5 pair, an equal-time cUNet, EDM-FDM, a
                                                   # sampler-step sweep; resumable, most important first
    python -m benchmarks.fashion --mode tiny       # seconds: the smoke test
    python -m benchmarks.parallel --benchmark fashion   # gpu mode, one process per model side by side

The data comes from the local IDX files (`training.fashion_mnist`; Debian's `dataset-fashion-mnist`, or
`$FASHION_MNIST_DIR`: on a machine that reaches no registry, e.g. a lent GPU, carry the four files (31 MB) and the
wheels of diffusers and datasets, and point the variable at the files). Runs go to outputs/bench/fashion-<mode>/;
a stopped benchmark started again resumes each model from its latest checkpoint and keeps the models it finished
and scored. Results: fashion.json (+ plots) in outputs/benchmarks/results/ (with --publish: the tracked
benchmarks/results/ and BENCHMARKS.md).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from diffusers import DPMSolverMultistepScheduler, EDMDPMSolverMultistepScheduler

from diffusers_cunet.flops import count_forward_flops, count_parameters
from diffusers_cunet.pipelines import ContinuousUNetPipeline
from diffusers_cunet.pipelines.scheduler_support import EDM_SCHEDULERS
from evaluation.fashion_judge import judge_metadata, load_judge
from evaluation.fashion_scores import generate, sample_scores, test_image_features
from training.fashion_mnist import split_tensors
from training.loop import train
from training.options import make_config
from training.plotting import pyplot

from . import paths
from .common import checkpoint_models, chosen_variants
from .paths import shown
from .quality import Variant, variant_steps, write_results

RESULTS_FILE = "fashion.json"


@dataclass
class FashionVariant(Variant):
    """A model of the comparison; `curve`: also scored at the mode's intermediate fractions of training;
    `sweep`: also sampled at these sampler step counts (FID against sampling time)."""

    curve: bool = False
    sweep: tuple[int, ...] = ()


@dataclass
class FashionSettings:
    steps: int
    batch_size: int
    samples: int  # generated images scored against the test images
    sampling_steps: int = 20  # DPM-Solver++ (EDM's for EDM-trained models, diffusers' for DDPM-style ones)
    scored_fractions: tuple[float, ...] = (0.5, 1.0)  # for `curve` variants; the others at the end only
    checkpoints: int = 4  # held-out error at each
    held_out: int = 256  # test images of the held-out denoising error
    test_images: int = 10_000  # real images FID/KID are measured against
    learning_rate: float = 1e-3
    max_train_samples: int | None = None
    sample_batch: int = 250
    seed: int = 0


MODES = {
    "tiny": FashionSettings(
        steps=4,
        batch_size=8,
        samples=24,
        sampling_steps=3,
        scored_fractions=(0.5, 1.0),
        checkpoints=2,
        held_out=8,
        test_images=48,
        max_train_samples=256,
    ),  # fmt: skip
    # one CPU run each, most important first (a stopped run keeps the finished models): ~0.53 epoch per model
    "cpu": FashionSettings(steps=500, batch_size=64, samples=2000),
    # trained far longer, 10,000 samples: one process per model side by side on one GPU
    "gpu": FashionSettings(
        steps=12_000, batch_size=128, samples=10_000, scored_fractions=(0.35, 0.7, 1.0), checkpoints=10, held_out=1000
    ),  # fmt: skip
}
EDM, FDM, DDPM = {"preconditioning": "edm"}, {"preconditioning": "edm-fdm"}, {}
EULER1 = ("euler", 1)
# trained for block-skip schedules (benchmarks.step_aware): each batch leaves each ODE block out with this probability
# (about one of the seven per batch; P(none) = 0.32)
SKIP_TRAINING = {**EDM, "block_skip_prob": 0.15}


def variants(mode: str) -> list[FashionVariant]:
    if mode == "tiny":
        return [
            FashionVariant("cunet-x1-edm", "cunet", (16, 32), EULER1, EDM, curve=True, sweep=(2,)),
            FashionVariant("unet2d-x1-edm", "unet2d", (16, 32), None, EDM),
            FashionVariant(
                "cunet-x1-edm-equal-time",
                "cunet",
                (16, 32),
                EULER1,
                EDM,
                equal_time=("cunet-x1-edm", "unet2d-x1-edm", 1.0),
            ),  # fmt: skip
            FashionVariant("cunet-x1-edm-skip", "cunet", (16, 32), EULER1, SKIP_TRAINING),
        ]
    x1, half, wide = (32, 64, 128), (16, 32, 64), (48, 96, 192)
    out = [
        FashionVariant("cunet-x1-edm", "cunet", x1, EULER1, EDM, curve=True, sweep=(10,)),
        FashionVariant("unet2d-x1-edm", "unet2d", x1, None, EDM, curve=True, sweep=(10,)),
        FashionVariant("cunet-x1-edm-s1", "cunet", x1, EULER1, EDM, seed=1),
        FashionVariant("unet2d-x1-edm-s1", "unet2d", x1, None, EDM, seed=1),
        # trained separately for the UNet2DModel's measured seconds (its own warm-up and cosine schedule)
        FashionVariant(
            "cunet-x1-edm-equal-time", "cunet", x1, EULER1, EDM, equal_time=("cunet-x1-edm", "unet2d-x1-edm", 1.0)
        ),  # fmt: skip
        FashionVariant("cunet-x1-edm-fdm", "cunet", x1, EULER1, FDM, curve=True),
        FashionVariant("cunet-x1-ddpm", "cunet", x1, EULER1, DDPM),
        FashionVariant("unet2d-x1-ddpm", "unet2d", x1, None, DDPM),
        FashionVariant("cunet-x0.5-edm", "cunet", half, EULER1, EDM),
        FashionVariant("unet2d-x0.5-edm", "unet2d", half, None, EDM),
        FashionVariant("cunet-x1-edm-skip", "cunet", x1, EULER1, SKIP_TRAINING),
    ]
    if mode == "gpu":
        out += [
            FashionVariant("cunet-x1.5-edm", "cunet", wide, EULER1, EDM),
            FashionVariant("unet2d-x1.5-edm", "unet2d", wide, None, EDM),
            FashionVariant("cunet-x1-edm-fdm-s1", "cunet", x1, EULER1, FDM, seed=1, curve=True),
        ]
        for variant in out:
            variant.sweep = (10, 50)
    return out


def sampler(noise_config: dict[str, Any], steps: int):
    """DPM-Solver++ for the model's objective: EDM's for an EDM-trained model, diffusers' on a DDPM-style model's
    own schedule otherwise (the same solver family, so a pair is sampled alike)."""
    if noise_config.get("_class_name") in EDM_SCHEDULERS:
        return EDMDPMSolverMultistepScheduler.from_config(noise_config)
    return DPMSolverMultistepScheduler.from_config(noise_config)


def evaluate(unet, noise_config, steps: int, test_features, judge, settings: FashionSettings) -> dict[str, Any]:
    """The scores of `settings.samples` samples drawn in `steps` sampler steps, and the sampling time per image."""
    pipeline = ContinuousUNetPipeline(unet=unet.eval(), scheduler=sampler(noise_config, steps))
    images, seconds = generate(pipeline, settings.samples, steps, settings.seed, settings.sample_batch)
    scores = sample_scores(judge, None, images, real_features=test_features)
    scores.update(sampling_steps=steps, sampling_s_per_image=seconds)
    return scores


def train_options(variant: FashionVariant, steps: int, settings: FashionSettings, output: Path) -> dict[str, Any]:
    interval = max(1, steps // settings.checkpoints)
    return dict(
        output_dir=output, dataset_name="fashion_mnist", image_fit="pad", model_preset="fashion-32",
        held_out_samples=settings.held_out, held_out_split="test", max_train_samples=settings.max_train_samples,
        train_batch_size=settings.batch_size, max_train_steps=steps, learning_rate=settings.learning_rate,
        lr_warmup_steps=max(1, steps // 20), checkpointing_steps=interval, checkpoints_total_limit=100,
        validation_steps=0, num_validation_images=64, validation_inference_steps=settings.sampling_steps,
        report_to="none", logging_steps=10, resume_from_checkpoint="latest", **variant.train_options(),
    )  # fmt: skip


def run(mode: str, output_root: Path, results_path: Path, only: list[str] | None = None) -> dict[str, Any]:
    """Train and score the models of `mode` (those named in `only`, if given) and write `results_path` after each."""
    settings = MODES[mode]
    chosen = chosen_variants(variants(mode), only, mode)
    judge = load_judge()
    train_images = split_tensors("train")[0]
    test_features = test_image_features(settings.test_images)
    reference = sample_scores(judge, None, train_images[: settings.samples], real_features=test_features)
    print(f"floor (real training images vs test): {json.dumps(reference)}", flush=True)
    rows: dict[str, dict[str, Any]] = {}
    if results_path.exists():  # models of an earlier, partial run of this benchmark (--only runs add to it)
        previous = json.loads(results_path.read_text())
        if previous.get("mode") == mode:
            rows = {row["name"]: row for row in previous["runs"]}
    for variant in chosen:
        steps = variant_steps(variant, rows, settings, time_key="train_seconds_median")
        output = output_root / variant.name
        if variant.name in rows and rows[variant.name]["steps"] == steps and (output / "metrics.json").is_file():
            print(f"{variant.name}: finished and scored in an earlier run, kept", flush=True)
            continue  # sampling 2,000 images again would cost minutes and change nothing
        print(f"\n=== training {variant.name} ({steps} steps) ===", flush=True)
        result = train(make_config(**train_options(variant, steps, settings, output)))
        unet = result.unet.eval()
        noise_config = json.loads((output / "scheduler" / "scheduler_config.json").read_text())
        held_out = {entry["step"]: entry["mean"] for entry in result.held_out_error}
        fractions = settings.scored_fractions if variant.curve else (1.0,)
        curve = []
        for step, model in checkpoint_models(output, variant.model_type, steps, fractions, unet, unet.device):
            point = {"step": step, "train_seconds": result.median_step_seconds * step,
                     "held_out_error": held_out.get(step)}  # fmt: skip
            if model is not None:
                point.update(evaluate(model, noise_config, settings.sampling_steps, test_features, judge, settings))
                print(f"{variant.name} step {step}: FID {point['fid']:.2f}", flush=True)
            curve.append(point)
        final = curve[-1]
        sweep = [evaluate(unet, noise_config, n, test_features, judge, settings) for n in variant.sweep]
        flops = count_forward_flops(unet)
        rows[variant.name] = {
            **asdict(variant),
            "steps": steps,
            "params": count_parameters(unet),
            "gflops_per_call": flops / 1e9,
            "train_seconds": result.train_seconds,  # wall time of the training steps
            # what the ratios use: the median step times the steps, robust to other work on a shared machine
            "train_seconds_median": result.median_step_seconds * steps,
            "train_images_per_s": result.images_per_second,
            "final_loss": result.final_loss,
            "held_out_error": result.held_out_error[-1]["mean"],
            "final": final,
            "curve": curve,
            "sweep": sorted([final, *sweep], key=lambda point: point["sampling_steps"]),
            "samples_grid": str(paths.shown(output / "samples.png")),
        }
        print(f"{variant.name}: FID {final['fid']:.2f} (floor {reference['fid']:.2f})", flush=True)
        save(results_path, mode, settings, reference, rows)  # after each model: a stopped run keeps the finished
    return save(results_path, mode, settings, reference, rows)


def save(path: Path, mode: str, settings: FashionSettings, reference: dict, rows: dict[str, dict]) -> dict[str, Any]:
    """The results so far, with the judge's record, written atomically to `path`."""
    return write_results(path, mode, settings, reference, list(rows.values()), judge=judge_metadata())


# ------------------------------------------------------------------------------ its section of the report
TARGET_RATIO = 0.5  # the target: the cUNet's FID at <= 0.5x the UNet2DModel's training and sampling time
SEED_PAIRS = (("cunet-x1-edm", "cunet-x1-edm-s1"), ("unet2d-x1-edm", "unet2d-x1-edm-s1"))


def seed_spread(runs: dict[str, dict[str, Any]]) -> float | None:
    """The larger |FID difference| between the two seeds of the x1 EDM models (None without a seed pair)."""
    gaps = [abs(runs[a]["final"]["fid"] - runs[b]["final"]["fid"]) for a, b in SEED_PAIRS if a in runs and b in runs]
    return max(gaps) if gaps else None


def pairs(runs: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """(cUNet, UNet2DModel) names that share width, objective and seed: `cunet-<rest>` against `unet2d-<rest>`."""
    return [(name, "unet2d" + name[5:]) for name in runs if name.startswith("cunet-") and "unet2d" + name[5:] in runs]


def pair_verdict(cunet: dict[str, Any], unet: dict[str, Any], spread: float | None) -> dict[str, Any]:
    """FID gap, time ratios and whether the cUNet meets the target against `unet` (ties within `spread`)."""
    gap = cunet["final"]["fid"] - unet["final"]["fid"]
    train_ratio = cunet["train_seconds_median"] / unet["train_seconds_median"]
    sampling_ratio = cunet["final"]["sampling_s_per_image"] / unet["final"]["sampling_s_per_image"]
    as_good = gap <= (spread or 0.0)
    return {"fid_gap": gap, "train_ratio": train_ratio, "sampling_ratio": sampling_ratio, "as_good": as_good,
            "meets_target": as_good and train_ratio <= TARGET_RATIO and sampling_ratio <= TARGET_RATIO}  # fmt: skip


def frontier(runs: dict[str, dict[str, Any]], spread: float | None) -> list[str]:
    """For every EDM UNet2DModel (end of training, sampler at the mode's steps): the cUNets at least as good in FID
    (within the spread) at <= 0.5x its training time."""
    lines = []
    cunets = [r for r in runs.values() if r["model_type"] == "cunet" and r["extra"].get("preconditioning") == "edm"]
    for unet in runs.values():
        if unet["model_type"] != "unet2d" or unet["extra"].get("preconditioning") != "edm":
            continue
        better = [c["name"] for c in cunets if c["final"]["fid"] <= unet["final"]["fid"] + (spread or 0.0)
                  and c["train_seconds_median"] <= TARGET_RATIO * unet["train_seconds_median"]]  # fmt: skip
        verdict = ", ".join(f"`{name}`" for name in better) if better else "**none**"
        lines.append(
            f"- `{unet['name']}` (FID {unet['final']['fid']:.2f}, {unet['train_seconds_median']:.0f} s): {verdict}"
        )
    return lines


def steps_to_reach(curve: list[dict[str, Any]], target: float) -> float | None:
    """The first training step where a FID curve (scored points, linearly interpolated) reaches `target`."""
    points = [(p["step"], p["fid"]) for p in curve if "fid" in p]
    for (step0, fid0), (step1, fid1) in zip([(0, float("inf")), *points[:-1]], points):
        if fid1 <= target:
            if fid0 == float("inf") or fid0 == fid1:
                return float(step1)
            return step0 + (fid0 - target) / (fid0 - fid1) * (step1 - step0)
    return None


def fdm_lines(runs: dict[str, dict[str, Any]], spread: float | None) -> list[str]:
    edm, fdm = runs.get("cunet-x1-edm"), runs.get("cunet-x1-edm-fdm")
    if edm is None or fdm is None:
        return []
    target = edm["final"]["fid"]
    reached = steps_to_reach(fdm["curve"], target)
    lines = ["\n### EDM-FDM against EDM (cUNet x1, same steps, seed 0)\n",
             "| step | EDM FID | EDM-FDM FID |", "|---:|---:|---:|"]  # fmt: skip
    fdm_points = {p["step"]: p for p in fdm["curve"] if "fid" in p}
    for point in (p for p in edm["curve"] if "fid" in p):
        other = fdm_points.get(point["step"])
        lines.append(f"| {point['step']} | {point['fid']:.2f} | {other['fid']:.2f} |" if other else "")
    if reached is None:
        lines.append(f"\nEDM-FDM does not reach EDM's final FID ({target:.2f}) within {fdm['steps']} steps "
                     f"(its final FID {fdm['final']['fid']:.2f}; seed spread {fmt(spread)}).")  # fmt: skip
    else:
        lines.append(
            f"\nEDM-FDM reaches EDM's final FID ({target:.2f}) at ~{reached:.0f} steps, "
            f"{reached / edm['steps']:.2f}x EDM's {edm['steps']} (goal 0.6x; seed spread {fmt(spread)})."
        )
    return lines


def fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def report_section(fashion: dict[str, Any], results: Path) -> list[str]:
    runs = {run["name"]: run for run in fashion["runs"]}
    floor = fashion["reference_real_vs_real"]
    spread = seed_spread(runs)
    judge = fashion.get("judge", {})
    lines = [
        "\n## Fashion-MNIST: quality against training and sampling time\n",
        f"`python -m benchmarks.fashion --mode {fashion['mode']}`, {fashion['date']}, device {fashion['device']} "
        f"({fashion['threads']} threads), torch {fashion['torch']}. 60,000 training images padded to 32x32; "
        f"{fashion['settings']['samples']:,} samples per score against {floor['real_images']:,} test images, in the "
        f"features of the committed judge (test accuracy {judge.get('test_accuracy', 'n/a')}); sampler DPM-Solver++ "
        f"{fashion['settings']['sampling_steps']} steps (EDM's for EDM-trained models). Floor (as many real "
        f"training images): FID **{floor['fid']:.2f}**, KID {floor['kid_mean']:.4f}, precision "
        f"{floor['precision']:.3f}, recall {floor['recall']:.3f}. Seed spread of FID: {fmt(spread)}.\n",
        f"Train s: median step x steps. s/image: each run's own scoring (not side by side), the median over batches "
        f"of {fashion['settings']['sample_batch']} images; on 2 CPU cores a batch of 250 is slower per image for the "
        "UNet2DModel than one of 64 (not so for the cUNet), so these sampling ratios favour the cUNet (the "
        "convergence queue times its models side by side in batches of 64).\n",
        "| model | params | steps | train s | FID | KID | precision | recall | classes | held-out err | s/image |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs.values():
        f = run["final"]
        lines.append(
            f"| `{run['name']}` | {run['params'] / 1e6:.2f} M | {run['steps']} | {run['train_seconds_median']:.0f} | "
            f"{f['fid']:.2f} | {f['kid_mean']:.4f} | {f['precision']:.3f} | {f['recall']:.3f} | "
            f"{f['classes_found']} of 10 | {run['held_out_error']:.4f} | {f['sampling_s_per_image'] * 1e3:.1f} ms |"
        )
    lines += ["\n### Same objective, same width\n",
              "| cUNet | UNet2DModel | FID gap | train time | sampling time | as good | target (<= 0.5x both) |",
              "|---|---|---:|---:|---:|---|---|"]  # fmt: skip
    for cunet, unet in pairs(runs):
        v = pair_verdict(runs[cunet], runs[unet], spread)
        lines.append(f"| `{cunet}` | `{unet}` | {v['fid_gap']:+.2f} | {v['train_ratio']:.2f}x | "
                     f"{v['sampling_ratio']:.2f}x | {'yes' if v['as_good'] else 'no'} | "
                     f"{'met' if v['meets_target'] else 'missed'} |")  # fmt: skip
    lines += ["\n### Across widths: cUNets as good (FID within the spread) at <= 0.5x the training time\n",
              *frontier(runs, spread)]  # fmt: skip
    lines += fdm_lines(runs, spread)
    sweeps = [run for run in runs.values() if len(run.get("sweep", [])) > 1]
    if sweeps:
        lines += ["\n### Sampler steps (FID against sampling time per image)\n",
                  "| model | steps | FID | s/image |", "|---|---:|---:|---:|"]  # fmt: skip
        for run in sweeps:
            for point in run["sweep"]:
                lines.append(f"| `{run['name']}` | {point['sampling_steps']} | {point['fid']:.2f} | "
                             f"{point['sampling_s_per_image'] * 1e3:.1f} ms |")  # fmt: skip
    plot(fashion, results / "fashion.png")
    lines.append(f"\n![FID against training and sampling time]({shown(results)}/fashion.png)\n")
    grids = [f"[{run['name']}]({run['samples_grid']})" for run in runs.values() if run.get("samples_grid")]
    lines.append("Sample grids (in the run folders, not committed): " + ", ".join(grids))
    return lines


def plot(fashion: dict[str, Any], path: Path) -> None:
    plt = pyplot()

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for run in fashion["runs"]:
        colour = "tab:blue" if run["model_type"] == "cunet" else "tab:orange"
        marker = "o" if run["extra"].get("preconditioning") == "edm" else "s"
        curve = [p for p in run["curve"] if "fid" in p]
        left.plot([p["train_seconds"] for p in curve], [p["fid"] for p in curve], marker=marker, color=colour,
                  alpha=0.8, label=run["name"])  # fmt: skip
        sweep = run.get("sweep") or [run["final"]]
        right.plot([p["sampling_s_per_image"] * 1e3 for p in sweep], [p["fid"] for p in sweep], marker=marker,
                   color=colour, alpha=0.8, label=run["name"])  # fmt: skip
    floor = fashion["reference_real_vs_real"]["fid"]
    for axis, label in ((left, "training seconds"), (right, "sampling ms per image")):
        axis.axhline(floor, color="grey", linestyle="--", label="floor (real vs real)")
        axis.set_xlabel(label)
        axis.set_ylabel("FID (judge features)")
        axis.set_yscale("log")
    left.legend(fontsize=6)
    figure.suptitle("Fashion-MNIST: cUNet (blue) vs UNet2DModel (orange); circles EDM, squares other objectives")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> paths.BenchmarkRun:
    parser = paths.benchmark_parser(__doc__, MODES, "cpu", only=True)
    args = parser.parse_args(argv)
    results, report_file = paths.outputs(args)
    start = time.perf_counter()
    runs = args.runs or paths.ROOT / "outputs" / "bench" / f"fashion-{args.mode}"
    run(args.mode, runs, results / RESULTS_FILE, args.only)
    return paths.BenchmarkRun("Fashion-MNIST benchmark", "benchmarks.fashion", args, results, report_file, start)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from .report import finish  # the command line: run, then rewrite the report

    finish(main())
