"""Where each denoiser errs: the held-out denoising error of the convergence queue's models at every noise level.

    python -m benchmarks.denoising_profile           # ~5 min on 2 CPU cores for the x0.5 pair (its weights needed)

At equal held-out error (the trainer's mean over four noise levels, sigma 0.1 to 3) the converged cUNets score a
worse FID than the UNet2DModels (BENCHMARKS.md's convergence table). A mean can hide where the error lies, and the
sampler visits the whole of EDM's range, from sigma 80 down to 0.002. This measures D(x + sigma n; sigma) against x
on held-out test images at levels spread evenly in log sigma over that range, with the same images and noise for
every model, for each seed-0 EDM run of the queue at its newest scored checkpoint still on disk (runs whose weights
were lost with an earlier machine are left out and named). The report sets the cUNet beside the UNet2DModel of its
width, level by level.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diffusers_cunet.atomic_write import replace_text
from diffusers_cunet.flops import count_parameters
from diffusers_cunet.objectives import EDMObjective
from diffusers_cunet.preconditioning import EDMPreconditioning
from evaluation.held_out import HeldOutError
from training.plotting import pyplot

from . import convergence, paths
from .paths import shown

RESULTS_FILE = "denoising_profile.json"


@dataclass(frozen=True)
class ProfileSettings:
    images: int  # held-out test images (with their labels: the models are class-conditional)
    levels: int  # noise levels, evenly spaced in log sigma over EDM's sampling range
    seed: int = 0  # of the noise: every model sees the same
    batch_size: int = 250


MODES = {"tiny": ProfileSettings(images=16, levels=3), "cpu": ProfileSettings(images=2000, levels=13)}


def profile_sigmas(levels: int) -> list[float]:
    """`levels` noise levels from EDM's sigma_min to its sigma_max (the range the recipe's sampler walks down, the
    preconditioning's defaults), evenly spaced in log sigma."""
    if levels < 2:
        raise ValueError(f"A profile needs at least 2 noise levels, got {levels}.")
    edm = EDMPreconditioning()
    ratio = math.log(edm.sigma_max / edm.sigma_min)
    return [edm.sigma_min * math.exp(ratio * index / (levels - 1)) for index in range(levels)]


