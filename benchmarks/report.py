"""Write BENCHMARKS.md and the PNG plots from the JSON results of `benchmarks.cost`, `benchmarks.gpu`,
`benchmarks.quality` and the other benchmarks."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from evaluation.digits import DIGITS, HELD_OUT_DIGITS  # noqa: E402

from . import frontier  # noqa: E402
from .paths import PUBLISHED_REPORT, command_line, shown  # noqa: E402

TRAINING_DIGITS = DIGITS - HELD_OUT_DIGITS  # what the digits benchmarks train on

COST_KEYS = [
    ("params", "parameters", "{:,.0f}"),
    ("gflops_per_call", "GFLOPs per call (batch 1)", "{:.3f}"),
    ("forward_b1_s", "forward latency, batch 1 (s)", "{:.4f}"),
    ("forward_b16_s", "forward latency, batch 16 (s)", "{:.4f}"),
    ("ddim50_b16_s", "DDIM-50 sampling call, batch 16 (s)", "{:.2f}"),
    ("train_images_per_s", "training throughput (images/s, fwd+bwd, batch 16)", "{:.1f}"),
    ("activation_memory_b16_mb", "activation memory of a training step, batch 16 (MB)", "{:.1f}"),
]


def _value(entry: Any) -> float:
    return entry["median"] if isinstance(entry, dict) else entry


def _spread(entry: Any) -> str:
    return f" ± {entry['stdev']:.2g}" if isinstance(entry, dict) and entry.get("stdev") else ""


def cost_section(cost: dict[str, Any]) -> list[str]:
    lines = [f"\n## Cost\n\nMachine: {cost['machine']}, torch {cost['torch']}, {cost['date']}. Medians (± stdev) of "
             "repeated runs; ratio = cUNet / UNet2DModel (below 1: the cUNet is cheaper or faster, except for "
             "throughput, where above 1 is better).\n"]  # fmt: skip
    for size, rows in cost["sizes"].items():
        baseline = (
            "`google/ddpm-cifar10-32` architecture" if size == "cifar10-32" else "same widths, 2 res blocks/level"
        )
        lines.append(f"\n### {size}: preset `{size}` vs UNet2DModel ({baseline})\n")
        lines.append("| | cUNet | UNet2DModel | ratio |\n|---|---:|---:|---:|")
        for key, label, fmt in COST_KEYS:
            if key not in rows["cunet"]:
                continue
            a, b = rows["cunet"][key], rows["unet2d"][key]
            lines.append(f"| {label} | {fmt.format(_value(a))}{_spread(a)} | {fmt.format(_value(b))}{_spread(b)} "
                         f"| **{rows['ratio'][key]:.3f}** |")  # fmt: skip
    if "solver_sweep" in cost:
        lines.append("\n### cUNet (cifar10-32) cost against its solver\n")
        lines.append(
            "| solver | ODE evaluations per call | GFLOPs per call | forward, batch 16 (s) |\n|---|---:|---:|---:|"
        )
        for row in cost["solver_sweep"]:
            lines.append(f"| {row['method']} x{row['steps']} | {row['evaluations_per_call']} | "
                         f"{row['gflops_per_call']:.2f} | {row['forward_b16_s']['median']:.3f} |")  # fmt: skip
        lines.append("\n![cost against solver steps](benchmarks/results/solver_cost.png)\n")
    return lines


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


def gpu_forward_rows(gpu: dict[str, Any]) -> list[dict[str, Any]]:
    """Every forward-latency row of a `benchmarks.gpu` result: eager, graphed and each compiled mode."""
    rows = list(gpu.get("forward", []))
    for key, value in gpu.items():
        if key.startswith("compiled_"):
            rows += value
    return rows


def best_forward(gpu: dict[str, Any], batch: int) -> dict[str, Any] | None:
    """Each model's fastest bf16 forward at `batch` (any execution, autocast or bf16 weights) and their ratio."""
    rows = [r for r in gpu_forward_rows(gpu) if r["batch"] == batch and r["precision"].startswith("bf16")]
    rows = [r for r in rows if "second machine" not in r["execution"]]  # best of one machine against itself
    if not rows:
        return None
    best = {name: min(rows, key=lambda r, n=name: r[f"{n}_ms"]) for name in ("cunet", "unet2d")}
    return {
        **{f"{n}_ms": r[f"{n}_ms"] for n, r in best.items()},
        **{f"{n}_how": f"{r['execution']}, {r['precision']}" for n, r in best.items()},
        "ratio": best["cunet"]["cunet_ms"] / best["unet2d"]["unet2d_ms"],
    }


