"""The classifier-free guidance section of BENCHMARKS.md, read from `guidance.json` (`benchmarks.guidance`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .guidance import ACCURACY_TARGET, GRID_FILE, PLOT_FILE, plot, point_label, verdicts
from .paths import shown


def section(results: dict[str, Any], folder: Path) -> list[str]:
    settings, floor, judge = results["settings"], results["reference_real_vs_real"], results["judge"]
    lines = [
        "\n## Classifier-free guidance on Fashion-MNIST: class accuracy and FID against the scale\n",
        f"`python -m benchmarks.guidance --mode {results['mode']}` ({results['date']}, torch {results['torch']}, "
        f"{results['threads']} threads, {results['device']}). Both networks trained alike: EDM, "
        f"{settings['steps']} steps of batch {settings['batch_size']}, labels replaced by the null class with "
        f"probability 0.1. Each scale: {settings['samples']} samples ({settings['samples'] // 10} per class, the same "
        f"noise and labels at every scale), EDM DPM-Solver++ {settings['sampling_steps']} steps. Class accuracy = the "
        f"share the judge classifies as the class asked for (its accuracy on real test images, the ceiling: "
        f"{judge['test_accuracy']:.1%}); FID in the judge's features against {settings['test_images']:,} test images "
        f"(floor, {settings['samples']} real training images: {floor['fid']:.2f}). Target: a scale with FID no worse "
        f"than scale 1's and class accuracy >= {ACCURACY_TARGET:.0%}.\n",
        "| network | scale | class accuracy | FID | KID | precision | recall | ODE evals/image | ms/image |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["runs"]:
        for p in row["points"]:
            evaluations = p["ode_evaluations_per_image"] if p["ode_evaluations_per_image"] is not None else "-"
            lines.append(f"| `{row['name']}` | {point_label(p)} | {p['class_accuracy']:.1%} | {p['fid']:.2f} | "
                         f"{p['kid_mean']:.3f} | {p['precision']:.3f} | {p['recall']:.3f} | {evaluations} | "
                         f"{p['sampling_s_per_image'] * 1e3:.0f} |")  # fmt: skip
    for name, verdict in verdicts(results["runs"]).items():
        meeting = ", ".join(verdict["scales_meeting_target"]) or "none"
        lines.append(f"\n`{name}`: scales meeting the target: {meeting}; the most accurate scale at FID no worse than "
                     f"scale 1's: {verdict['best_scale_at_fid_no_worse']} "
                     f"({verdict['best_accuracy_at_fid_no_worse']:.1%}).")  # fmt: skip
    plot(results, folder / PLOT_FILE)
    lines.append(f"\n![FID and class accuracy against the guidance scale]({shown(folder / PLOT_FILE)})\n")
    if (folder / GRID_FILE).exists():
        lines.append(f"![one row per class at each scale (cUNet)]({shown(folder / GRID_FILE)})\n")
    return lines