def held_out_images(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `count` Fashion-MNIST test images in [-1, 1] (as the models were trained) and their labels."""
    from training.fashion_mnist import split_tensors

    images, labels = split_tensors("test")
    if count > len(images):
        raise ValueError(f"The test split has {len(images)} images; a profile of {count} was asked for.")
    return images[:count] * 2 - 1, labels[:count]


def denoising_errors(model, measure: HeldOutError) -> list[float]:
    """Mean squared error of the model's EDM denoiser against the clean images of `measure`, at each of its noise
    levels (image units)."""
    errors = measure(model.eval(), EDMObjective(model.preconditioning), "cpu")
    return [errors[f"sigma={sigma:g}"] for sigma in measure.sigmas]


def skip_only_errors(measure: HeldOutError, preconditioning: EDMPreconditioning) -> list[float]:
    """The same error for a network that outputs nothing: D = c_skip(sigma) (x + sigma n), the preconditioning alone
    (the best a denoiser can do by scaling its input, for data of standard deviation sigma_data). What a network
    removes of it is what it learnt."""
    images = measure.images.float()
    errors = []
    for sigma in measure.sigmas:
        denoised = preconditioning.c_skip(sigma) * (images + sigma * measure.noise)
        errors.append(torch.mean((denoised - images) ** 2).item())
    return errors


def profiled_runs(
    mode: str, folder: Path
) -> tuple[list[tuple[convergence.ConvergenceRun, dict[str, Any]]], list[str]]:
    """Each seed-0 EDM run of `mode` with the scored point of its newest checkpoint on disk, and the names of those
    without one (their weights not on disk)."""
    from training.checkpointing import checkpoint_step, list_checkpoints

    scored = {(point["run"], point["step"]): point for point in convergence.read_points(folder)
              if point.get("kind", "checkpoint") == "checkpoint"}  # fmt: skip
    found, missing = [], []
    for run in convergence.MODES[mode].runs:
        if run.seed != 0 or run.objective != "edm":
            continue
        steps = [checkpoint_step(path) for path in list_checkpoints(folder / run.name)]
        kept = [step for step in steps if (run.name, step) in scored]
        if kept:
            found.append((run, scored[(run.name, max(kept))]))
        else:
            missing.append(run.name)
    return found, missing


def run(mode: str, folder: Path, results_path: Path) -> dict[str, Any]:
    """Profile every run `profiled_runs` finds, write the results (JSON and plot) and return them."""
    from .common import load_ema

    settings = MODES[mode]
    found, missing = profiled_runs(mode, folder)
    if not found:
        raise FileNotFoundError(f"No run of the {mode} convergence queue in {folder} has a scored checkpoint on disk "
                                "to profile (python -m benchmarks.convergence trains them).")  # fmt: skip
    images, labels = held_out_images(settings.images)
    sigmas = profile_sigmas(settings.levels)
    measure = HeldOutError(images, labels, seed=settings.seed, sigmas=tuple(sigmas), batch_size=settings.batch_size)
    rows = []
    for spec, point in found:
        started, step = time.perf_counter(), point["step"]
        model = load_ema(folder / spec.name / f"checkpoint-{step}", spec.model_type)
        errors = denoising_errors(model, measure)
        rows.append({"name": spec.name, "network": spec.model_type, "width": convergence.run_model(spec)[1],
                     "step": step, "params": count_parameters(model), "fid": point["fid"],
                     "held_out_error": point.get("held_out_error"), "errors": errors,
                     "seconds": time.perf_counter() - started})  # fmt: skip
        print(f"{spec.name} at step {step}: " + ", ".join(f"{s:.3g}: {e:.2e}" for s, e in zip(sigmas, errors)),
              flush=True)  # fmt: skip
    results = {"mode": mode, "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
               "threads": torch.get_num_threads(), "images": settings.images, "seed": settings.seed,
               "sigmas": sigmas, "skip_only": skip_only_errors(measure, EDMPreconditioning()), "runs": rows,
               "without_weights": missing}  # fmt: skip
    replace_text(results_path, json.dumps(results, indent=2))
    plot(results, results_path.with_suffix(".png"))
    return results


def width_pairs(results: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(cUNet, UNet2DModel) rows of the same width, widest first."""
    by_width: dict[str, dict[str, dict[str, Any]]] = {}
    for row in results["runs"]:
        by_width.setdefault(row["width"], {})[row["network"]] = row
    pairs = [(rows["cunet"], rows["unet2d"]) for rows in by_width.values() if {"cunet", "unet2d"} <= set(rows)]
    return sorted(pairs, key=lambda pair: -pair[0]["params"])


def pair_reading(cunet: dict[str, Any], unet: dict[str, Any], sigmas: list[float]) -> str:
    """One sentence: at how many levels the cUNet's error is the higher, and where the gap is widest each way."""
    ratios = [a / b for a, b in zip(cunet["errors"], unet["errors"])]
    worse = [index for index, ratio in enumerate(ratios) if ratio > 1]
    most, least = max(range(len(ratios)), key=ratios.__getitem__), min(range(len(ratios)), key=ratios.__getitem__)
    return (f"`{cunet['name']}` (step {cunet['step']:,}, FID {cunet['fid']:.2f}) against `{unet['name']}` (step "
            f"{unet['step']:,}, FID {unet['fid']:.2f}): the cUNet's error is the higher at {len(worse)} of "
            f"{len(ratios)} noise levels; most at sigma {sigmas[most]:.3g} ({ratios[most]:.2f}x the UNet2DModel's), "
            f"least at sigma {sigmas[least]:.3g} ({ratios[least]:.2f}x).")  # fmt: skip


def report_section(results: dict[str, Any], folder: Path) -> list[str]:
    """The profile's table (a column per run, the cUNet / UNet2DModel ratio per width), its reading and plot."""
    sigmas, rows, pairs = results["sigmas"], results["runs"], width_pairs(results)
    ratio_columns = [f"{cunet['width']}: cUNet / UNet2DModel" for cunet, _ in pairs]
    lines = [
        "\n## Where each denoiser errs: held-out error by noise level\n",
        f"`python -m benchmarks.denoising_profile` ({results['date']}, torch {results['torch']}, "
        f"{results['threads']} threads): the mean squared error of D(x + sigma n; sigma) against x (image units, "
        f"images in [-1, 1]) on {results['images']:,} Fashion-MNIST test images with their labels, the same noise "
        f"for every model, at {len(sigmas)} noise levels spread evenly in log sigma over EDM's sampling range, "
        "for each seed-0 EDM run of the convergence queue at its newest scored checkpoint (EMA weights). The "
        "trainer's held-out error (the convergence table's) is the mean of four such levels (0.1 to 3). 'Skip alone': "
        "the error of the preconditioning with a network that outputs nothing, D = c_skip(sigma) (x + sigma n); a "
        "network's work is what it removes of that.\n",
        "| sigma | skip alone | " + " | ".join([*(f"`{row['name']}`" for row in rows), *ratio_columns]) + " |",
        "|---:|---:|" + "---:|" * (len(rows) + len(pairs)),
    ]
    for index, sigma in enumerate(sigmas):
        cells = [f"{results['skip_only'][index]:.2e}", *(f"{row['errors'][index]:.2e}" for row in rows)]
        cells += [f"{cunet['errors'][index] / unet['errors'][index]:.2f}x" for cunet, unet in pairs]
        lines.append(f"| {sigma:.3g} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"- {pair_reading(cunet, unet, sigmas)}" for cunet, unet in pairs]
    if results["without_weights"]:
        names = ", ".join(f"`{name}`" for name in results["without_weights"])
        lines.append(f"- Not profiled (no scored checkpoint on disk: weights lost with an earlier machine, or not "
                     f"trained yet): {names}.")  # fmt: skip
    lines.append(f"\n![held-out error against the noise level]({shown(folder)}/denoising_profile.png)\n")
    return lines


def plot(results: dict[str, Any], path: Path) -> None:
    """Error against sigma for every run (left) and the cUNet / UNet2DModel ratio per width (right), log axes."""
    plt = pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    sigmas = results["sigmas"]
    for row in results["runs"]:
        left.loglog(sigmas, row["errors"], marker="o", linestyle="-" if row["network"] == "cunet" else "--",
                    label=f"{row['name']} (FID {row['fid']:.2f})")  # fmt: skip
    for cunet, unet in width_pairs(results):
        right.semilogx(sigmas, [a / b for a, b in zip(cunet["errors"], unet["errors"])], marker="o",
                       label=f"{cunet['width']}")  # fmt: skip
    right.axhline(1.0, color="grey", linewidth=0.8)
    left.set(xlabel="sigma", ylabel="held-out MSE of D(x; sigma)", title="denoising error by noise level")
    right.set(xlabel="sigma", ylabel="cUNet error / UNet2DModel error", title="same width")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[1]:
            axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> paths.BenchmarkRun:
    runs_help = f"the runs root the convergence queue trains in (as its --runs; else ${convergence.RUNS_VARIABLE})"
    parser = paths.benchmark_parser(__doc__, MODES, "cpu", runs_help=runs_help)
    args: argparse.Namespace = parser.parse_args(argv)
    results, report_file = paths.outputs(args)
    start = time.perf_counter()
    run(args.mode, convergence.runs_folder(args.runs, args.mode), results / RESULTS_FILE)
    return paths.BenchmarkRun("Denoising profile", "benchmarks.denoising_profile", args, results, report_file, start,
                              default_mode="cpu")  # fmt: skip


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from .report import finish  # the command line: run, then rewrite the report

    finish(main())
