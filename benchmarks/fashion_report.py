"""The Fashion-MNIST section of BENCHMARKS.md and its plots, read from `fashion.json` (`benchmarks.fashion`).

Training times are the median optimizer step times the steps (`train_seconds_median`; the wall-time sum is in the
JSON too), sampling times the median batch: both robust to a burst of other work on a shared machine. Every
verdict is computed here from the runs: the seed spread (|FID(seed 0) - FID(seed 1)| of each x1 EDM model,
the larger of the two), each same-objective, same-width pair's FID, training-time and sampling-time ratios, the
cross-width frontier, and the training steps EDM-FDM needs to reach EDM's final FID.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .paths import shown

TARGET_RATIO = 0.5  # the target: the cUNet's FID at <= 0.5x the UNet2DModel's training and sampling time
SEED_PAIRS = (("cunet-x1-edm", "cunet-x1-edm-s1"), ("unet2d-x1-edm", "unet2d-x1-edm-s1"))


def seed_spread(runs: dict[str, dict[str, Any]]) -> float | None:
    """The larger |FID difference| between the two seeds of the x1 EDM models (None without a seed pair)."""
    gaps = [abs(runs[a]["final"]["fid"] - runs[b]["final"]["fid"]) for a, b in SEED_PAIRS if a in runs and b in runs]
    return max(gaps) if gaps else None


def pairs(runs: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """(cUNet, UNet2DModel) names that share width, objective and seed: `cunet-<rest>` against `unet2d-<rest>`."""
    return [(name, "unet2d" + name[5:]) for name in runs if name.startswith("cunet-") and "unet2d" + name[5:] in runs]


def pair_verdict(cunet: dict[str, Any], unet: dict[str, Any], spread: float | None) -> dict[str, Any]:
    """FID gap, time ratios and whether the cUNet meets the target against `unet` (ties within `spread`)."""
    gap = cunet["final"]["fid"] - unet["final"]["fid"]
    train_ratio = cunet["train_seconds_median"] / unet["train_seconds_median"]
    sampling_ratio = cunet["final"]["sampling_s_per_image"] / unet["final"]["sampling_s_per_image"]
    as_good = gap <= (spread or 0.0)
    return {"fid_gap": gap, "train_ratio": train_ratio, "sampling_ratio": sampling_ratio, "as_good": as_good,
            "meets_target": as_good and train_ratio <= TARGET_RATIO and sampling_ratio <= TARGET_RATIO}  # fmt: skip


def frontier(runs: dict[str, dict[str, Any]], spread: float | None) -> list[str]:
    """For every EDM UNet2DModel (end of training, sampler at the mode's steps): the cUNets at least as good in FID
    (within the spread) at <= 0.5x its training time."""
    lines = []
    cunets = [r for r in runs.values() if r["model_type"] == "cunet" and r["extra"].get("preconditioning") == "edm"]
    for unet in runs.values():
        if unet["model_type"] != "unet2d" or unet["extra"].get("preconditioning") != "edm":
            continue
        better = [c["name"] for c in cunets if c["final"]["fid"] <= unet["final"]["fid"] + (spread or 0.0)
                  and c["train_seconds_median"] <= TARGET_RATIO * unet["train_seconds_median"]]  # fmt: skip
        verdict = ", ".join(f"`{name}`" for name in better) if better else "**none**"
        lines.append(
            f"- `{unet['name']}` (FID {unet['final']['fid']:.2f}, {unet['train_seconds_median']:.0f} s): {verdict}"
        )
    return lines


def steps_to_reach(curve: list[dict[str, Any]], target: float) -> float | None:
    """The first training step where a FID curve (scored points, linearly interpolated) reaches `target`."""
    points = [(p["step"], p["fid"]) for p in curve if "fid" in p]
    for (step0, fid0), (step1, fid1) in zip([(0, float("inf")), *points[:-1]], points):
        if fid1 <= target:
            if fid0 == float("inf") or fid0 == fid1:
                return float(step1)
            return step0 + (fid0 - target) / (fid0 - fid1) * (step1 - step0)
    return None


def fdm_lines(runs: dict[str, dict[str, Any]], spread: float | None) -> list[str]:
    edm, fdm = runs.get("cunet-x1-edm"), runs.get("cunet-x1-edm-fdm")
    if edm is None or fdm is None:
        return []
    target = edm["final"]["fid"]
    reached = steps_to_reach(fdm["curve"], target)
    lines = ["\n### EDM-FDM against EDM (cUNet x1, same steps, seed 0)\n",
             "| step | EDM FID | EDM-FDM FID |", "|---:|---:|---:|"]  # fmt: skip
    fdm_points = {p["step"]: p for p in fdm["curve"] if "fid" in p}
    for point in (p for p in edm["curve"] if "fid" in p):
        other = fdm_points.get(point["step"])
        lines.append(f"| {point['step']} | {point['fid']:.2f} | {other['fid']:.2f} |" if other else "")
    if reached is None:
        lines.append(f"\nEDM-FDM does not reach EDM's final FID ({target:.2f}) within {fdm['steps']} steps "
                     f"(its final FID {fdm['final']['fid']:.2f}; seed spread {fmt(spread)}).")  # fmt: skip
    else:
        lines.append(
            f"\nEDM-FDM reaches EDM's final FID ({target:.2f}) at ~{reached:.0f} steps, "
            f"{reached / edm['steps']:.2f}x EDM's {edm['steps']} (goal 0.6x; seed spread {fmt(spread)})."
        )
    return lines


def fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def section(fashion: dict[str, Any], results: Path) -> list[str]:
    runs = {run["name"]: run for run in fashion["runs"]}
    floor = fashion["reference_real_vs_real"]
    spread = seed_spread(runs)
    judge = fashion.get("judge", {})
    lines = [
        "\n## Fashion-MNIST: quality against training and sampling time\n",
        f"`python -m benchmarks.fashion --mode {fashion['mode']}`, {fashion['date']}, device {fashion['device']} "
        f"({fashion['threads']} threads), torch {fashion['torch']}. 60,000 training images padded to 32x32; "
        f"{fashion['settings']['samples']:,} samples per score against {floor['real_images']:,} test images, in the "
        f"features of the committed judge (test accuracy {judge.get('test_accuracy', 'n/a')}); sampler DPM-Solver++ "
        f"{fashion['settings']['sampling_steps']} steps (EDM's for EDM-trained models). Floor (as many real "
        f"training images): FID **{floor['fid']:.2f}**, KID {floor['kid_mean']:.4f}, precision "
        f"{floor['precision']:.3f}, recall {floor['recall']:.3f}. Seed spread of FID: {fmt(spread)}.\n",
        "Train s: median step x steps.\n",
        "| model | params | steps | train s | FID | KID | precision | recall | classes | held-out err | s/image |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs.values():
        f = run["final"]
        lines.append(
            f"| `{run['name']}` | {run['params'] / 1e6:.2f} M | {run['steps']} | {run['train_seconds_median']:.0f} | "
            f"{f['fid']:.2f} | {f['kid_mean']:.4f} | {f['precision']:.3f} | {f['recall']:.3f} | "
            f"{f['classes_found']} of 10 | {run['held_out_error']:.4f} | {f['sampling_s_per_image'] * 1e3:.1f} ms |"
        )
    lines += ["\n### Same objective, same width\n",
              "| cUNet | UNet2DModel | FID gap | train time | sampling time | as good | target (<= 0.5x both) |",
              "|---|---|---:|---:|---:|---|---|"]  # fmt: skip
    for cunet, unet in pairs(runs):
        v = pair_verdict(runs[cunet], runs[unet], spread)
        lines.append(f"| `{cunet}` | `{unet}` | {v['fid_gap']:+.2f} | {v['train_ratio']:.2f}x | "
                     f"{v['sampling_ratio']:.2f}x | {'yes' if v['as_good'] else 'no'} | "
                     f"{'met' if v['meets_target'] else 'missed'} |")  # fmt: skip
    lines += ["\n### Across widths: cUNets as good (FID within the spread) at <= 0.5x the training time\n",
              *frontier(runs, spread)]  # fmt: skip
    lines += fdm_lines(runs, spread)
    sweeps = [run for run in runs.values() if len(run.get("sweep", [])) > 1]
    if sweeps:
        lines += ["\n### Sampler steps (FID against sampling time per image)\n",
                  "| model | steps | FID | s/image |", "|---|---:|---:|---:|"]  # fmt: skip
        for run in sweeps:
            for point in run["sweep"]:
                lines.append(f"| `{run['name']}` | {point['sampling_steps']} | {point['fid']:.2f} | "
                             f"{point['sampling_s_per_image'] * 1e3:.1f} ms |")  # fmt: skip
    plot(fashion, results / "fashion.png")
    lines.append(f"\n![FID against training and sampling time]({shown(results)}/fashion.png)\n")
    grids = [f"[{run['name']}]({run['samples_grid']})" for run in runs.values() if run.get("samples_grid")]
    lines.append("Sample grids (in the run folders, not committed): " + ", ".join(grids))
    return lines


def plot(fashion: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for run in fashion["runs"]:
        colour = "tab:blue" if run["model_type"] == "cunet" else "tab:orange"
        marker = "o" if run["extra"].get("preconditioning") == "edm" else "s"
        curve = [p for p in run["curve"] if "fid" in p]
        left.plot([p["train_seconds"] for p in curve], [p["fid"] for p in curve], marker=marker, color=colour,
                  alpha=0.8, label=run["name"])  # fmt: skip
        sweep = run.get("sweep") or [run["final"]]
        right.plot([p["sampling_s_per_image"] * 1e3 for p in sweep], [p["fid"] for p in sweep], marker=marker,
                   color=colour, alpha=0.8, label=run["name"])  # fmt: skip
    floor = fashion["reference_real_vs_real"]["fid"]
    for axis, label in ((left, "training seconds"), (right, "sampling ms per image")):
        axis.axhline(floor, color="grey", linestyle="--", label="floor (real vs real)")
        axis.set_xlabel(label)
        axis.set_ylabel("FID (judge features)")
        axis.set_yscale("log")
    left.legend(fontsize=6)
    figure.suptitle("Fashion-MNIST: cUNet (blue) vs UNet2DModel (orange); circles EDM, squares other objectives")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