def gpu_section(gpu: dict[str, Any]) -> list[str]:
    if not gpu_forward_rows(gpu):  # a run stopped before its first section ends, or a smoke test
        return [
            f"\n## GPU cost: {gpu.get('device', 'unknown device')}\n",
            f"(partial result of {gpu.get('date', 'an unknown date')}: no forward latency was measured yet)\n",
        ]
    counts = gpu["counts"]
    lines = [
        f"\n## GPU cost: {gpu['device']}\n",
        f"`python -m benchmarks.gpu` ({gpu['date']}, torch {gpu['torch']}, one process, both models with random "
        "weights, TF32 allowed, cudnn.benchmark on; medians). cUNet = preset `cifar10-32` (Euler x2, "
        f"{counts['cunet']['params']:,} parameters, {counts['cunet']['gflops_per_call']:.2f} GFLOPs per call); "
        f"UNet2DModel = `google/ddpm-cifar10-32`'s architecture ({counts['unet2d']['params']:,} parameters, "
        f"{counts['unet2d']['gflops_per_call']:.2f} GFLOPs). *graphed* = `diffusers_cunet.acceleration."
        "CUDAGraphedModel`; *compiled (reduce-overhead)* = `torch.compile(mode='reduce-overhead')`, the cUNet with "
        "`fullgraph=True`; *bf16* = autocast, *bf16-weights* = the model cast to bfloat16. Ratio = cUNet / "
        "UNet2DModel.\n",
        "| forward | batch | execution | cUNet (ms) | UNet2DModel (ms) | ratio |\n|---|---:|---|---:|---:|---:|",
    ]
    for r in gpu_forward_rows(gpu):
        lines.append(f"| {r['precision']} | {r['batch']} | {r['execution']} | {r['cunet_ms']:.2f} | "
                     f"{r['unet2d_ms']:.2f} | **{r['ratio']:.3f}** |")  # fmt: skip
    best = best_forward(gpu, max(r["batch"] for r in gpu_forward_rows(gpu)))
    if best:
        cunet = f"cUNet {best['cunet_ms']:.2f} ms ({best['cunet_how']})"
        unet2d = f"UNet2DModel {best['unet2d_ms']:.2f} ms ({best['unet2d_how']})"
        lines.append(f"\nFastest bf16 forward of each model: {cunet}, {unet2d}: **{best['ratio']:.3f}**.")
    if gpu.get("sampling"):
        lines.append(
            "\n| DDIM sampling (ContinuousUNetPipeline) | batch | steps | cUNet (s) | UNet2DModel (s) | ratio |"
        )
        lines.append("|---|---:|---:|---:|---:|---:|")
        for r in gpu["sampling"]:
            lines.append(f"| {r['execution']}, {r['precision']} | {r['batch']} | {r['steps']} | {r['cunet_s']:.3f} | "
                         f"{r['unet2d_s']:.3f} | **{r['ratio']:.3f}** |")  # fmt: skip
    training_rows = gpu.get("training", []) + gpu.get("training_compiled", [])
    if training_rows:
        lines.append(
            "\n| training step (AdamW, MSE) | batch | cUNet images/s | UNet2DModel images/s | cUNet / UNet2DModel "
            "| peak memory cUNet / UNet2DModel (GiB) |\n|---|---:|---:|---:|---:|---|"
        )
        for r in training_rows:
            memory = f"{r['cunet_peak_gib']:.2f} / {r['unet2d_peak_gib']:.2f}" if "cunet_peak_gib" in r else "-"
            speed = f"{r['cunet_images_per_s']:,.0f} | {r['unet2d_images_per_s']:,.0f}"
            lines.append(f"| {r['execution']}, {r['precision']} | {r['batch']} | {speed} | "
                         f"**{r['throughput_ratio']:.2f}x** | {memory} |")  # fmt: skip
    lines += gpu_solver_tables(gpu) + gpu_diagnostics(gpu)
    return lines


def gpu_solver_tables(gpu: dict[str, Any]) -> list[str]:
    """The cUNet's cost against its solver settings and with ODE blocks skipped or deep features reused."""
    lines: list[str] = []
    if gpu.get("solver_sweep"):
        executions = [k[: -len("_ms")] for k in gpu["solver_sweep"][0] if k.endswith("_ms")]
        first = gpu["solver_sweep"][0]
        header = " | ".join(f"{e} (ms)" for e in executions)
        lines.append(
            f"\n| cUNet solver (batch {first['batch']}, {first['precision']}) | evaluations per call | {header} |"
        )
        lines.append("|---|---:|" + "---:|" * len(executions))
        for r in gpu["solver_sweep"]:
            lines.append(f"| {r['method']} x{r['steps']} | {r['evaluations_per_call']} | "
                         + " | ".join(f"{r[f'{e}_ms']:.2f}" for e in executions) + " |")  # fmt: skip
    if gpu.get("block_skipping"):
        rows = gpu["block_skipping"]
        executions = [k[: -len("_ms")] for k in rows[0] if k.endswith("_ms")]
        lines.append(f"\n| cUNet call (batch {rows[0]['batch']}, {rows[0]['precision']}) | GFLOPs per sample | "
                     + " | ".join(f"{e} (ms)" for e in executions) + " |")  # fmt: skip
        lines.append("|---|---:|" + "---:|" * len(executions))
        for r in rows:
            what = "reusing cached deep features (top level only)" if r.get("cached_levels") else (
                f"skipping {', '.join(r['skipped'])}" if r["skipped"] else "whole network")  # fmt: skip
            times = " | ".join(f"{r[f'{e}_ms']:.2f}" if f"{e}_ms" in r else "-" for e in executions)
            lines.append(f"| {what} | {r['gflops_per_call']:.3f} | {times} |")
    return lines


