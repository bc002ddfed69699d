"""Quality at equal training on the embedded digits: cUNets and UNet2DModels of several widths, trained by
`training/train.py` with one recipe, then sampled and scored against held-out digits.

Scores use a digit classifier trained here (fixed seed) as the feature network: Fréchet distance, KID and the
share of samples it recognises confidently. Also: quality against training steps (from the checkpoints), the
Pareto frontier of quality against training time / FLOPs / sampling latency, and denoising PSNR/SSIM.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EDMDPMSolverMultistepScheduler

from diffusers_cunet.atomic_write import replace_text
from diffusers_cunet.flops import count_forward_flops, count_parameters
from diffusers_cunet.pipelines import ContinuousUNetDenoisePipeline
from diffusers_cunet.pipelines.pipeline_continuous_unet_denoise import image_quality
from diffusers_cunet.pipelines.scheduler_support import EDM_SCHEDULERS
from evaluation.digits import DIGITS, HELD_OUT_DIGITS, fitted_recognizer, frechet_and_kid, held_out_digits
from training.loop import train
from training.options import make_config
from training.plotting import pyplot

from . import frontier
from .common import checkpoint_models, chosen_variants, sample
from .paths import shown

RESULTS_FILE = "quality.json"  # in the results folder; its report section is `report_section`
TRAINING_DIGITS = DIGITS - HELD_OUT_DIGITS  # what the digits benchmarks train on


@dataclass
class Variant:
    """One model trained in the comparison."""

    name: str
    model_type: str  # "cunet" | "unet2d"
    block_out_channels: tuple[int, ...]
    solver: tuple[str, int] | None = None  # (method, steps) for the cUNet
    extra: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    # (this model's run at the mode's steps, the run to match, share of its training time): trained separately for
    # that many seconds, converted to steps at the first run's measured seconds per step
    equal_time: tuple[str, str, float] | None = None
    denoise: bool = False  # also score denoising held-out digits and photo patches (DDPM-trained models)

    def train_options(self) -> dict[str, Any]:
        options = {"model_type": self.model_type, "block_out_channels": list(self.block_out_channels)}
        options["seed"] = self.seed
        if self.solver:
            options.update(solver_method=self.solver[0], solver_steps=self.solver[1])
        return {**options, **self.extra}


@dataclass
class Settings:
    steps: int
    batch_size: int
    samples: int
    sampling_steps: int
    curve_points: int
    resolution: int = 16
    learning_rate: float = 1e-3
    seed: int = 0
    edm_sampling_steps: int = 20  # EDM-trained models: their saved EDM DPM-Solver++ sampler
    # the fractions of training whose checkpoints are sampled and scored (the nearest checkpoint to each); None:
    # every checkpoint. The held-out error is measured at every checkpoint either way.
    scored_fractions: tuple[float, ...] | None = None


MODES = {
    "tiny": Settings(steps=6, batch_size=16, samples=16, sampling_steps=3, curve_points=2, resolution=8),
    "quick": Settings(steps=200, batch_size=64, samples=256, sampling_steps=25, curve_points=2),
    # to convergence on 2 CPU cores in ~1.8 h; 70% is the convergence check's comparison point
    "full": Settings(1000, batch_size=64, samples=500, sampling_steps=50, curve_points=10, scored_fractions=(0.7, 1)),
    # one process per model side by side on one GPU (python -m benchmarks.parallel): defaults and seed spread
    "gpu": Settings(steps=1200, batch_size=128, samples=1000, sampling_steps=50, curve_points=4),
}
EDM = {"preconditioning": "edm"}
X1_EDM, X05_EDM = "cunet-x1-euler1-edm", "cunet-x0.5-euler1-edm"


def variants(mode: str) -> list[Variant]:
    if mode == "tiny":
        cunet, unet2d = ("cunet", (16, 32), ("euler", 1)), ("unet2d", (16, 32))
        return [
            Variant("cunet-x1", *cunet, denoise=True),
            Variant("unet2d-x1", *unet2d, denoise=True),
            Variant("cunet-x1-0.7t", *cunet, equal_time=("cunet-x1", "unet2d-x1", 0.7)),
        ]
    widths = {"x0.25": (8, 16, 32), "x0.5": (16, 32, 64), "x1": (32, 64, 128), "x1.5": (48, 96, 192)}
    if mode == "gpu":  # most important first: a run out of time keeps the first ones
        x1, half = widths["x1"], widths["x0.5"]
        return [
            Variant("cunet-x1-euler1-edm", "cunet", x1, ("euler", 1), EDM),
            Variant("unet2d-x1", "unet2d", x1, denoise=True),
            Variant("cunet-x1-euler1", "cunet", x1, ("euler", 1)),
            Variant("cunet-x1-euler2", "cunet", x1, ("euler", 2)),
            Variant("cunet-x1-euler2-edm", "cunet", x1, ("euler", 2), EDM),
            Variant("cunet-x1-rk4", "cunet", x1, ("rk4", 1)),
            Variant("cunet-x1-euler1-edm-s1", "cunet", x1, ("euler", 1), EDM, seed=1),
            Variant("unet2d-x1-s1", "unet2d", x1, seed=1),
            Variant("cunet-x1.5-euler1-edm", "cunet", widths["x1.5"], ("euler", 1), EDM),
            Variant("cunet-x0.5-euler1-edm", "cunet", half, ("euler", 1), EDM),
            Variant("unet2d-x0.5", "unet2d", half),
            Variant("cunet-x1-euler1-s1", "cunet", x1, ("euler", 1), seed=1),
        ]
    if mode == "full":  # most important first; the UNet2DModel trains DDPM-style only (EDM is a cUNet config)
        x1, half, euler1 = widths["x1"], widths["x0.5"], ("euler", 1)
        return [
            Variant("cunet-x1-euler1-edm", "cunet", x1, euler1, EDM),
            Variant("unet2d-x1", "unet2d", x1, denoise=True),
            Variant("cunet-x1-euler1", "cunet", x1, euler1, denoise=True),
            # the target's test, each trained for its own seconds: cUNets at 0.7x the UNet2DModel's training time
            Variant("cunet-x1-euler1-edm-0.7t", "cunet", x1, euler1, EDM, equal_time=(X1_EDM, "unet2d-x1", 0.7)),
            Variant("cunet-x1-euler1-0.7t", "cunet", x1, euler1, equal_time=("cunet-x1-euler1", "unet2d-x1", 0.7)),
            Variant("cunet-x1-euler1-edm-s1", "cunet", x1, euler1, EDM, seed=1),
            Variant("unet2d-x1-s1", "unet2d", x1, seed=1),
            Variant("cunet-x1-euler2-edm", "cunet", x1, ("euler", 2), EDM),
            Variant("cunet-x0.5-euler1-edm", "cunet", half, euler1, EDM),
            Variant("unet2d-x0.5", "unet2d", half),
            Variant(
                "cunet-x0.5-euler1-edm-0.7t", "cunet", half, euler1, EDM, equal_time=(X05_EDM, "unet2d-x0.5", 0.7)
            ),
            Variant("cunet-x0.25-euler1-edm", "cunet", widths["x0.25"], euler1, EDM),
            Variant("unet2d-x0.25", "unet2d", widths["x0.25"]),
            Variant("cunet-x1-rk4-edm", "cunet", x1, ("rk4", 1), EDM),
        ]
    del widths["x0.25"]
    out = [Variant(f"cunet-{w}", "cunet", c, ("euler", 1), denoise=w == "x1") for w, c in widths.items()]
    out.append(Variant("cunet-x1-rk4", "cunet", widths["x1"], ("rk4", 1)))
    out += [Variant(f"unet2d-{w}", "unet2d", c, denoise=w == "x1") for w, c in widths.items()]
    return out


def variant_steps(variant: Variant, rows: dict[str, dict[str, Any]], settings, time_key: str = "train_seconds") -> int:
    """The mode's steps, or for an equal-time variant the steps that take its share of the matched run's training
    seconds (`time_key` of its row) at the measured seconds per step of the same model's run (both trained earlier
    in this run)."""
    if variant.equal_time is None:
        return settings.steps
    same_model, matched, share = variant.equal_time
    missing = [name for name in (same_model, matched) if name not in rows]
    if missing:
        raise ValueError(f"{variant.name} is timed from {missing}: train them first (in the same run).")
    seconds_per_step = rows[same_model][time_key] / rows[same_model]["steps"]
    return max(1, round(share * rows[matched][time_key] / seconds_per_step))


def evaluate(unet, noise_config, real, feature_net, recognizer, settings: Settings) -> dict[str, float]:
    """Scores of `settings.samples` samples: DDIM for DDPM-style models, EDM DPM-Solver++ for EDM-trained ones."""
    if noise_config.get("_class_name") in EDM_SCHEDULERS:
        scheduler, steps = EDMDPMSolverMultistepScheduler.from_config(noise_config), settings.edm_sampling_steps
    else:
        scheduler, steps = DDIMScheduler.from_config(noise_config), settings.sampling_steps
    images, seconds, evaluations = sample(unet, scheduler, settings.samples, steps, settings.seed)
    scores = frechet_and_kid(real, images, feature_net)
    scores["sampling_steps"] = steps
    scores["recognisable"] = recognizer.confident_share(images)
    scores["sampling_s_per_image"] = seconds
    scores["ode_evaluations_per_image"] = evaluations
    return scores


def denoise_scores(unet, noise_config, clean: torch.Tensor, settings: Settings) -> list[dict[str, float]]:
    """PSNR/SSIM of denoising `clean` images (in [0, 1]) after adding noise; the paper's two settings and a sweep."""
    scheduler = DPMSolverMultistepScheduler.from_config(noise_config)
    pipe = ContinuousUNetDenoisePipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    target = clean * 2 - 1
    rows = []
    cases = [(0.04, 4), (0.15, 20), (0.02, 4), (0.08, 4), (0.3, 20), (0.5, 20)]
    for noise_std, steps in cases:
        noisy = target + noise_std * torch.randn(target.shape, generator=torch.Generator().manual_seed(settings.seed))
        noisy_psnr, noisy_ssim = image_quality(((noisy + 1) / 2).clamp(0, 1), clean)
        try:
            start = time.perf_counter()
            out = pipe(noisy, noise_std=noise_std, num_inference_steps=steps, clean_images=target,
                       generator=torch.Generator().manual_seed(settings.seed))  # fmt: skip
            seconds = (time.perf_counter() - start) / len(clean)
        except ValueError as error:  # a step count the schedule cannot fit below this noise level
            rows.append({"noise_std": noise_std, "steps": steps, "error": str(error)})
            continue
        rows.append({"noise_std": noise_std, "steps": steps, "psnr": out.psnr, "ssim": out.ssim,
                     "noisy_psnr": noisy_psnr, "noisy_ssim": noisy_ssim, "s_per_image": seconds})  # fmt: skip
    return rows


