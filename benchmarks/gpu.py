"""GPU cost of the cUNet against diffusers' `UNet2DModel`, side by side in one process.

Forward latency (batch 1 and 128; fp32, bf16 autocast and bf16 weights; eager, CUDA-graphed and `torch.compile`d),
DDIM-50 sampling at batch 256 (eager and CUDA-graphed, through `ContinuousUNetPipeline`), training images/s and
peak memory at batch 128 (fp32 and bf16 autocast), the cUNet's solver sweep, graph breaks under `torch.compile`,
and a kernel count per forward call. Results go to a JSON file after every section, so a run that is stopped
early keeps what it measured. Sections run cheapest first; `--time-budget` skips the compiled ones when time is
short.

    python -m benchmarks.gpu                           # on a CUDA machine -> outputs/benchmarks/results/gpu.json
    python -m benchmarks.gpu --publish                 # the same into the tracked benchmarks/results/gpu.json
    python -m benchmarks.gpu --mode tiny --output x.json   # the CPU smoke test: small models, few repeats
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch
from diffusers import DDIMScheduler, UNet2DModel
from diffusers.utils import logging as diffusers_logging

from diffusers_cunet.acceleration import CUDAGraphedModel, compile_model
from diffusers_cunet.feature_cache import DeepFeatureCache
from diffusers_cunet.flops import count_call_flops, count_forward_flops, count_parameters
from diffusers_cunet.noise_schedule import make_noise_scheduler
from diffusers_cunet.pipelines import ContinuousUNetPipeline
from diffusers_cunet.presets import from_preset
from training.baselines import UNET2D_PRESETS, ddpm_cifar10_unet

from . import paths
from .timing import inputs, median_seconds, sync

RESULTS_FILE = "gpu.json"  # in the results folder; its report section is `report_section`

MODES = {
    # batch sizes, sampling batch and steps, repeats, training batch
    "full": dict(batches=(1, 128), sampling_batch=256, sampling_steps=50, repeats=20, train_batch=128, train_steps=10),
    "tiny": dict(batches=(1, 4), sampling_batch=4, sampling_steps=3, repeats=2, train_batch=4, train_steps=2),
}
SOLVER_SWEEP = (("euler", 1), ("euler", 2), ("euler", 4), ("rk4", 1))


def build_models(mode: str) -> dict[str, torch.nn.Module]:
    if mode == "tiny":
        return {"cunet": from_preset("digits-16"), "unet2d": UNet2DModel(**UNET2D_PRESETS["digits-16"])}
    return {"cunet": from_preset("cifar10-32"), "unet2d": ddpm_cifar10_unet()}


def precision_context(precision: str, device: torch.device):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def runner(model, execution: str):
    """The callable to time for an execution mode: the model itself, or its CUDA-graphed wrapper."""
    if execution == "graphed":
        return CUDAGraphedModel(model)
    return model


def forward_latency(models, settings, device, executions) -> list[dict[str, Any]]:
    rows = []
    for precision in ("fp32", "bf16", "bf16-weights"):
        for batch in settings["batches"]:
            if precision == "bf16-weights" and batch == 1:
                continue
            for execution in executions:
                row = {"precision": precision, "batch": batch, "execution": execution}
                for name, model in models.items():
                    dtype = torch.bfloat16 if precision == "bf16-weights" else torch.float32
                    model.to(dtype)
                    sample, t = inputs(model, batch, device, dtype)
                    run = runner(model, execution)
                    with torch.no_grad(), precision_context(precision, device):
                        row[f"{name}_ms"] = 1e3 * median_seconds(
                            lambda r=run, s=sample, t=t: r(s, t), device, settings["repeats"]
                        )
                    model.to(torch.float32)
                row["ratio"] = row["cunet_ms"] / row["unet2d_ms"]
                rows.append(row)
                print(f"forward {precision:12} b{batch:<4} {execution:8} cUNet {row['cunet_ms']:8.2f} ms  "
                      f"UNet2DModel {row['unet2d_ms']:8.2f} ms  ratio {row['ratio']:.3f}", flush=True)  # fmt: skip
    return rows


def sampling(models, settings, device, executions) -> list[dict[str, Any]]:
    """DDIM sampling through `ContinuousUNetPipeline` (its timesteps live on the device), bf16 autocast."""
    rows = []
    precision = "bf16" if device.type == "cuda" else "fp32"
    for execution in executions:
        row = {"precision": precision, "batch": settings["sampling_batch"], "steps": settings["sampling_steps"],
               "execution": execution}  # fmt: skip
        for name, model in models.items():
            scheduler = DDIMScheduler.from_config(make_noise_scheduler().config)
            pipe = ContinuousUNetPipeline(unet=model, scheduler=scheduler)
            pipe.set_progress_bar_config(disable=True)
            pipe.unet = runner(model, execution)

            def run(p=pipe):
                with precision_context(precision, device):
                    p(batch_size=settings["sampling_batch"], num_inference_steps=settings["sampling_steps"],
                      output_type="pt", generator=torch.Generator(device).manual_seed(0))  # fmt: skip

            row[f"{name}_s"] = median_seconds(run, device, max(2, settings["repeats"] // 8), warmup=1)
        row["ratio"] = row["cunet_s"] / row["unet2d_s"]
        rows.append(row)
        print(f"DDIM-{row['steps']} b{row['batch']} {execution:8} cUNet {row['cunet_s']:.3f} s  "
              f"UNet2DModel {row['unet2d_s']:.3f} s  ratio {row['ratio']:.3f}", flush=True)  # fmt: skip
    return rows


def training(models, settings, device, compiled: bool = False, precisions=("fp32", "bf16")) -> list[dict[str, Any]]:
    """Images/s of an AdamW step on an MSE loss, and the step's peak memory (CUDA only)."""
    rows = []
    batch = settings["train_batch"]
    for precision in precisions:
        row = {"precision": precision, "batch": batch, "execution": "compiled" if compiled else "eager"}
        for name, model in models.items():
            model.train()
            net = model
            if compiled:
                torch._dynamo.reset()
                net = torch.compile(model, **({} if device.type == "cuda" else {"backend": "aot_eager"}))
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
            sample, t = inputs(model, batch, device)
            target = torch.randn_like(sample)

            def step(net=net, optimizer=optimizer, sample=sample, t=t, target=target, precision=precision):
                optimizer.zero_grad(set_to_none=True)
                with precision_context(precision, device):
                    prediction = net(sample, t).sample
                torch.nn.functional.mse_loss(prediction.float(), target).backward()
                optimizer.step()

            if device.type == "cuda":
                step()
                torch.cuda.reset_peak_memory_stats()
            seconds = median_seconds(step, device, settings["train_steps"], warmup=2)
            row[f"{name}_images_per_s"] = batch / seconds
            if device.type == "cuda":
                row[f"{name}_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            model.eval()
            del optimizer
        row["throughput_ratio"] = row["cunet_images_per_s"] / row["unet2d_images_per_s"]
        rows.append(row)
        cunet, unet2d = row["cunet_images_per_s"], row["unet2d_images_per_s"]
        print(f"training {precision} b{batch} {row['execution']}: cUNet {cunet:.0f} img/s  "
              f"UNet2DModel {unet2d:.0f} img/s  x{row['throughput_ratio']:.2f}", flush=True)  # fmt: skip
    return rows


def solver_sweep(model, settings, device, executions) -> list[dict[str, Any]]:
    rows = []
    batch = settings["batches"][-1]
    precision = "bf16" if device.type == "cuda" else "fp32"
    sample, t = inputs(model, batch, device)
    original = model.solver
    for method, steps in SOLVER_SWEEP:
        model.set_solver(method=method, steps=steps)
        row = {"method": method, "steps": steps, "evaluations_per_call": model.evaluations_per_call(),
               "precision": precision, "batch": batch}  # fmt: skip
        for execution in executions:
            run = runner(model, execution)
            with torch.no_grad(), precision_context(precision, device):
                row[f"{execution}_ms"] = 1e3 * median_seconds(
                    lambda r=run, s=sample, t=t: r(s, t), device, settings["repeats"]
                )
        rows.append(row)
        print(f"solver {method}-{steps}: " + ", ".join(f"{e} {row[f'{e}_ms']:.2f} ms" for e in executions), flush=True)
    model.set_solver(**vars(original))
    return rows


def block_skipping(model, settings, device, executions) -> list[dict[str, Any]]:
    """The cUNet's forward time with more and more ODE blocks skipped (the deepest first), and a call that reuses
    cached deep features (eager only: a CUDA graph cannot hold the cache), beside its counted FLOPs: a saving in
    FLOPs that shows in time only if the skipped work was not hidden by launch overhead."""
    rows = []
    batch = settings["batches"][-1]
    precision = "bf16" if device.type == "cuda" else "fp32"
    sample, t = inputs(model, batch, device)
    levels = len(model.config.block_out_channels)
    depth = {"mid_block": levels, **{f"down_blocks.{i}": i for i in range(levels)},
             **{f"up_blocks.{k}": levels - 1 - k for k in range(levels)}}  # fmt: skip
    deepest_first = sorted(model.ode_block_names, key=lambda name: -depth[name])
    for count in (0, 2, 4):
        solver = {"skip": deepest_first[:count]}
        flops = count_call_flops(lambda e=solver: model(sample[:1], t[:1], solver=e))
        row = {"skipped": solver["skip"], "gflops_per_call": flops / 1e9, "batch": batch, "precision": precision}
        for execution in executions:
            run = runner(model, execution)
            with torch.no_grad(), precision_context(precision, device):
                row[f"{execution}_ms"] = 1e3 * median_seconds(
                    lambda r=run, s=sample, t=t, e=solver: r(s, t, solver=e), device, settings["repeats"]
                )
        rows.append(row)
        print(f"skip {count} blocks: " + ", ".join(f"{e} {row[f'{e}_ms']:.2f} ms" for e in executions), flush=True)
    cache = DeepFeatureCache(1)
    with torch.no_grad():
        model(sample, t, feature_cache=cache)
    cache.refresh = False
    flops = count_call_flops(lambda: model(sample, t, feature_cache=cache)) / batch
    with torch.no_grad(), precision_context(precision, device):
        milliseconds = 1e3 * median_seconds(lambda: model(sample, t, feature_cache=cache), device, settings["repeats"])
    rows.append({"skipped": [], "cached_levels": 1, "gflops_per_call": flops / 1e9, "batch": batch,
                 "precision": precision, "eager_ms": milliseconds})  # fmt: skip
    print(f"cached call (top level only): eager {milliseconds:.2f} ms", flush=True)
    return rows


def graph_breaks(models, device) -> dict[str, dict[str, int]]:
    """Graphs and graph breaks `torch._dynamo.explain` finds in one batch-2 forward call of each model."""
    out = {}
    for name, model in models.items():
        sample, t = inputs(model, 2, device)
        torch._dynamo.reset()
        explanation = torch._dynamo.explain(model)(sample, t)
        out[name] = {"graphs": explanation.graph_count, "graph_breaks": explanation.graph_break_count}
        print(f"{name}: {out[name]['graphs']} graph(s), {out[name]['graph_breaks']} break(s)", flush=True)
    torch._dynamo.reset()
    return out


def kernel_counts(models, settings, device) -> dict[str, dict[str, Any]]:
    """Device kernels per eager forward call (batch 128, bf16 autocast) and how long the device was busy in it:
    where eager time goes when the host, not the GPU, is the bottleneck."""
    out = {}
    if device.type != "cuda":
        return out
    for name, model in models.items():
        sample, t = inputs(model, settings["batches"][-1], device)
        with torch.no_grad(), precision_context("bf16", device):
            profile = kernel_time_by_kind(lambda m=model, s=sample, t=t: m(s, t), device)
        busy = sum(profile["ms_by_kind"].values())
        out[name] = {"kernels": profile["kernels"], "device_busy_ms": busy, **profile}
        print(f"{name}: {profile['kernels']} kernels per forward, device busy {busy:.2f} ms", flush=True)
    return out


def kernel_time_by_kind(fn, device) -> dict[str, Any]:
    """Device time of one call of `fn` by kernel kind (convolution/matmul, normalisation, other) and its top
    kernels, from torch.profiler: what is left once the host no longer stalls the device."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        sync(device)
    kinds: dict[str, float] = {"conv_or_matmul": 0.0, "norm": 0.0, "other": 0.0}
    by_name: dict[str, float] = {}
    events = [e for e in prof.events() if e.device_type.name == "CUDA"]
    for event in events:
        name = event.name.lower()
        kind = "other"
        if any(k in name for k in ("conv", "gemm", "sm90", "cutlass", "xmma", "wgrad", "dgrad", "implicit")):
            kind = "conv_or_matmul"
        elif "norm" in name or "welford" in name:
            kind = "norm"
        kinds[kind] += event.device_time / 1e3
        by_name[event.name[:80]] = by_name.get(event.name[:80], 0.0) + event.device_time / 1e3
    top = dict(sorted(by_name.items(), key=lambda item: -item[1])[:6])
    return {"ms_by_kind": kinds, "kernels": len(events), "top_kernels_ms": top}


def compiled_forward(
    models, settings, device, mode: str, channels_last: bool = False, profile_kernels: bool = False
) -> list[dict[str, Any]]:
    """Forward latency of `torch.compile`d models (bf16 autocast on CUDA), compile time in its own column."""
    batch = settings["batches"][-1]
    precision = "bf16" if device.type == "cuda" else "fp32"
    execution = f"compiled ({mode})" + (", channels_last" if channels_last else "")
    row: dict[str, Any] = {"precision": precision, "batch": batch, "execution": execution}
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for name, model in models.items():
        torch._dynamo.reset()
        model.to(memory_format=memory_format)
        kwargs = {} if mode == "default" else {"mode": mode}
        if device.type != "cuda":
            kwargs = {"backend": "aot_eager"}
        # The cUNet must compile as one graph; the UNet2DModel is allowed its breaks (fair to both).
        net = compile_model(model, fullgraph=name == "cunet", **kwargs)
        sample, t = inputs(model, batch, device)
        sample = sample.contiguous(memory_format=memory_format)
        call = lambda n=net, s=sample, t=t: n(s, t)
        with torch.no_grad(), precision_context(precision, device):
            start = time.perf_counter()
            for _ in range(3):  # reduce-overhead records its CUDA graph on the third call
                compiled = call().sample.float()
            sync(device)
            row[f"{name}_compile_s"] = time.perf_counter() - start
            eager = model(sample, t).sample.float()
            row[f"{name}_max_abs_diff_vs_eager"] = (compiled - eager).abs().max().item()
            row[f"{name}_ms"] = 1e3 * median_seconds(call, device, settings["repeats"])
            if device.type == "cuda" and profile_kernels:
                row[f"{name}_profile"] = kernel_time_by_kind(call, device)
        model.to(memory_format=torch.contiguous_format)
    row["ratio"] = row["cunet_ms"] / row["unet2d_ms"]
    print(f"forward {precision} b{batch} {execution}: cUNet {row['cunet_ms']:.2f} ms  "
          f"UNet2DModel {row['unet2d_ms']:.2f} ms  ratio {row['ratio']:.3f} "
          f"(compile {row['cunet_compile_s']:.0f} s / {row['unet2d_compile_s']:.0f} s)", flush=True)  # fmt: skip
    torch._dynamo.reset()
    return [row]


EAGER_SECTIONS = ("graph_breaks", "forward", "kernels", "training", "sampling", "solver_sweep", "block_skipping")


def run(
    mode: str,
    output: Path,
    time_budget: float,
    compile_modes: tuple[str, ...],
    compiled_training: tuple[str, ...] = (),
    sections: tuple[str, ...] = EAGER_SECTIONS,
    channels_last: bool = False,
    profile_kernels: bool = False,
):
    began = time.perf_counter()
    diffusers_logging.set_verbosity_error()  # the bf16-weights rows cast models back and forth on purpose
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    settings = MODES[mode]
    models = build_models(mode)
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.machine()})",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "mode": mode,
        "counts": {
            n: {"params": count_parameters(m), "gflops_per_call": count_forward_flops(m) / 1e9}
            for n, m in models.items()
        },  # fmt: skip
    }
    for model in models.values():
        model.to(device).eval()
    executions = ("eager", "graphed") if device.type == "cuda" else ("eager",)
    output.parent.mkdir(parents=True, exist_ok=True)

    def save(section: str, measure, *args, **kwargs) -> None:
        """Run one section and write everything so far; a failing section is recorded, and the next one runs."""
        try:
            result[section] = measure(*args, **kwargs)
        except Exception as error:  # a benchmark reports what broke rather than losing the other sections
            result.setdefault("errors", {})[section] = f"{type(error).__name__}: {error}"
            print(f"section {section} failed: {type(error).__name__}: {error}", flush=True)
            for model in models.values():
                model.to(torch.float32).eval()
        result["elapsed_s"] = time.perf_counter() - began
        output.write_text(json.dumps(result, indent=2))

    eager_sections = {
        "graph_breaks": (graph_breaks, models, device),
        "forward": (forward_latency, models, settings, device, executions),
        "kernels": (kernel_counts, models, settings, device),
        "training": (training, models, settings, device),
        "sampling": (sampling, models, settings, device, executions),
        "solver_sweep": (solver_sweep, models["cunet"], settings, device, executions),
        "block_skipping": (block_skipping, models["cunet"], settings, device, executions),
    }
    for section in sections:
        save(section, *eager_sections[section])
    for compile_mode in compile_modes:
        if time.perf_counter() - began > time_budget:
            print(f"time budget spent: skipping compiled ({compile_mode})", flush=True)
            continue
        suffix = "_channels_last" if channels_last else ""
        save(f"compiled_{compile_mode}{suffix}", compiled_forward, models, settings, device, compile_mode,
             channels_last, profile_kernels)  # fmt: skip
    if compiled_training and time.perf_counter() - began < time_budget:
        # each compiled training precision costs a forward and a backward compile per model
        save("training_compiled", training, models, settings, device, compiled=True, precisions=compiled_training)
    print(f"results written to {output} ({time.perf_counter() - began:.0f} s)")
    return result


# ------------------------------------------------------------------------------ its section of the report
def summary_table(gpu: dict[str, Any]) -> list[str]:
    """The short GPU table: each model's fastest bf16 forward at the largest batch, sampling and training rows."""
    rows = gpu_forward_rows(gpu)
    if not rows:
        return [f"(no forward latency measured yet on {gpu.get('device', 'a GPU')})"]
    batch = max(r["batch"] for r in rows)
    best = best_forward(gpu, batch)
    lines = [f"Measured on one {gpu['device']} (torch {gpu['torch']}, {gpu['date']}), medians; ratio = cUNet / "
             "UNet2DModel.\n", "| | cUNet | UNet2DModel | ratio |", "|---|---:|---:|---:|"]  # fmt: skip
    if best:
        lines.append(f"| fastest bf16 forward, batch {batch} (each model's best way) | {best['cunet_ms']:.2f} ms | "
                     f"{best['unet2d_ms']:.2f} ms | **{best['ratio']:.2f}** |")  # fmt: skip
    for r in gpu.get("sampling", []):
        lines.append(f"| DDIM-{r['steps']} sampling, batch {r['batch']}, {r['execution']}, {r['precision']} | "
                     f"{r['cunet_s']:.2f} s | {r['unet2d_s']:.2f} s | {r['ratio']:.2f} |")  # fmt: skip
    for r in gpu.get("training", []) + gpu.get("training_compiled", []):
        lines.append(f"| training, batch {r['batch']}, {r['execution']}, {r['precision']} (images/s) | "
                     f"{r['cunet_images_per_s']:,.0f} | {r['unet2d_images_per_s']:,.0f} | "
                     f"{r['throughput_ratio']:.2f}x |")  # fmt: skip
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


def report_section(gpu: dict[str, Any], results: Path) -> list[str]:
    """The GPU section of BENCHMARKS.md."""
    return gpu_section(gpu)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=sorted(MODES), default="full")
    paths.add_publish_option(parser)
    parser.add_argument("--output", type=Path, default=None, help="JSON file (overrides --publish)")
    parser.add_argument("--time-budget", type=float, default=float("inf"),
                        help="seconds after which the compiled sections are skipped")  # fmt: skip
    parser.add_argument("--compile-modes", nargs="*", default=["reduce-overhead", "default"],
                        choices=["reduce-overhead", "default", "max-autotune-no-cudagraphs"])  # fmt: skip
    parser.add_argument("--compiled-training", nargs="*", default=[], choices=["fp32", "bf16"],
                        help="also time torch.compile'd training at these precisions")  # fmt: skip
    parser.add_argument("--sections", nargs="*", default=list(EAGER_SECTIONS), choices=EAGER_SECTIONS)
    parser.add_argument("--channels-last", action="store_true", help="compiled forward in channels_last")
    parser.add_argument("--profile-kernels", action="store_true", help="kernel time by kind of the compiled calls")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cpu: time the full sizes on the CPU on purpose")  # fmt: skip
    args = parser.parse_args(argv)
    if args.mode != "tiny" and args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here: this benchmark measures a GPU. Use --mode tiny for the CPU smoke test, "
                     "or --device cpu to time the full sizes on the CPU on purpose.")  # fmt: skip
    name = RESULTS_FILE if args.mode == "full" else f"gpu_{args.mode}.json"
    output = args.output or paths.results_dir(args.publish) / name
    return run(args.mode, output, args.time_budget, tuple(args.compile_modes), tuple(args.compiled_training),
               tuple(args.sections), args.channels_last, args.profile_kernels)  # fmt: skip


if __name__ == "__main__":
    main()
