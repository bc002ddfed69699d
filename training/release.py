"""The model the package ships: a training run's checkpoint packaged as a Hub-layout pipeline folder in the repository
(`pretrained/cunet-fashion-mnist/`), measured on that folder, with a card generated from the measurements.

    python -m training.release --checkpoint RUN/checkpoint-N     # package, measure (tens of minutes on 2 cores), card
    python -m training.release --steps                           # only the step recommendation (minutes), card
    python -m training.release --card                            # the card and grid again, from the results file

The folder: fp16 safetensors (3.4 MB; every loader gives fp32 unless asked otherwise), `model_index.json`, the code
files that load it without the package, the EDM DPM-Solver++ scheduler, the class names (`id2label`), a grid of
every class and the card. The measurements (`benchmarks/results/release.json`, the card's one source): FID, KID,
precision and recall of 10,000 samples against the 10,000 test images in the judge's features, class accuracy at
guidance scale 1 and at each guided scale (2,000 samples), the recommended scale (the most accurate whose FID is no
worse than scale 1's, at the recipe's 20 sampler steps), the recommended steps (that scale at 20 steps and fewer: the
lowest FID), seconds and network evaluations per image on this CPU, and the parameters and GFLOPs beside a
UNet2DModel of the same widths.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from diffusers_cunet.shipped import CLONE_FOLDER, HUB_ID

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = CLONE_FOLDER  # where `package` writes the model (`diffusers_cunet.shipped`)
RESULTS = ROOT / "benchmarks" / "results" / "release.json"
REPO_ID = HUB_ID  # the Hub id its card shows
HUB_DATASET = "zalando-datasets/fashion_mnist"
GRID_FILE = "samples.png"
SAMPLING_STEPS = 20  # EDM DPM-Solver++: the recipe's sampler
GUIDANCE_SCALES = (1.5, 2.0, 3.0)
# fewer sampler steps tried at the recommended scale: the converged x1 cUNet's FID at scale 1 is lowest at 8-10 steps
# (BENCHMARKS.md, the convergence section's end-of-run sweep)
STEP_CANDIDATES = (8, 10)
FULL_SAMPLES = 10_000  # the standard protocol: as many samples as test images
GUIDED_SAMPLES = 2_000
# an interim checkpoint (shipped until the run converges) is measured more cheaply: no 10,000-sample protocol
INTERIM = {"full_samples": 0, "guided_samples": 1_000, "scales": (2.0, 3.0)}
GRID_COLUMNS = 8


def load_checkpoint(checkpoint: Path):
    """The EMA weights of a training checkpoint as a `ContinuousUNet2DModel` with Fashion-MNIST's class names (its
    config only the model's arguments: the EMA state saved beside the weights stays behind)."""
    import inspect

    from diffusers_cunet import ContinuousUNet2DModel
    from training.checkpointing import EMA_FOLDER, load_ema_folder
    from training.fashion_mnist import CLASS_NAMES

    ema = load_ema_folder(checkpoint / EMA_FOLDER, ContinuousUNet2DModel)[0]
    arguments = inspect.signature(ContinuousUNet2DModel.__init__).parameters
    config = {key: value for key, value in ema.config.items() if key in arguments and key != "self"}
    unet = ContinuousUNet2DModel(**{**config, "id2label": dict(enumerate(CLASS_NAMES))})
    unet.load_state_dict(ema.state_dict())
    return unet.eval()


