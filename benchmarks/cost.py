"""Cost of the cUNet presets against diffusers' `UNet2DModel`, side by side in one run.

Parameters, FLOPs per call (torch.utils.flop_counter), forward latency at batch 1 and 16, a DDIM-50 sampling
call at batch 16, activation memory of a training step, and training throughput (forward + backward), each with its
ratio; at CIFAR-10 size (the default preset vs `google/ddpm-cifar10-32`'s architecture) and at digits size.
Also the cUNet's cost against its solver steps.

    python -m benchmarks.cost                 # counts + timings -> outputs/benchmarks/results/cost.json
    python -m benchmarks.cost --publish       # the same into the tracked benchmarks/results/cost.json
    python -m benchmarks.cost --no-latency    # counts only (seconds)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from diffusers import DDIMScheduler, UNet2DModel

from diffusers_cunet.flops import count_forward_flops, count_parameters
from diffusers_cunet.noise_schedule import make_noise_scheduler
from diffusers_cunet.pipelines import ContinuousUNetPipeline
from diffusers_cunet.presets import from_preset
from training.baselines import UNET2D_PRESETS, ddpm_cifar10_unet
from training.plotting import pyplot

from . import paths
from .timing import inputs, timed

RESULTS_FILE = "cost.json"  # in the results folder; its report section is `report_section`


def summary(times: list[float]) -> dict[str, float]:
    return {"median": statistics.median(times), "stdev": statistics.stdev(times) if len(times) > 1 else 0.0}


def activation_memory_mb(model, batch: int, device: torch.device) -> float:
    """Memory of the tensors autograd keeps for the backward pass of one training step (the bulk of training
    memory, and the same on every device): each saved storage counted once."""
    sample, t = inputs(model, batch, device)
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(sample, t).sample.square().mean()
    loss.backward()
    return sum(storages.values()) / 2**20


def measure(model, device, repeats: int, sampling_batch: int, sampling_steps: int, train_batch: int) -> dict:
    model.to(device)
    row: dict[str, Any] = {"params": count_parameters(model), "gflops_per_call": count_forward_flops(model) / 1e9}
    model.eval()
    with torch.no_grad():
        for batch in (1, 16):
            sample, t = inputs(model, batch, device)
            row[f"forward_b{batch}_s"] = summary(timed(lambda s=sample, t=t: model(s, t), repeats, device))
        pipe = ContinuousUNetPipeline(unet=model, scheduler=DDIMScheduler.from_config(make_noise_scheduler().config))
        pipe.set_progress_bar_config(disable=True)
        run = lambda: pipe(batch_size=sampling_batch, num_inference_steps=sampling_steps, output_type="pt")
        row[f"ddim{sampling_steps}_b{sampling_batch}_s"] = summary(timed(run, max(1, repeats // 5), device, warmup=0))
    model.train()
    sample, t = inputs(model, train_batch, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_step():
        optimizer.zero_grad()
        model(sample, t).sample.square().mean().backward()
        optimizer.step()

    step_times = timed(train_step, max(2, repeats // 2), device)
    row["train_images_per_s"] = {"median": train_batch / statistics.median(step_times), "stdev": 0.0}
    row[f"activation_memory_b{train_batch}_mb"] = activation_memory_mb(model, train_batch, device)
    model.eval()
    return row


def solver_sweep(device, repeats: int) -> list[dict[str, Any]]:
    """The cifar10-32 cUNet's FLOPs and batch-16 latency against its solver (method, steps)."""
    model = from_preset("cifar10-32").to(device).eval()
    rows = []
    for method, steps in [("euler", 1), ("euler", 2), ("euler", 4), ("euler", 8), ("rk4", 1), ("rk4", 2)]:
        model.set_solver(method=method, steps=steps)
        sample, t = inputs(model, 16, device)
        with torch.no_grad():
            times = timed(lambda s=sample, t=t: model(s, t), repeats, device)
        rows.append(
            {
                "method": method,
                "steps": steps,
                "evaluations_per_call": model.evaluations_per_call(),
                "gflops_per_call": count_forward_flops(model) / 1e9,
                "forward_b16_s": summary(times),
            }
        )
    return rows


