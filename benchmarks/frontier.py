"""Reading a quality benchmark's runs as a frontier: the seed spread, whether each model converged, the equal-time
pairs, and whether the cUNet dominates the UNet2DModel at a fraction of its cost.

Every function takes the `runs` of a `benchmarks.quality` result. "At least as good" means a held-out denoising
error and a Fréchet distance each no worse than the other run's plus the seed spread (the difference two training
seeds of one model make), so that a tie within the noise is not read as a loss or a win.
"""

from __future__ import annotations

import re
from typing import Any

METRICS = ("held_out_error", "frechet_distance", "recognisable")  # the first two decide; recognisable is shown
DECIDING = ("held_out_error", "frechet_distance")
CONVERGENCE_FRACTION = 0.7
COST_RATIO = 0.7  # the target: a cUNet at least as good at <= 0.7x the UNet2DModel's cost


def final_value(run: dict[str, Any], metric: str) -> float | None:
    """A run's final held-out error, Fréchet distance or recognisable share."""
    return run.get(metric) if metric == "held_out_error" else run["final"].get(metric)


def seed_spread(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The largest difference between two seeds of one model, per metric, and the pairs it was measured on.

    A run named `<name>-s<k>` is paired with the run named `<name>`; no pair gives an empty spread."""
    by_name = {run["name"]: run for run in runs}
    spread: dict[str, Any] = {"pairs": []}
    for run in runs:
        match = re.fullmatch(r"(.+)-s\d+", run["name"])
        if not match or match.group(1) not in by_name:
            continue
        other = by_name[match.group(1)]
        spread["pairs"].append([other["name"], run["name"]])
        for metric in METRICS:
            a, b = final_value(run, metric), final_value(other, metric)
            if a is not None and b is not None:
                spread[metric] = max(spread.get(metric, 0.0), abs(a - b))
    return spread


def point_near(run: dict[str, Any], fraction: float, metric: str) -> dict[str, Any] | None:
    """The curve point nearest `fraction` of the run's steps that has `metric`."""
    points = [point for point in run["curve"] if point.get(metric) is not None]
    if not points:
        return None
    target = fraction * run.get("steps", run["curve"][-1]["step"])
    return min(points, key=lambda point: abs(point["step"] - target))


def convergence(run: dict[str, Any], spread: dict[str, Any], fraction: float = CONVERGENCE_FRACTION) -> dict:
    """Each metric at `fraction` of training and at the end; converged when the deciding metrics moved by less than
    the seed spread (unknown when there is no spread or no such point)."""
    out: dict[str, Any] = {"name": run["name"]}
    verdicts = []
    for metric in METRICS:
        point, end = point_near(run, fraction, metric), final_value(run, metric)
        out[metric] = None if point is None or end is None else (point["step"], point[metric], end)
        if metric in DECIDING:
            judged = out[metric] is not None and metric in spread and point is not run["curve"][-1]
            verdicts.append(abs(end - point[metric]) < spread[metric] if judged else None)
    out["converged"] = False if False in verdicts else None if None in verdicts else True
    return out


def at_least_as_good(run: dict[str, Any], other: dict[str, Any], spread: dict[str, Any]) -> bool:
    """`run` no worse than `other` on every deciding metric, within the seed spread."""
    return all(final_value(run, m) <= final_value(other, m) + spread.get(m, 0.0) for m in DECIDING)


def equal_time_pairs(runs: list[dict[str, Any]], spread: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs trained for a share of another run's seconds, each beside that run."""
    by_name = {run["name"]: run for run in runs}
    pairs = []
    for run in runs:
        if not run.get("equal_time") or run["equal_time"][1] not in by_name:
            continue
        matched = by_name[run["equal_time"][1]]
        pairs.append({
            "run": run,
            "matched": matched,
            "time_ratio": run["train_seconds"] / matched["train_seconds"],
            "as_good": at_least_as_good(run, matched, spread),
        })  # fmt: skip
    return pairs


def sampling_seconds(run: dict[str, Any]) -> float:
    return run["final"]["sampling_s_per_image"]


def training_seconds(run: dict[str, Any]) -> float:
    return run["train_seconds"]


def dominance(runs: list[dict[str, Any]], spread: dict[str, Any], cost, ratio: float = COST_RATIO) -> list[dict]:
    """For each UNet2DModel run, the cUNet runs at least as good at <= `ratio` times its `cost` (a function of a
    run), and the cheapest cUNet run at least as good at any cost (the closest miss when none qualifies)."""
    cunets = [run for run in runs if run["model_type"] == "cunet"]
    rows = []
    for unet2d in (run for run in runs if run["model_type"] == "unet2d"):
        as_good = sorted((run for run in cunets if at_least_as_good(run, unet2d, spread)), key=cost)
        within = [run for run in as_good if cost(run) <= ratio * cost(unet2d)]
        rows.append({"unet2d": unet2d, "within": within, "cheapest": as_good[0] if as_good else None})
    return rows


def _fmt(value: float | None, metric: str) -> str:
    if value is None:
        return "-"
    return (
        f"{value:.0%}"
        if metric == "recognisable"
        else f"{value:.4f}"
        if metric == "held_out_error"
        else f"{value:.1f}"
    )


def section(runs: list[dict[str, Any]]) -> list[str]:
    """The markdown of this module's readings (empty when the runs have no seed pair to judge differences by)."""
    spread = seed_spread(runs)
    if not spread["pairs"]:
        return []
    pairs = ", ".join(" / ".join(pair) for pair in spread["pairs"])
    lines = [
        "\n### Seed spread, convergence and the 0.7x-cost test\n",
        f"Seed spread (largest difference between two training seeds of one model; pairs {pairs}): held-out error "
        f"{_fmt(spread.get('held_out_error'), 'held_out_error')}, FD {_fmt(spread.get('frechet_distance'), 'fd')}, "
        f"recognised {_fmt(spread.get('recognisable'), 'recognisable')}. Differences smaller than these are ties.\n",
        f"**Convergence**: each model at the checkpoint nearest {CONVERGENCE_FRACTION:.0%} of its training → at the "
        "end. Converged = the held-out error and FD moved by less than the seed spread.\n",
        "| model | held-out error | FD | recognised | converged |",
        "|---|---|---|---|---|",
    ]
    for row in (convergence(run, spread) for run in runs):
        cells = []
        for metric in METRICS:
            entry = row[metric]
            cells.append("-" if entry is None else f"{_fmt(entry[1], metric)} → {_fmt(entry[2], metric)}")
        verdict = {True: "yes", False: "**no**", None: "unknown"}[row["converged"]]
        lines.append(f"| {row['name']} | " + " | ".join(cells) + f" | {verdict} |")
    pair_rows = equal_time_pairs(runs, spread)
    if pair_rows:
        lines += [
            "\n**Equal-time pairs**, each model trained separately (its own warm-up and cosine schedule) for the "
            "seconds shown:\n",
            "| cUNet (steps, s) | UNet2DModel (steps, s) | time ratio | held-out error | FD | recognised "
            "| cUNet at least as good |",
            "|---|---|---:|---|---|---|---|",
        ]
        for p in pair_rows:
            run, matched = p["run"], p["matched"]
            cells = [f"{_fmt(final_value(run, m), m)} vs {_fmt(final_value(matched, m), m)}" for m in METRICS]
            lines.append(
                f"| {run['name']} ({run['steps']}, {run['train_seconds']:.0f}) | {matched['name']} "
                f"({matched['steps']}, {matched['train_seconds']:.0f}) | {p['time_ratio']:.2f} | "
                + " | ".join(cells)
                + f" | {'yes' if p['as_good'] else '**no**'} |"
            )
    for label, cost, unit in (("training time", training_seconds, "s"), ("sampling time", sampling_seconds, "ms")):
        lines.append(
            f"\n**Against {label}**: for each UNet2DModel, the cUNets at least as good (held-out error and FD, "
            f"within the seed spread) at <= {COST_RATIO}x its {label}:\n"
        )
        scale = 1000 if unit == "ms" else 1
        for row in dominance(runs, spread, cost):
            unet2d, cheapest = row["unet2d"], row["cheapest"]
            head = f"- {unet2d['name']} ({cost(unet2d) * scale:.1f} {unit}): "
            if row["within"]:
                lines.append(head + ", ".join(f"{r['name']} ({cost(r) / cost(unet2d):.2f}x)" for r in row["within"]))
            elif cheapest:
                lines.append(head + f"**none**; the cheapest at least as good is {cheapest['name']} at "
                             f"{cost(cheapest) / cost(unet2d):.2f}x")  # fmt: skip
            else:
                lines.append(head + "**none**: no cUNet is at least as good at any cost")
    return lines
