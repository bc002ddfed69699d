"""Parameters, FLOPs per call and CPU/GPU forward latency of the cUNet preset vs diffusers' `UNet2DModel`.

    python -m benchmarks.cost                # CIFAR-10 size, counts + latency at batch 1 and 16
    python -m benchmarks.cost --no-latency   # counts only (seconds)

Writes `benchmarks/results/cost.json`.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from diffusers_cunet.baselines import ddpm_cifar10_unet
from diffusers_cunet.flops import count_forward_flops, count_parameters
from diffusers_cunet.presets import from_preset

RESULTS = Path(__file__).parent / "results"


@torch.no_grad()
def forward_latency(model, batch_size: int, repeats: int, device: torch.device) -> list[float]:
    """Seconds per forward call, one entry per repeat, after two warm-up calls."""
    config = model.config
    sample = torch.randn(batch_size, config.in_channels, config.sample_size, config.sample_size, device=device)
    timestep = torch.full((batch_size,), 500, device=device)
    times = []
    for i in range(repeats + 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        model(sample, timestep)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-latency", action="store_true", help="only count parameters and FLOPs")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--output", type=Path, default=RESULTS / "cost.json")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    models = {"cunet": from_preset("cifar10-32"), "unet2d": ddpm_cifar10_unet()}
    rows = {
        name: {"params": count_parameters(m), "gflops": count_forward_flops(m) / 1e9} for name, m in models.items()
    }
    if not args.no_latency:
        for name, model in models.items():
            model.to(device).eval()
            for batch in args.batch_sizes:
                times = forward_latency(model, batch, args.repeats, device)
                rows[name][f"latency_b{batch}_median_s"] = statistics.median(times)
                rows[name][f"latency_b{batch}_stdev_s"] = statistics.stdev(times) if len(times) > 1 else 0.0

    print(f"{'':24}{'cUNet (cifar10-32)':>20}{'UNet2DModel (ddpm)':>20}{'ratio':>8}")
    for key in rows["cunet"]:
        if key.endswith("stdev_s"):
            continue
        a, b = rows["cunet"][key], rows["unet2d"][key]
        print(f"{key:24}{a:>20,.4g}{b:>20,.4g}{a / b:>8.3f}")
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {device}",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "models": rows,
        "ratios": {k: rows["cunet"][k] / rows["unet2d"][k] for k in rows["cunet"]},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print(f"results written to {args.output}")
    return result


if __name__ == "__main__":
    main()