def gpu_diagnostics(gpu: dict[str, Any]) -> list[str]:
    """Graph breaks, kernel counts and profiles, the run's note and the sections that failed."""
    lines: list[str] = []
    if gpu.get("graph_breaks"):
        breaks = ", ".join(f"{n}: {v['graphs']} graph(s), {v['graph_breaks']} break(s)"
                           for n, v in gpu["graph_breaks"].items())  # fmt: skip
        lines.append(f"\n`torch._dynamo.explain`: {breaks}.")
    if gpu.get("kernels"):
        kernels = "; ".join(f"{n}: {v['kernels']} kernels, device busy {v['device_busy_ms']:.2f} ms"
                            for n, v in gpu["kernels"].items())  # fmt: skip
        lines.append(f"Kernels per eager bf16 forward (batch 128, torch.profiler): {kernels}.")
    for r in gpu_forward_rows(gpu):
        for name in ("cunet", "unet2d"):
            profile = r.get(f"{name}_profile")
            if profile:
                kinds = ", ".join(f"{k} {v:.2f} ms" for k, v in profile["ms_by_kind"].items())
                lines.append(f"\nDevice time of one {r['execution']} call of the {name} (torch.profiler): "
                             f"{profile['kernels']} kernels; {kinds}.")  # fmt: skip
    if gpu.get("note"):
        lines.append(f"\n{gpu['note']}")
    for section, error in gpu.get("errors", {}).items():
        lines.append(f"\nSection `{section}` failed: {error}")
    return lines


def step_search_section(search: dict[str, Any]) -> list[str]:
    full, best = search["full"], search["best"]
    return [
        "\n## Step-aware compute: searched solver schedule vs uniform full effort\n",
        "The digits cUNet trained with `--solver_steps_choices 1 2 4` (`outputs/digits-steps`, 1,500 steps, the "
        f"first {TRAINING_DIGITS:,} digits), then `python -m training.step_search --pipeline outputs/digits-steps "
        f"--levels 1 2 4 --bins 5 --samples 200` ({search['scheduler']}, {search['num_inference_steps']} steps, "
        f"bound: FD at most {search['tolerance']:.0%} above full effort; {len(search['trials'])} schedules scored "
        f"in {search['search_seconds']:.0f} s). Same noise for every schedule.\n",
        "| schedule (Euler steps per bin, low t to high t) | ODE evals/sample | GFLOPs/sample | s/sample | FD |",
        "|---|---:|---:|---:|---:|",
        f"| uniform full {full['steps_per_bin']} | {full['evaluations_per_sample']} | {full['gflops_per_sample']:.2f} "
        f"| {full['seconds_per_sample']:.3f} | {full['frechet_distance']:.1f} |",
        f"| searched {best['steps_per_bin']} | {best['evaluations_per_sample']} | {best['gflops_per_sample']:.2f} "
        f"| {best['seconds_per_sample']:.3f} | {best['frechet_distance']:.1f} |",
        f"\n{search['evaluation_saving']:.0%} fewer ODE evaluations, Fréchet distance {search['fd_change']:+.1%}.\n",
        "![every schedule tried](benchmarks/results/step_search.png)\n",
    ]