def photo_patches(count: int, size: int, seed: int) -> torch.Tensor:
    """Grey patches of scikit-learn's two sample photos, in [0, 1]: natural images the digit models never saw."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    patches = []
    for k in range(count):
        photo = load_sample_images().images[k % 2]
        top, left = rng.integers(0, photo.shape[0] - 4 * size), rng.integers(0, photo.shape[1] - 4 * size)
        crop = Image.fromarray(photo[top : top + 4 * size, left : left + 4 * size]).convert("L").resize((size, size))
        patches.append(np.asarray(crop, dtype=np.float32) / 255.0)
    return torch.from_numpy(np.stack(patches))[:, None]


def run(mode: str, output_root: Path, results_path: Path, only: list[str] | None = None) -> dict[str, Any]:
    """Train and score the models of `mode` (those named in `only`, if given) and write `results_path`."""
    settings = MODES[mode]
    chosen = chosen_variants(variants(mode), only, mode)
    digits = held_out_digits(settings.resolution, seed=settings.seed)
    train_images, real, feature_net = digits.train_images, digits.real, digits.feature_net
    recognizer = fitted_recognizer(seed=settings.seed, training_digits=len(train_images))
    reference = frechet_and_kid(real, train_images[: settings.samples], feature_net)
    reference["recognisable"] = recognizer.confident_share(real)
    photos = photo_patches(64, settings.resolution, settings.seed)  # the denoising test's photo patches
    rows: dict[str, dict[str, Any]] = {}
    results: dict[str, Any] = {}
    for variant in chosen:
        steps = variant_steps(variant, rows, settings)
        interval = max(1, steps // settings.curve_points)
        output = output_root / variant.name
        config = make_config(
            output_dir=output, dataset_name="digits", resolution=settings.resolution,
            held_out_samples=HELD_OUT_DIGITS, train_batch_size=settings.batch_size,
            max_train_steps=steps, learning_rate=settings.learning_rate,
            lr_warmup_steps=max(1, steps // 20), checkpointing_steps=interval, checkpoints_total_limit=100,
            validation_steps=interval, num_validation_images=16, validation_inference_steps=10,
            report_to="none", logging_steps=10, resume_from_checkpoint="latest", **variant.train_options(),
        )  # fmt: skip
        print(f"\n=== training {variant.name} ({steps} steps) ===", flush=True)
        result = train(config)
        unet = result.unet.eval()
        noise_config = json.loads((output / "scheduler" / "scheduler_config.json").read_text())
        train_seconds = result.train_seconds
        held_out = {entry["step"]: entry["mean"] for entry in result.held_out_error}
        curve = []
        for step, model in checkpoint_models(output, variant.model_type, steps, settings.scored_fractions,
                                             device=unet.device):  # fmt: skip
            point = {"step": step, "train_seconds": train_seconds * step / steps, "held_out_error": held_out.get(step)}
            if model is not None:
                point.update(evaluate(model, noise_config, real, feature_net, recognizer, settings))
            curve.append(point)
        flops_per_call = count_forward_flops(unet)
        final = curve[-1] if curve else evaluate(unet, noise_config, real, feature_net, recognizer, settings)
        print(f"{variant.name}: {json.dumps(final)}", flush=True)
        rows[variant.name] = {
            **asdict(variant),
            "steps": steps,
            "params": count_parameters(unet),
            "gflops_per_call": flops_per_call / 1e9,
            "gflops_per_sample": flops_per_call * final["sampling_steps"] / 1e9,
            "train_seconds": train_seconds,
            "train_images_per_s": result.images_per_second,
            "final_loss": result.final_loss,
            "held_out_error": result.held_out_error[-1]["mean"],  # EMA denoising MSE on the 300 held-out digits
            "final": final,
            "curve": curve,
            "denoise_digits": denoise_scores(unet, noise_config, real[:64], settings) if variant.denoise else None,
            "denoise_photos": denoise_scores(unet, noise_config, photos, settings) if variant.denoise else None,
        }  # fmt: skip
        # after each model, so that a stopped run keeps the finished ones
        results = write_results(results_path, mode, settings, reference, list(rows.values()))
    return results


def write_results(path: Path, mode: str, settings: Settings, reference: dict, runs: list[dict],
                  **extra: Any) -> dict[str, Any]:  # fmt: skip
    """Write the results of `runs` so far, the machine and any `extra` entries to `path` (atomically) and return
    them."""
    result = {
        "mode": mode,
        "settings": asdict(settings),
        "reference_real_vs_real": reference,
        "runs": runs,
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        **extra,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_text(path, json.dumps(result, indent=2))
    return result


# ------------------------------------------------------------------------------ its section of the report
def held_out_text(run: dict[str, Any]) -> str:
    """The held-out denoising error of a run (results from before it was measured have none)."""
    return f"{run['held_out_error']:.4f}" if run.get("held_out_error") is not None else "-"


def quality_section(quality: dict[str, Any], results: Path) -> list[str]:
    s = quality["settings"]
    edm_steps = s.get("edm_sampling_steps", 20)
    ref = quality["reference_real_vs_real"]
    lines = [
        f"\n## Quality at equal training (digits, {quality['mode']} mode)\n",
        f"Every model trained by `training/train.py` with one recipe: {s['steps']} steps, batch {s['batch_size']}, "
        f"AdamW lr {s['learning_rate']}, cosine schedule, EMA, seed {s['seed']}, on the first {TRAINING_DIGITS:,} "
        f"digits at {s['resolution']}x{s['resolution']}. Scored on {s['samples']} samples (DDIM {s['sampling_steps']} "
        f"steps; EDM DPM-Solver++ {edm_steps} steps for the EDM-trained `-edm` models; EMA weights) against the "
        f"{HELD_OUT_DIGITS} held-out digits, in the feature space of a digit classifier trained here. "
        f"Real-vs-real floor (training digits vs held-out): FD {ref['frechet_distance']:.1f}, KID "
        f"{ref['kid_mean']:.1f}; {ref['recognisable']:.0%} of held-out digits recognised. "
        f"{quality['date']}, torch {quality['torch']}, {quality.get('device', 'cpu')}, "
        f"{quality['threads']} threads.\n",
        "| model | params | GFLOPs/call | steps | train time (s) | train img/s | final loss | held-out error ↓ | FD ↓ "
        "| KID ↓ | recognised ↑ | sampling s/image | ODE evals/image |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in quality["runs"]:
        f = r["final"]
        lines.append(
            f"| {r['name']} | {r['params']:,} | {r['gflops_per_call']:.3f} | {r.get('steps', s['steps'])} | "
            f"{r['train_seconds']:.0f} | "
            f"{r['train_images_per_s']:.0f} | {r['final_loss']:.4f} | {held_out_text(r)} | "
            f"{f['frechet_distance']:.1f} | "
            f"{f['kid_mean']:.1f} | {f['recognisable']:.2f} | {f['sampling_s_per_image'] * 1000:.1f} ms | "
            f"{f['ode_evaluations_per_image'] or '-'} |"
        )
    lines += [
        f"\n![quality against training time]({shown(results)}/quality_curves.png)",
        f"\n![Pareto frontiers]({shown(results)}/frontier.png)\n",
    ]
    for key, title in (("denoise_digits", "held-out digits"), ("denoise_photos", "grey patches of real photos")):
        runs = [r for r in quality["runs"] if r.get(key)]
        if not runs:
            continue
        lines.append(f"\n### Denoising {title} (DPM-Solver++, PSNR dB / SSIM)\n")
        lines.append("| noise std | steps | noisy input | " + " | ".join(r["name"] for r in runs) + " |")
        lines.append("|---:|---:|---:|" + "---:|" * len(runs))
        for i, case in enumerate(runs[0][key]):
            if "psnr" not in case:
                continue
            cells = []
            for r in runs:
                c = r[key][i]
                cells.append(
                    f"{c['psnr']:.2f} / {c['ssim']:.3f} ({c['s_per_image'] * 1000:.1f} ms)" if "psnr" in c else "-"
                )
            lines.append(f"| {case['noise_std']} | {case['steps']} | {case['noisy_psnr']:.2f} / "
                         f"{case['noisy_ssim']:.3f} | " + " | ".join(cells) + " |")  # fmt: skip
    return lines


def plot_quality(quality: dict[str, Any], curves_path: Path, frontier_path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    panels = [("held_out_error", "held-out denoising error (lower is better)"),
              ("frechet_distance", "Fréchet distance (lower is better)")]  # fmt: skip
    for axis, (key, label) in zip(ax, panels):
        for r in quality["runs"]:
            points = [c for c in r["curve"] if c.get(key) is not None]
            style = "o-" if r["model_type"] == "cunet" else "s--"
            axis.plot([c["train_seconds"] for c in points], [c[key] for c in points], style, label=r["name"])
        axis.set(xlabel="training wall time (s)", ylabel=label, yscale="log")
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(curves_path, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(1, 3, figsize=(13, 4))
    axes = [("train_seconds", "training wall time (s)"), ("gflops_per_sample", "GFLOPs per sample"),
            ("sampling", "sampling latency per image (ms)")]  # fmt: skip
    for axis, (key, label) in zip(ax, axes):
        for model_type, marker in (("cunet", "o"), ("unet2d", "s")):
            runs = [r for r in quality["runs"] if r["model_type"] == model_type]
            xs = [r["final"]["sampling_s_per_image"] * 1000 if key == "sampling" else r[key] for r in runs]
            ys = [r["final"]["frechet_distance"] for r in runs]
            axis.scatter(xs, ys, marker=marker, label="cUNet" if model_type == "cunet" else "UNet2DModel")
            for x, y, r in zip(xs, ys, runs):
                axis.annotate(r["name"].split("-", 1)[1], (x, y), fontsize=7)
        axis.set(xlabel=label, ylabel="Fréchet distance (lower is better)", xscale="log", yscale="log")
    ax[0].legend()
    fig.tight_layout()
    fig.savefig(frontier_path, dpi=110)
    plt.close(fig)


def pareto(runs: list[dict[str, Any]], cost_key) -> list[str]:
    """Names of the runs no other run beats on both cost and Fréchet distance."""
    front = []
    for r in runs:
        c, q = cost_key(r), r["final"]["frechet_distance"]
        if not any(cost_key(o) <= c and o["final"]["frechet_distance"] < q and o is not r for o in runs):
            front.append(r["name"])
    return front


def report_section(quality: dict[str, Any], results: Path) -> list[str]:
    """The digits quality section of BENCHMARKS.md, with its plots written to `results`."""
    plot_quality(quality, results / "quality_curves.png", results / "frontier.png")
    lines = [*quality_section(quality, results), "\n### Pareto frontier (Fréchet distance against cost)\n"]
    for label, key in (("training wall time", frontier.training_seconds),
                       ("GFLOPs per sample", lambda r: r["gflops_per_sample"]),
                       ("sampling latency", frontier.sampling_seconds)):  # fmt: skip
        lines.append(f"- {label}: " + ", ".join(pareto(quality["runs"], key)))
    return lines + frontier.section(quality["runs"])