def package(checkpoint: Path, output: Path = SHIPPED) -> Path:
    """Write the Hub-layout pipeline folder of `checkpoint` (its run's scheduler, fp16 weights) into `output`."""
    from diffusers import EDMDPMSolverMultistepScheduler

    from diffusers_cunet.pipelines import ContinuousUNetPipeline

    run = checkpoint.parent
    scheduler = EDMDPMSolverMultistepScheduler.from_pretrained(run, subfolder="scheduler")
    unet = load_checkpoint(checkpoint).half()  # every weight: the folder is the fp16 file alone
    staging = output.with_name(output.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    ContinuousUNetPipeline(unet=unet, scheduler=scheduler).save_pretrained(staging)
    shutil.rmtree(output, ignore_errors=True)
    staging.rename(output)
    return output


def class_grid(pipeline, classes: list[int], scale: float, steps: int, seed: int, columns: int, path: Path) -> Path:
    """One row per class (named), `columns` samples each, at guidance `scale`, saved as an image at `path`."""
    from training.plotting import pyplot

    plt = pyplot()

    labels = torch.tensor([c for c in classes for _ in range(columns)])
    pipeline.set_progress_bar_config(disable=True)
    images = pipeline(batch_size=len(labels), class_labels=labels, guidance_scale=scale, num_inference_steps=steps,
                      generator=torch.Generator().manual_seed(seed), output_type="pt").images[:, 0]  # fmt: skip
    padded = torch.nn.functional.pad(images.float(), (1, 1, 1, 1), value=0.5)
    rows = [torch.cat(list(padded[k * columns : (k + 1) * columns]), dim=1) for k in range(len(classes))]
    names = pipeline.labels
    fig, axis = plt.subplots(figsize=(1.2 + 0.45 * columns, 0.45 * len(classes) + 0.5))
    axis.imshow(torch.cat(rows, dim=0).numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    height = images.shape[-1] + 2
    axis.set_yticks([height * (k + 0.5) for k in range(len(classes))], [names.get(c, str(c)) for c in classes],
                    fontsize=8)  # fmt: skip
    axis.set_xticks([])
    axis.set_title(f"guidance scale {scale:g}, {steps} steps, seed {seed}", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def cost_beside_unet2d(unet) -> dict[str, Any]:
    """Parameters and forward GFLOPs of `unet` and of the UNet2DModel of the same widths, trained the same way (the
    convergence benchmark's baseline: the fashion-32 preset's UNet2DModel with these widths)."""
    from diffusers_cunet.flops import count_forward_flops, count_parameters
    from diffusers_cunet.preconditioned_unet_2d import PreconditionedUNet2DModel
    from training.baselines import UNET2D_PRESETS, unet2d_config

    preset = dict(UNET2D_PRESETS["fashion-32"])
    config = {**preset, **unet2d_config(unet.config.sample_size, unet.config.in_channels,
                                        tuple(unet.config.block_out_channels), preset.get("layers_per_block", 2),
                                        preset.get("norm_num_groups", 8))}  # fmt: skip
    baseline = PreconditionedUNet2DModel(**config, num_class_embeds=unet.config.num_class_embeds,
                                         preconditioning={"type": "edm"})  # fmt: skip
    ours = {"params": count_parameters(unet), "gflops": count_forward_flops(unet) / 1e9}
    theirs = {"params": count_parameters(baseline), "gflops": count_forward_flops(baseline) / 1e9}
    return {"cunet": ours, "unet2d": theirs, "params_ratio": ours["params"] / theirs["params"],
            "gflops_ratio": ours["gflops"] / theirs["gflops"]}  # fmt: skip


class FolderScorer:
    """The judge's scores of samples from the pipeline folder as a user loads it (fp32), the judge and the test
    images' features loaded once."""

    def __init__(self, folder: Path):
        from diffusers_cunet.pipelines import ContinuousUNetPipeline
        from evaluation.fashion_judge import load_judge
        from evaluation.fashion_scores import test_image_features

        self.pipeline = ContinuousUNetPipeline.from_pretrained(folder)
        self.judge = load_judge()
        self.test = test_image_features()

    def scored(self, count: int, scale: float, steps: int = SAMPLING_STEPS) -> dict[str, Any]:
        """`count` samples at guidance `scale` in `steps` sampler steps, in the card's format (`seconds_per_image`)."""
        from evaluation.fashion_scores import class_conditional_scores

        print(f"release: {count:,} samples at guidance scale {scale:g}, {steps} steps ...", flush=True)  # minutes
        scores = class_conditional_scores(self.pipeline, self.judge, self.test, count, steps, guidance_scale=scale)
        print(f"release: FID {scores['fid']:.2f}, class accuracy {scores['class_accuracy']:.1%}", flush=True)
        return {**scores, "seconds_per_image": scores.pop("sampling_s_per_image")}


def recommended_steps_point(sweep: list[dict[str, Any]]) -> dict[str, Any]:
    """Of the recommended scale's points at the recipe's steps and at fewer steps, the one with the lowest FID (the
    fewer steps where two tie): the steps the card recommends."""
    return min(sweep, key=lambda point: (point["fid"], point["sampling_steps"]))


def recommend_steps(scorer: FolderScorer, results: dict[str, Any], samples: int = GUIDED_SAMPLES,
                    candidates: tuple[int, ...] = STEP_CANDIDATES) -> dict[str, Any]:  # fmt: skip
    """`results` with the recommended scale measured at each of `candidates` sampler steps, beside its point at the
    recipe's steps (`step_sweep`, fewest steps first), and the recommendation moved to the steps with the lowest FID
    (`recommended_steps`, `recommended`)."""
    scale = results["recommended_guidance_scale"]
    at_recipe = next(p for p in [results["scale_1"], *results["guided"]] if p["guidance_scale"] == scale)
    fewer = [scorer.scored(samples, scale, steps) for steps in candidates]
    sweep = sorted([*fewer, at_recipe], key=lambda point: point["sampling_steps"])
    recommended = recommended_steps_point(sweep)
    return {**results, "step_sweep": sweep, "recommended_steps": recommended["sampling_steps"],
            "recommended": recommended}  # fmt: skip


def measure(folder: Path = SHIPPED, full_samples: int = FULL_SAMPLES, guided_samples: int = GUIDED_SAMPLES,
            scales: tuple[float, ...] = GUIDANCE_SCALES, steps: int = SAMPLING_STEPS,
            candidates: tuple[int, ...] = STEP_CANDIDATES) -> dict[str, Any]:  # fmt: skip
    """Every number of the card, measured on the shipped folder as a user loads it (fp32): the guidance scales at the
    recipe's steps (the recommended scale chosen there), then that scale at fewer steps (`recommend_steps`)."""
    from evaluation.fashion_judge import judge_metadata
    from evaluation.fashion_scores import sample_scores
    from training.fashion_mnist import split_tensors

    scorer = FolderScorer(folder)
    pipeline = scorer.pipeline
    floor_count = full_samples or guided_samples  # as many real training images as the main row has samples
    floor = sample_scores(scorer.judge, None, split_tensors("train")[0][:floor_count], real_features=scorer.test)
    full = scorer.scored(full_samples, 1.0, steps) if full_samples else None
    plain = scorer.scored(guided_samples, 1.0, steps)
    guided = [scorer.scored(guided_samples, scale, steps) for scale in scales]
    from benchmarks.convergence import recommended_point

    recommended = recommended_point(guided, plain)
    unet = pipeline.unet
    results = {
        "folder": str(folder.relative_to(ROOT)) if folder.is_relative_to(ROOT) else str(folder),
        "scheduler": type(pipeline.scheduler).__name__, "sampling_steps": steps,
        "full_protocol": full, "scale_1": plain, "guided": guided,
        "recommended_guidance_scale": recommended["guidance_scale"], "recommended": recommended,
        "floor": floor, "judge": judge_metadata(), "cost": cost_beside_unet2d(unet),
        "folder_bytes": sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()),
        "class_names": pipeline.labels,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
    }  # fmt: skip
    return recommend_steps(scorer, results, guided_samples, candidates)


def published_convergence(results_file: Path | None = None) -> dict[str, Any]:
    """The convergence benchmark's published results (or `results_file`)."""
    from benchmarks import convergence, paths

    return json.loads((results_file or paths.PUBLISHED_RESULTS / convergence.RESULTS_FILE).read_text())


def convergence_state(run: str, step: int, results_file: Path | None = None) -> dict[str, Any]:
    """What the convergence benchmark's published results say of `run` at `step`: its planned steps, whether that step
    is its settled end (converged by the criterion, or at its step cap) and the seed spread that judged it. `settled`
    is False where the results have not reached that step: the card then calls the checkpoint interim."""
    published = published_convergence(results_file)
    row = next((row for row in published["runs"] if row["name"] == run), None)
    if row is None:
        raise SystemExit(f"{run!r} is not a run of the published convergence results: package a convergence run")
    at_end = row["steps"] == step
    return {"planned_steps": row["planned_steps"], "settled": at_end and bool(row["settled"]),
            "converged": row["converged"] if at_end else None, "seed_spread_fid": published["seed_spread_fid"],
            "convergence_fraction": published["settings"]["convergence_fraction"]}  # fmt: skip


def versus_unet2d(run: str, results_file: Path | None = None) -> dict[str, Any] | None:
    """The published convergence verdict setting `run` against the UNet2DModel of its width, trained the same way
    (`convergence_verdicts.pair_verdict`, with the samples each FID is of); None before both have settled."""
    published = published_convergence(results_file)
    pair = next((pair for pair in (published.get("verdicts") or {}).get("same_width", []) if pair["cunet"] == run),
                None)  # fmt: skip
    return {**pair, "samples": published["settings"]["samples"]} if pair else None


def training_command(record: dict[str, Any]) -> str:
    """The `train.py` command that trains the shipped run (from the convergence benchmark's options for it)."""
    from benchmarks import convergence

    run = next(run for run in convergence.MODES["cpu"].runs if run.name == record["run"])
    options = convergence.train_options(run, convergence.MODES["cpu"].settings, Path("outputs/cunet-fashion-mnist"),
                                        record["step"])  # fmt: skip
    options.pop("resume_from_checkpoint")
    parts = ["python training/train.py"]
    for key, value in options.items():
        if value is None:
            continue
        shown = " ".join(str(v) for v in value) if isinstance(value, (list, tuple)) else value
        parts.append(f"--{key} {shown}")
    return " \\\n    ".join(parts)


def render_card(results: dict[str, Any], folder: Path = SHIPPED) -> Path:
    """The folder's README.md: Hub metadata (with a model-index of the measured metrics) and the text, every number
    read from `results`."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    full = results["full_protocol"] or results["scale_1"]  # an interim checkpoint has no 10,000-sample protocol
    accuracy = results["recommended"]["class_accuracy"]
    metrics = [("FID (judge features)", "fid", full["fid"]), ("KID", "kid", full["kid_mean"]),
               ("precision", "precision", full["precision"]), ("recall", "recall", full["recall"]),
               ("class accuracy at the recommended scale", "accuracy", accuracy)]  # fmt: skip
    from diffusers_cunet.card_settings import card_parameters

    card_data = ModelCardData(
        library_name="diffusers", license="apache-2.0", datasets=[HUB_DATASET],
        **card_parameters(results["recommended_guidance_scale"], results["recommended_steps"]),
        tags=["diffusers", "diffusers-cunet", "continuous-unet", "neural-ode", "class-conditional-image-generation"],
        model_name=REPO_ID.split("/")[-1],
        eval_results=[EvalResult(task_type="image-generation", dataset_type=HUB_DATASET, dataset_name="Fashion-MNIST",
                                 dataset_split="test", metric_type=kind, metric_name=name,
                                 metric_value=round(value, 4)) for name, kind, value in metrics],
    )  # fmt: skip
    template = ROOT / "model_cards" / "release_template.md"
    card = ModelCard.from_template(card_data, template_path=str(template), results=results, repo_id=REPO_ID,
                                   command=results["training"]["command"])  # fmt: skip
    path = folder / "README.md"
    path.write_text(str(card))
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="a training checkpoint of the cUNet x1 convergence run")
    parser.add_argument(
        "--card",
        action="store_true",
        help="only render the card and grid from the results file (the "
        "comparison with the UNet2DModel read afresh from the published convergence results)",
    )
    parser.add_argument("--steps", action="store_true", help="measure the recommended scale at fewer sampler "
                        f"steps ({', '.join(map(str, STEP_CANDIDATES))}) on the packaged folder, recommend the "
                        "steps with the lowest FID, then the card (for a release measured before that)")  # fmt: skip
    parser.add_argument("--interim", action="store_true", help="measure an interim checkpoint cheaply: "
                        f"{INTERIM['guided_samples']} samples per scale, no 10,000-sample protocol")  # fmt: skip
    parser.add_argument("--output", type=Path, default=SHIPPED)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.checkpoint is None and not (args.card or args.steps):
        parser.error("give --checkpoint (package and measure), --steps or --card")
    if args.checkpoint is not None:
        from training.checkpointing import checkpoint_step, read_run_record

        package(args.checkpoint, args.output)
        results = measure(args.output, **(INTERIM if args.interim else {}))
        record = read_run_record(args.checkpoint)
        results["training"] = {"run": args.checkpoint.parent.name, "step": checkpoint_step(args.checkpoint),
                               "train_seconds": record["train_time"],
                               "images_seen": record["images_seen"]}  # fmt: skip
        # recorded with the measurements: the card never depends on today's defaults of the benchmark
        results["training"]["command"] = training_command(results["training"])
        results["training"].update(convergence_state(results["training"]["run"], results["training"]["step"]))
    elif args.steps:
        results = recommend_steps(FolderScorer(args.output), json.loads(args.results.read_text()))
    else:
        results = json.loads(args.results.read_text())
    # the comparison comes with the UNet2DModel's end, which may be later than the cUNet's: read afresh each time
    results["versus_unet2d"] = versus_unet2d(results["training"]["run"])
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2))
    from diffusers_cunet.pipelines import ContinuousUNetPipeline

    pipeline = ContinuousUNetPipeline.from_pretrained(args.output)
    class_grid(pipeline, list(range(10)), results["recommended_guidance_scale"], results["recommended_steps"], 0,
               GRID_COLUMNS, args.output / GRID_FILE)  # fmt: skip
    print(f"card: {render_card(results, args.output)}")


if __name__ == "__main__":
    main()
