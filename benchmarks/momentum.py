"""DDPM-style vs EDM vs EDM-FDM training of the same cUNet on the embedded digits (issue: FDM, arXiv 2306.06991).

    python -m benchmarks.momentum                # quick: 1,500 steps (the demo trains 1,000), about 31 min on 2 cores
    python -m benchmarks.momentum --mode tiny    # seconds: the smoke test

All three runs use `training/configs/digits.yaml` (batch, learning rate, EMA, seed) and differ only in
`--preconditioning`. Quality is the Fréchet distance to the 300 held-out digits in a digit classifier's feature
space (no download), with common random numbers: (1) against training steps, from the EMA weights of every
checkpoint, each method with its own sampler at the same number of network calls; (2) against sampling steps
(network calls) for the final models. Results: `momentum.json`, `momentum.png` and `momentum_samples.png` in
outputs/benchmarks/results/ (with --publish: the tracked benchmarks/results/), and a section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from diffusers_cunet.pipelines import ContinuousUNetPipeline
from diffusers_cunet.preconditioning import edm_scheduler
from evaluation.digits import HELD_OUT_DIGITS, frechet_and_kid, held_out_digits
from training.loop import train
from training.options import make_config
from training.plotting import pyplot

from . import paths
from .common import checkpoint_models, sample

RESULTS_FILE = "momentum.json"  # in the results folder; its report section is `report_section`
ABLATION_RESULTS_FILE = "momentum_ablation.json"

DIGITS_RECIPE = yaml.safe_load((paths.ROOT / "training" / "configs" / "digits.yaml").read_text())  # make demo's
METHODS = {
    "ddpm": {"preconditioning": "none"},
    "edm": {"preconditioning": "edm"},
    "edm-fdm": {"preconditioning": "edm-fdm"},
}
LABELS = {"ddpm": "DDPM (eps, cosine)", "edm": "EDM", "edm-fdm": "EDM-FDM (m = 1)"}
# Which part of EDM-FDM does what: its input scaling without the warm-up, and the warm-up on plain EDM.
ABLATIONS = {
    "edm-fdm-no-warmup": {"preconditioning": "edm-fdm", "loss_weight_warmup_steps": 0},
    "edm-warmup": {"preconditioning": "edm", "loss_weight_warmup_steps": 200},
    "edm-fdm-normalized": {"preconditioning": "edm-fdm", "fdm_normalize_input": True},  # our variant
    # a second training seed (same evaluation seed) for the two best, to see the run-to-run spread
    "edm-seed1": {"preconditioning": "edm", "seed": 1},
    "edm-warmup-seed1": {"preconditioning": "edm", "loss_weight_warmup_steps": 200, "seed": 1},
}
ABLATION_LABELS = {
    "edm-fdm-no-warmup": "EDM-FDM input scaling, no warm-up",
    "edm-warmup": "EDM + FDM warm-up 200",
    "edm-fdm-normalized": "EDM c_in x FDM factor, warm-up 200 (ours)",
    "edm-seed1": "EDM, training seed 1",
    "edm-warmup-seed1": "EDM + FDM warm-up 200, training seed 1",
}


@dataclass
class Settings:
    steps: int
    checkpoint_every: int
    samples: int
    curve_calls: int  # network calls per sample when scoring checkpoints
    sweep_calls: tuple[int, ...]
    batch_size: int = 64
    resolution: int = 16
    block_out_channels: tuple[int, ...] | None = None  # None: the digits-16 preset
    seed: int = 0


MODES = {
    "tiny": Settings(steps=4, checkpoint_every=2, samples=16, curve_calls=3, sweep_calls=(2, 3), batch_size=16,
                     resolution=8, block_out_channels=(16, 32)),
    "quick": Settings(steps=1500, checkpoint_every=150, samples=250, curve_calls=25,
                      sweep_calls=(3, 5, 8, 12, 16, 25, 50, 100)),
}  # fmt: skip


def samplers(method: str, unet, ddpm_config: dict[str, Any] | None) -> dict[str, Any]:
    """The samplers each kind of model is scored with: its usual one first (used for the training curve)."""
    if method == "ddpm":
        return {"DDIM": DDIMScheduler.from_config(ddpm_config),
                "DPM-Solver++": DPMSolverMultistepScheduler.from_config(ddpm_config)}  # fmt: skip
    return {"EDM DPM-Solver++": edm_scheduler(unet, "dpmsolver++"), "EDM Euler": edm_scheduler(unet, "euler")}


def score(unet, scheduler, calls: int, real, feature_net, settings: Settings) -> dict[str, float]:
    """Fréchet distance of `settings.samples` images drawn with `calls` network calls each."""
    images, seconds, _ = sample(unet, scheduler, settings.samples, calls, settings.seed)
    scores = frechet_and_kid(real, images, feature_net)
    return {"calls": calls, "frechet_distance": scores["frechet_distance"], "kid_mean": scores["kid_mean"],
            "s_per_image": seconds}  # fmt: skip


def reaching(points: list[dict[str, Any]], key: str, target: float) -> tuple[int | None, int | None]:
    """For points ordered by `key` (training step or network calls): the first at or below `target` Fréchet
    distance, and the first from which every later point stays at or below it (None if none)."""
    first = next((p[key] for p in points if p["frechet_distance"] <= target), None)
    stays = None
    for p in reversed(points):
        if p["frechet_distance"] > target:
            break
        stays = p[key]
    return first, stays


def run(
    mode: str, runs_root: Path, results_path: Path, ablation: bool = False, variants: list[str] | None = None
) -> dict[str, Any]:
    """Train and score the three methods (or, with `ablation`, the ablations: curves only; `variants` picks some
    of them and adds them to an existing results file)."""
    settings = MODES[mode]
    digits = held_out_digits(settings.resolution, seed=settings.seed)
    train_images, real, feature_net = digits.train_images, digits.real, digits.feature_net
    reference = frechet_and_kid(real, train_images[: settings.samples], feature_net)["frechet_distance"]
    rows: dict[str, Any] = {}
    chosen = ABLATIONS if ablation else METHODS
    for method, extra in ((m, chosen[m]) for m in (variants or chosen)):
        output = runs_root / method
        options = {
            **DIGITS_RECIPE, "output_dir": output, "resolution": settings.resolution,
            "held_out_samples": HELD_OUT_DIGITS, "train_batch_size": settings.batch_size,
            "max_train_steps": settings.steps, "checkpointing_steps": settings.checkpoint_every,
            "checkpoints_total_limit": 1000, "validation_steps": 0, "num_validation_images": 16, "report_to": "none",
            "seed": settings.seed, **extra,
        }  # fmt: skip
        if settings.block_out_channels:
            options["block_out_channels"] = list(settings.block_out_channels)
        print(f"\n=== training {method} ({settings.steps} steps) ===", flush=True)
        result = train(make_config(**options))
        ddpm_config = None
        if method == "ddpm":
            ddpm_config = json.loads((output / "scheduler" / "scheduler_config.json").read_text())
        history = json.loads((output / "metrics.json").read_text())["loss_history"]
        curve = []
        for step, model in checkpoint_models(output, "cunet", settings.steps):  # every checkpoint scored
            scheduler = next(iter(samplers(method, model, ddpm_config).values()))
            point = score(model, scheduler, settings.curve_calls, real, feature_net, settings)
            curve.append({"step": step, **point})
            print(f"{method} step {step}: FD {point['frechet_distance']:.1f}", flush=True)
        unet = result.unet.eval()
        sweeps = {}
        for name, scheduler in samplers(method, unet, ddpm_config).items() if not ablation else ():
            sweeps[name] = [score(unet, scheduler, n, real, feature_net, settings) for n in settings.sweep_calls]
            print(f"{method} {name}: " + ", ".join(f"{p['calls']}: {p['frechet_distance']:.1f}" for p in sweeps[name]))
        rows[method] = {
            "label": (ABLATION_LABELS if ablation else LABELS)[method],
            "final_loss": result.final_loss,
            "held_out_error": result.held_out_error[-1]["mean"],
            "train_seconds": result.train_seconds,
            "loss_history": [(h["step"], h["loss"]) for h in history],
            "curve": curve,
            "sweeps": sweeps,
        }
    result = {"mode": mode, "settings": asdict(settings), "real_vs_train_fd": reference, "runs": rows,
              "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
              "threads": torch.get_num_threads()}  # fmt: skip
    if not ablation:
        result["summary"] = summarise(rows, settings.steps)
    if variants and results_path.exists():  # keep the variants run before
        result["runs"] = {**json.loads(results_path.read_text())["runs"], **rows}
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(result, indent=2))
    return result


def summarise(rows: dict[str, Any], steps: int) -> dict[str, Any]:
    """The issue's two ratios (training steps for EDM-FDM to reach EDM's final quality; network calls for EDM-FDM
    to reach DDPM + DDIM-50 quality), the same for EDM, and the steps each method needs for DDPM's final quality.
    Each as (first point at or below the target, first point from which all later ones stay there)."""
    edm_final = rows["edm"]["curve"][-1]["frechet_distance"]
    ddpm_final = rows["ddpm"]["curve"][-1]["frechet_distance"]
    ddim = {p["calls"]: p["frechet_distance"] for p in rows["ddpm"]["sweeps"]["DDIM"]}
    ddim_calls = 50 if 50 in ddim else max(ddim)  # the DDIM-50 (the largest count in tiny mode)
    return {
        "steps": steps,
        "edm_final_fd": edm_final,
        "fdm_steps_to_edm_final": reaching(rows["edm-fdm"]["curve"], "step", edm_final),
        "ddpm_final_fd": ddpm_final,
        "steps_to_ddpm_final": {m: reaching(rows[m]["curve"], "step", ddpm_final) for m in ("edm", "edm-fdm")},
        "ddim_calls": ddim_calls,
        "ddim_fd": ddim[ddim_calls],
        "calls_to_ddim_fd": {
            m: reaching(rows[m]["sweeps"]["EDM DPM-Solver++"], "calls", ddim[ddim_calls]) for m in ("edm", "edm-fdm")
        },
    }


def plot(result: dict[str, Any], path: Path) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
    for row in result["runs"].values():
        steps, losses = zip(*row["loss_history"])
        ax[0].plot(steps, losses, label=row["label"], lw=0.8)
        ax[1].plot([p["step"] for p in row["curve"]], [p["frechet_distance"] for p in row["curve"]], "o-",
                   label=row["label"])  # fmt: skip
        for name, sweep in row["sweeps"].items():
            style = "-" if "Euler" not in name and name != "DDIM" else "--"
            ax[2].plot([p["calls"] for p in sweep], [p["frechet_distance"] for p in sweep], style, marker=".",
                       label=f"{row['label']}, {name}")  # fmt: skip
    ax[0].set(xlabel="training step", ylabel="training loss (own units)", yscale="log", title="loss")
    calls = result["settings"]["curve_calls"]
    ax[1].set(xlabel="training step", ylabel="Fréchet distance", yscale="log",
              title=f"quality vs training ({calls} network calls)")  # fmt: skip
    ax[2].set(xlabel="network calls per sample", ylabel="Fréchet distance", xscale="log", yscale="log",
              title="quality vs sampling steps (final EMA weights)")  # fmt: skip
    for axis in ax[1:]:  # what 250 real training digits score: differences below it are sampling noise
        axis.axhline(result["real_vs_train_fd"], color="grey", ls=":", lw=1, label="250 real training digits")
    for axis in ax:
        axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@torch.no_grad()
def sample_grids(runs_root: Path, path: Path, calls: int = 12, count: int = 32, seed: int = 0) -> None:
    """One row of samples per method from its saved final pipeline, same noise, `calls` network calls each."""
    plt = pyplot()

    fig, ax = plt.subplots(len(METHODS), 1, figsize=(count * 0.42, len(METHODS) * 0.75 + 0.3))
    for axis, method in zip(ax, METHODS):
        folder = runs_root / method
        if method == "ddpm":
            saved = ContinuousUNetPipeline.from_pretrained(folder)
            pipe = ContinuousUNetPipeline(unet=saved.unet, scheduler=DDIMScheduler.from_config(saved.scheduler.config))
            sampler = "DDIM"
        else:
            pipe = ContinuousUNetPipeline.from_pretrained(folder)
            sampler = "EDM DPM-Solver++"
        pipe.set_progress_bar_config(disable=True)
        images = pipe(batch_size=count, num_inference_steps=calls, output_type="pt",
                      generator=torch.Generator().manual_seed(seed)).images  # fmt: skip
        framed = torch.nn.functional.pad(images[:, 0], (1, 1, 1, 1), value=0.5)  # grey frames keep digits apart
        row = torch.cat(list(framed), dim=1).numpy()
        axis.imshow(row, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        axis.set_axis_off()
        axis.set_title(f"{LABELS[method]}, {sampler}, {calls} calls", fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def section(result: dict[str, Any], ablation: dict[str, Any] | None = None) -> list[str]:
    """The BENCHMARKS.md section (with the ablation's table when it was run)."""
    s, summary = result["settings"], result["summary"]
    command = "python -m benchmarks.momentum" + ("" if result["mode"] == "quick" else f" --mode {result['mode']}")
    lines = [
        "\n## Momentum preconditioning (EDM-FDM) vs EDM vs DDPM-style training\n",
        f"`{command}` ({result['date']}, torch {result['torch']}, {result['threads']} threads): the digits-16 cUNet, "
        f"`training/configs/digits.yaml` ({s['steps']} steps, batch {s['batch_size']}), only `--preconditioning` "
        f"differs. Fréchet distance of {s['samples']} samples to the 300 held-out digits in a digit classifier's "
        f"feature space (training digits vs held-out: {result['real_vs_train_fd']:.1f}).\n",
        f"Quality against training steps (EMA weights of each checkpoint; DDIM for DDPM, EDM DPM-Solver++ for "
        f"EDM and EDM-FDM; {s['curve_calls']} network calls):\n",
    ]
    methods = list(result["runs"])
    steps = [p["step"] for p in result["runs"][methods[0]]["curve"]]
    lines.append("| step | " + " | ".join(result["runs"][m]["label"] for m in methods) + " |")
    lines.append("|---:|" + "---:|" * len(methods))
    for i, step in enumerate(steps):
        values = [result["runs"][m]["curve"][i]["frechet_distance"] for m in methods]
        lines.append(f"| {step} | " + " | ".join(f"{v:.1f}" for v in values) + " |")
    lines.append("\nQuality against network calls per sample (final EMA weights):\n")
    columns = [(m, name) for m in methods for name in result["runs"][m]["sweeps"]]
    lines.append("| calls | " + " | ".join(f"{result['runs'][m]['label']}, {n}" for m, n in columns) + " |")
    lines.append("|---:|" + "---:|" * len(columns))
    for i, calls in enumerate(s["sweep_calls"]):
        values = [result["runs"][m]["sweeps"][n][i]["frechet_distance"] for m, n in columns]
        lines.append(f"| {calls} | " + " | ".join(f"{v:.1f}" for v in values) + " |")

    summary = summarise(result["runs"], s["steps"])

    def ratio(pair, total, unit):
        first, stays = pair
        if first is None:
            return "never within the run"
        text = f"first at {first} {unit} ({first / total:.2f}x)"
        return text + (f", for good from {stays} ({stays / total:.2f}x)" if stays is not None else ", not for good")

    steps_to_ddpm = summary["steps_to_ddpm_final"]
    calls = summary["calls_to_ddim_fd"]
    lines += [
        "",
        f"- EDM's final FD {summary['edm_final_fd']:.1f}: EDM-FDM reaches it "
        f"{ratio(summary['fdm_steps_to_edm_final'], s['steps'], 'steps')} (target <= 0.60x).",
        f"- DDPM's final FD {summary['ddpm_final_fd']:.1f}: EDM reaches it "
        f"{ratio(steps_to_ddpm['edm'], s['steps'], 'steps')}; "
        f"EDM-FDM {ratio(steps_to_ddpm['edm-fdm'], s['steps'], 'steps')}.",
        f"- DDPM + DDIM-{summary['ddim_calls']} FD {summary['ddim_fd']:.1f}: EDM-FDM + EDM DPM-Solver++ reaches it "
        f"{ratio(calls['edm-fdm'], summary['ddim_calls'], 'calls')} (target <= 0.33x); EDM "
        f"{ratio(calls['edm'], summary['ddim_calls'], 'calls')}.",
        "",
        "![loss, quality vs training, quality vs calls](benchmarks/results/momentum.png)\n",
        "![samples of the three final models, same noise](benchmarks/results/momentum_samples.png)\n",
    ]
    if ablation:
        runs = {**{m: result["runs"][m] for m in ("edm", "edm-fdm")}, **ablation["runs"]}
        lines += [
            "Ablation (`python -m benchmarks.momentum --ablation`): which part of EDM-FDM does what. Same recipe "
            "and sampler; Fréchet distance against training steps:\n",
            "| step | " + " | ".join(r["label"] for r in runs.values()) + " |",
            "|---:|" + "---:|" * len(runs),
        ]
        for i, step in enumerate(steps):
            lines.append(
                f"| {step} | " + " | ".join(f"{r['curve'][i]['frechet_distance']:.1f}" for r in runs.values()) + " |"
            )
        lines.append(f"\nSteps to EDM's final FD ({summary['edm_final_fd']:.1f}):\n")
        for row in runs.values():
            reached = reaching(row["curve"], "step", summary["edm_final_fd"])
            lines.append(f"- {row['label']}: {ratio(reached, s['steps'], 'steps')}")
        lines.append("")
    return lines


def report_section(result: dict[str, Any], results: Path) -> list[str]:
    """The momentum section of BENCHMARKS.md (with the ablations where they ran), its plot written to `results`."""
    ablation_file = results / ABLATION_RESULTS_FILE
    ablation = json.loads(ablation_file.read_text()) if ablation_file.exists() else None
    plot(result, results / "momentum.png")
    return section(result, ablation)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=sorted(MODES), default="quick")
    paths.add_publish_option(parser)
    parser.add_argument("--results", type=Path, default=None, help="results folder (overrides --publish)")
    parser.add_argument("--runs", type=Path, default=None, help="where the training runs go")
    parser.add_argument("--ablation", action="store_true", help="train the ablations (needs momentum.json)")
    parser.add_argument("--variants", nargs="+", choices=sorted(ABLATIONS), default=None, help="some ablations only")
    args = parser.parse_args(argv)
    args.results = args.results or paths.results_dir(args.publish)
    args.results.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    runs = args.runs or paths.ROOT / "outputs" / "momentum" / args.mode
    if args.ablation:
        result = run(args.mode, runs, args.results / ABLATION_RESULTS_FILE, ablation=True, variants=args.variants)
        main_result = json.loads((args.results / RESULTS_FILE).read_text())
        print("\n".join(section(main_result, result)))
    else:
        result = run(args.mode, runs, args.results / RESULTS_FILE)
        plot(result, args.results / "momentum.png")
        sample_grids(runs, args.results / "momentum_samples.png")
        print("\n".join(section(result)))
    print(f"\nThe momentum benchmark ({args.mode}) took {time.perf_counter() - start:.0f} s; results in "
          f"{paths.shown(args.results)}/.")  # fmt: skip
    return result


if __name__ == "__main__":
    main()
