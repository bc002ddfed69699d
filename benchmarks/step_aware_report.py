"""The step-aware section of BENCHMARKS.md and its plot, read from `step_aware.json` (`benchmarks.step_aware`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .paths import shown
from .step_aware import CACHE_TARGET, FID_TOLERANCE, FLOP_TARGET, SUBJECT


def by_label(results: dict[str, Any]) -> dict[str, dict[int, dict[str, Any]]]:
    rows: dict[str, dict[int, dict[str, Any]]] = {}
    for row in results["rows"]:
        rows.setdefault(row["label"], {})[row["seed"]] = row
    return rows


def plot(results: dict[str, Any], path: Path) -> None:
    """FID (seed 0) against GFLOPs per sample for every scored setting, with the default's tolerance band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = by_label(results)
    markers = {"default": "s", "searched skips": "*", "cache": "^", "steps": "o"}
    for label, seeds in rows.items():
        row = seeds.get(0) or next(iter(seeds.values()))
        kind = next((key for key in markers if key in label), "default")
        size = 90 if kind == "searched skips" else 50
        ax.scatter(row["gflops_per_sample"], row["fid"], marker=markers[kind], s=size)
        ax.annotate(label.replace("cunet-", ""), (row["gflops_per_sample"], row["fid"]), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")  # fmt: skip
    default = rows.get(f"{SUBJECT} default", {}).get(0)
    if default:
        ax.axhline(default["fid"] * (1 + FID_TOLERANCE), ls="--", c="k", lw=0.8, label="default FID + 5%")
        ax.axvline(default["gflops_per_sample"] * (1 - FLOP_TARGET), ls=":", c="gray", lw=0.8, label="40% fewer FLOPs")
        ax.legend(fontsize=8)
    ax.set(xlabel="GFLOPs per sample (counted over a whole sampling call)", ylabel="FID (lower is better)",
           title="Fashion-MNIST: step-aware compute against the default")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fid_text(seeds: dict[int, dict[str, Any]]) -> str:
    return " / ".join(f"{seeds[seed]['fid']:.2f}" for seed in sorted(seeds))


def section(results: dict[str, Any], folder: Path) -> list[str]:
    rows = by_label(results)
    settings = results["settings"]
    verdicts = results.get("verdicts", {})
    default = rows.get(f"{SUBJECT} default", {}).get(0)
    lines = [
        "\n## Step-aware compute on Fashion-MNIST: block skipping and feature reuse against today's default\n",
        f"Mode `{results['mode']}`. The default is the shipped setting: the x1 EDM cUNet (`{SUBJECT}`, trained by the "
        f"Fashion-MNIST benchmark), one Euler step per ODE block, EDM DPM-Solver++ with {settings['sampling_steps']} "
        f"steps. Every row is {settings['final_samples']} samples scored against the test images; GFLOPs per sample "
        "are counted by torch's FLOP counter over a whole sampling call (every network call as it ran). Block-skip "
        f"schedules were searched on {settings['search_samples']} samples per schedule (common random numbers, "
        f"{settings['bins']} c_noise bins, FID within {FID_TOLERANCE:.0%} of the full network), then scored here on "
        "two seeds beside the default. Targets: a skip schedule with >= "
        f"{FLOP_TARGET:.0%} fewer FLOPs, feature reuse with >= {CACHE_TARGET}x fewer, each at <= "
        f"{FID_TOLERANCE:.0%} worse FID (worst seed).\n",
        "| setting | GFLOPs/sample | x default | ODE evals/sample | FID (seed 0 / 1) | FID change (worst) | "
        "s/image | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, seeds in rows.items():
        row = seeds.get(0) or next(iter(seeds.values()))
        verdict = verdicts.get(label)
        ratio = f"{row['gflops_per_sample'] / default['gflops_per_sample']:.2f}x" if default else "-"
        change = f"{verdict['fid_change']:+.1%}" if verdict and verdict["fid_change"] is not None else "-"
        met = ("yes" if verdict["meets_target"] else "no") if verdict else "(reference)"
        milliseconds = row["sampling_s_per_image"] * 1000
        lines.append(f"| `{label}` | {row['gflops_per_sample']:.3f} | {ratio} | {row['evaluations_per_sample']} | "
                     f"{fid_text(seeds)} | {change} | {milliseconds:.1f} ms | {met} |")  # fmt: skip
    for model, search in results.get("searches", {}).items():
        bins = search["best"]["skip_per_bin"]
        described = "; ".join(f"bin {i} ({'least' if i == 0 else 'most' if i == len(bins) - 1 else 'mid'} noise): "
                              + (", ".join(f"`{b}`" for b in blocks) if blocks else "none")
                              for i, blocks in enumerate(bins))  # fmt: skip
        lines.append(
            f"\nSearch on `{model}`: {len(search['trials'])} schedules in {search['search_seconds']:.0f} s; kept "
            f"skips: {described}. On the search's samples: FID {search['full']['fid']:.2f} -> "
            f"{search['best']['fid']:.2f} ({search['fid_change']:+.1%}) at {search['flop_saving']:.0%} fewer GFLOPs."
        )
    plot(results, folder / "step_aware.png")
    lines.append(f"\n![FID against GFLOPs per sample]({shown(folder / 'step_aware.png')})\n")
    if not math.isfinite(sum(row["fid"] for row in results["rows"])):
        lines.append("Some settings produced non-finite FIDs (see the JSON).\n")
    return lines