def ratios(a: dict, b: dict) -> dict[str, float]:
    out = {}
    for key, value in a.items():
        x = value["median"] if isinstance(value, dict) else value
        y = b[key]["median"] if isinstance(b[key], dict) else b[key]
        out[key] = x / y if y else float("nan")
    return out


def run(repeats: int = 5, sampling_steps: int = 50, counts_only: bool = False, tiny: bool = False) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    pairs = {
        "cifar10-32": (from_preset("cifar10-32"), ddpm_cifar10_unet()),
        "digits-16": (from_preset("digits-16"), UNet2DModel(**UNET2D_PRESETS["digits-16"])),
    }
    if tiny:  # the smoke test: small models, one repeat
        pairs = {"digits-16": pairs["digits-16"]}
    result: dict[str, Any] = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, {device}"
        + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "sizes": {},
    }
    for size, (cunet, unet) in pairs.items():
        if counts_only:
            rows = {n: {"params": count_parameters(m), "gflops_per_call": count_forward_flops(m) / 1e9}
                    for n, m in (("cunet", cunet), ("unet2d", unet))}  # fmt: skip
        else:
            rows = {
                n: measure(m, device, repeats, 16, sampling_steps, 16) for n, m in (("cunet", cunet), ("unet2d", unet))
            }
        result["sizes"][size] = {**rows, "ratio": ratios(rows["cunet"], rows["unet2d"])}
        print(f"\n{size}: cUNet vs UNet2DModel")
        for key, value in result["sizes"][size]["ratio"].items():
            a = rows["cunet"][key]
            b = rows["unet2d"][key]
            a, b = (a["median"], b["median"]) if isinstance(a, dict) else (a, b)
            print(f"  {key:24}{a:>14,.4g}{b:>14,.4g}   ratio {value:.3f}")
    if not counts_only and not tiny:
        result["solver_sweep"] = solver_sweep(device, repeats)
    return result


# ------------------------------------------------------------------------------ its section of the report
COST_KEYS = [
    ("params", "parameters", "{:,.0f}"),
    ("gflops_per_call", "GFLOPs per call (batch 1)", "{:.3f}"),
    ("forward_b1_s", "forward latency, batch 1 (s)", "{:.4f}"),
    ("forward_b16_s", "forward latency, batch 16 (s)", "{:.4f}"),
    ("ddim50_b16_s", "DDIM-50 sampling call, batch 16 (s)", "{:.2f}"),
    ("train_images_per_s", "training throughput (images/s, fwd+bwd, batch 16)", "{:.1f}"),
    ("activation_memory_b16_mb", "activation memory of a training step, batch 16 (MB)", "{:.1f}"),
]


def value_of(entry: Any) -> float:
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
            lines.append(f"| {label} | {fmt.format(value_of(a))}{_spread(a)} | {fmt.format(value_of(b))}{_spread(b)} "
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


def plot_solver_cost(cost: dict[str, Any], path: Path) -> None:
    plt = pyplot()
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


def report_section(cost: dict[str, Any], results: Path) -> list[str]:
    """The cost section of BENCHMARKS.md, with its plot written to `results`."""
    plot_solver_cost(cost, results / "solver_cost.png")
    return cost_section(cost)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-latency", action="store_true", help="only count parameters and FLOPs")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (their median is kept)")
    paths.add_publish_option(parser)
    parser.add_argument("--output", type=Path, default=None, help="JSON file (overrides --publish)")
    args = parser.parse_args(argv)
    args.output = args.output or paths.results_dir(args.publish) / RESULTS_FILE
    result = run(args.repeats, counts_only=args.no_latency)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print(f"results written to {paths.shown(args.output)}")
    return result


if __name__ == "__main__":
    main()