def plot_solver_cost(cost: dict[str, Any], path: Path) -> None:
    rows = [r for r in cost.get("solver_sweep", []) if r["method"] == "euler"]
    if not rows:
        return
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    steps = [r["steps"] for r in rows]
    ax[0].plot(steps, [r["gflops_per_call"] for r in rows], "o-", label="cUNet (euler)")
    ax[1].plot(steps, [r["forward_b16_s"]["median"] for r in rows], "o-", label="cUNet (euler)")
    unet = cost["sizes"]["cifar10-32"]["unet2d"]
    ax[0].axhline(unet["gflops_per_call"], color="k", ls="--", label="UNet2DModel")
    ax[1].axhline(unet["forward_b16_s"]["median"], color="k", ls="--", label="UNet2DModel")
    ax[0].set(xlabel="solver steps per ODE block", ylabel="GFLOPs per call", xscale="log")
    ax[1].set(xlabel="solver steps per ODE block", ylabel="forward batch 16 (s)", xscale="log")
    ax[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_quality(quality: dict[str, Any], curves_path: Path, frontier_path: Path) -> None:
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


def cost_report(cost: dict[str, Any], results: Path) -> list[str]:
    plot_solver_cost(cost, results / "solver_cost.png")
    return cost_section(cost)


def gpu_report(gpu: dict[str, Any], results: Path) -> list[str]:
    return gpu_section(gpu)


def quality_report(quality: dict[str, Any], results: Path) -> list[str]:
    plot_quality(quality, results / "quality_curves.png", results / "frontier.png")
    lines = [*quality_section(quality, results), "\n### Pareto frontier (Fréchet distance against cost)\n"]
    for label, key in (("training wall time", frontier.training_seconds),
                       ("GFLOPs per sample", lambda r: r["gflops_per_sample"]),
                       ("sampling latency", frontier.sampling_seconds)):  # fmt: skip
        lines.append(f"- {label}: " + ", ".join(pareto(quality["runs"], key)))
    return lines + frontier.section(quality["runs"])


def step_search_report(search: dict[str, Any], results: Path) -> list[str]:
    return step_search_section(search)


def momentum_report(momentum_result: dict[str, Any], results: Path) -> list[str]:
    from .momentum import plot as plot_momentum
    from .momentum import section as momentum_section

    ablation_file = results / "momentum_ablation.json"
    ablation = json.loads(ablation_file.read_text()) if ablation_file.exists() else None
    plot_momentum(momentum_result, results / "momentum.png")
    return momentum_section(momentum_result, ablation)


def fashion_report(fashion_result: dict[str, Any], results: Path) -> list[str]:
    from .fashion_report import section as fashion_section

    return fashion_section(fashion_result, results)


def step_aware_report(step_aware_result: dict[str, Any], results: Path) -> list[str]:
    from .step_aware_report import section as step_aware_section

    return step_aware_section(step_aware_result, results)


def guidance_report(guidance_result: dict[str, Any], results: Path) -> list[str]:
    from .guidance_report import section as guidance_section

    return guidance_section(guidance_result, results)


# The report, in order: each section is written when its results file is in the results folder.
SECTIONS = (
    ("cost.json", cost_report),
    ("gpu.json", gpu_report),
    ("fashion.json", fashion_report),
    ("step_aware.json", step_aware_report),
    ("guidance.json", guidance_report),
    ("quality.json", quality_report),
    ("step_search.json", step_search_report),
    ("momentum.json", momentum_report),
)


# What produces the published report's sections, in their order: the published BENCHMARKS.md names these whichever
# of them ran last (each rewrites the whole report from every results file).
PUBLISH_COMMANDS = (
    "python -m benchmarks.cost --publish",
    "python -m benchmarks --mode full --skip-cost --publish",
    "python -m benchmarks.fashion --mode cpu --publish",
    "python -m benchmarks.step_aware --mode cpu --publish",
    "python -m benchmarks.guidance --mode cpu --publish",
)


def write(results: Path, output: Path, command: str, notes: list[str] | None = None) -> Path:
    """BENCHMARKS.md (at `output`) from the JSON files in `results`, with their plots next to them. It says it was
    produced by `command`, or by every one of `PUBLISH_COMMANDS` when it is the published report."""
    if output.resolve() == PUBLISHED_REPORT.resolve():
        command = "; ".join(PUBLISH_COMMANDS)
    lines = [
        "# Benchmarks: continuous U-Net vs diffusers' UNet2DModel\n",
        f"Produced by `{command}` (see `benchmarks/`); raw numbers in `{shown(results)}/*.json`.\n",
    ]
    for file_name, report in SECTIONS:
        if (results / file_name).exists():
            lines += report(json.loads((results / file_name).read_text()), results)
    notes_file = results / "notes.md"  # hand-written reading of a run, dated; kept when the tables are rewritten
    if notes or notes_file.exists():
        lines += [
            "\n## Where the cUNet loses, and other notes\n",
            *(notes or []),
            notes_file.read_text() if notes_file.exists() else "",
        ]
    output.parent.mkdir(parents=True, exist_ok=True)
    # images are named from the repository root; links in the report are relative to where it lies
    text = "\n".join(lines).replace(f"]({shown(results)}/", f"]({os.path.relpath(results, output.parent)}/")
    output.write_text(text + "\n")
    return output


def finish(label: str, module: str, args, results: Path, report_file: Path, start: float,
           default_mode: str | None = None) -> Path:  # fmt: skip
    """After a benchmark's run: the report rewritten from every results file, and how long the run took."""
    path = write(results, report_file, command_line(module, args, default_mode))
    print(f"\n{label} ({args.mode}) took {time.perf_counter() - start:.0f} s; report: {shown(path)}", flush=True)
    return path
