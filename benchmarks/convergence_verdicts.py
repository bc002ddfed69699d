"""The convergence queue's verdicts (issue 36, item 5): what the settled runs say (finished and judged converged by
the seed spread, or at their step cap: `convergence.settled`; a finished run the queue may still extend gives none),
computed from the results file's rows (`convergence.collect`), so the report section and the README render the same
numbers.

- **Same width, same objective**: the cUNet's final FID against the UNet2DModel's (within the seed spread, better or
  worse), the training time each needs to first reach the UNet2DModel's final FID, and the sampling seconds per image
  each needs for that FID (over the settled runs' sampler-step sweep, timed side by side).
- **Across widths**: for every settled UNet2DModel, the settled cUNets at least as good (final FID no worse), with
  their parameters, training time and sampling time beside it.
- **EDM-FDM** (the x0.5 cUNet at each momentum multiplier) against the same cUNet's plain EDM run.
"""

from __future__ import annotations

from typing import Any

RECIPE_OBJECTIVE = "edm"
UNTIMED = "not timed yet"  # every verdict cell and sentence on a sampling time that has not been measured
NOT_TIMED = f"{UNTIMED} (settled runs are timed side by side in one process after their end-of-run measurements)"
FDM_STEP_TARGET = 0.6  # issue 36: EDM-FDM reaches plain EDM's final FID in at most this share of EDM's steps


def first_crossing(xs: list[float], fids: list[float], target: float) -> tuple[float, bool] | None:
    """The smallest x at which FID first reaches `target`, the points taken in order of x: linear between the last
    point above the target and the first at or below it; `(x, True)` when the first point already reaches it (the
    crossing lies at or before it: an upper bound); None when no point does."""
    pairs = sorted(zip(xs, fids))
    for index, (x, fid) in enumerate(pairs):
        if fid <= target:
            if index == 0:
                return x, True
            x0, fid0 = pairs[index - 1]
            return x0 + (x - x0) * (fid0 - target) / (fid0 - fid), False
    return None


def training_seconds(point: dict[str, Any]) -> float:
    """A point's training seconds: the median step times the steps where known (robust to a shared machine)."""
    return point.get("train_seconds_median") or point["train_seconds"]


def final_fid(row: dict[str, Any]) -> float:
    return row["points"][-1]["fid"]


def seconds_to_fid(row: dict[str, Any], target: float) -> tuple[float, bool] | None:
    """Training seconds until the run's scored FID first reaches `target` (see `first_crossing`)."""
    points = row["points"]
    return first_crossing([training_seconds(p) for p in points], [p["fid"] for p in points], target)


def timed(*rows: dict[str, Any]) -> bool:
    """Whether the side-by-side sampling times of every one of `rows` are in (`convergence.time_finished_runs`)."""
    return all(row.get("seconds_per_image") for row in rows)


def sweep_fids(row: dict[str, Any], recipe_steps: int) -> dict[int, float]:
    """FID by sampler step count of a settled run: its sweep and the recipe's own steps (its last point)."""
    fids = {point["sampling_steps"]: point["fid"] for point in row.get("sweep", [])}
    return {**fids, recipe_steps: final_fid(row)}


def timed_sweep(row: dict[str, Any], recipe_steps: int) -> list[tuple[int, float, float]]:
    """(sampler steps, seconds per image, FID) at each step count the settled run was scored and timed at: the
    sweep and the recipe's own steps (its last point), fastest first."""
    times = row.get("seconds_per_image") or {}
    fids = sweep_fids(row, recipe_steps)
    return sorted(((steps, times[str(steps)], fid) for steps, fid in fids.items() if str(steps) in times),
                  key=lambda point: point[1])  # fmt: skip


def sampling_curve(row: dict[str, Any], recipe_steps: int) -> list[tuple[float, float]]:
    """(seconds per image, FID) along `timed_sweep`."""
    return [(seconds, fid) for _, seconds, fid in timed_sweep(row, recipe_steps)]


def sampling_seconds_to_fid(row: dict[str, Any], target: float, recipe_steps: int) -> tuple[float, bool] | None:
    """Sampling seconds per image at which the run first reaches `target` FID over its sampler-step settings."""
    curve = sampling_curve(row, recipe_steps)
    return first_crossing([s for s, _ in curve], [f for _, f in curve], target) if curve else None


def outcome(cunet_fid: float, unet2d_fid: float, spread: float | None) -> str:
    """`better`, `within the seed spread`, `worse` (or, with no spread measured yet, `lower` / `higher`)."""
    if spread is not None and abs(cunet_fid - unet2d_fid) <= spread:
        return "within the seed spread"
    if spread is None:
        return "lower" if cunet_fid < unet2d_fid else "higher"
    return "better" if cunet_fid < unet2d_fid else "worse"


def ratio(
    numerator: tuple[float, bool] | float | None, denominator: tuple[float, bool] | float | None
) -> float | None:
    """numerator / denominator, each a value or a `first_crossing` answer (None where either is missing)."""
    top = numerator[0] if isinstance(numerator, tuple) else numerator
    bottom = denominator[0] if isinstance(denominator, tuple) else denominator
    return top / bottom if top and bottom else None


def recipe_seconds_per_image(row: dict[str, Any], recipe_steps: int) -> float | None:
    return (row.get("seconds_per_image") or {}).get(str(recipe_steps))


def costs_to_fid(cunet: dict[str, Any], unet2d: dict[str, Any], target: float, recipe_steps: int) -> dict:
    """The training seconds and the sampling seconds per image each run needs to first reach FID `target`, and
    the cUNet's share of each."""
    train = {"cunet": seconds_to_fid(cunet, target), "unet2d": seconds_to_fid(unet2d, target)}
    sample = {name: sampling_seconds_to_fid(row, target, recipe_steps)
              for name, row in (("cunet", cunet), ("unet2d", unet2d))}  # fmt: skip
    return {"target_fid": target, "train_seconds": train, "train_time_ratio": ratio(train["cunet"], train["unet2d"]),
            "sampling_timed": timed(cunet, unet2d), "sampling_seconds_per_image": sample,
            "sampling_time_ratio": ratio(sample["cunet"], sample["unet2d"])}  # fmt: skip


def pair_verdict(cunet: dict[str, Any], unet2d: dict[str, Any], spread: float | None, recipe_steps: int) -> dict:
    """The same-width comparison of two settled runs of one objective and seed: the costs to the UNet2DModel's
    final FID, and (with a seed spread) to within the spread of it, where FIDs that differ by no more are one
    quality (a cUNet whose final FID is within the spread but above it never reaches the strict target)."""
    target = final_fid(unet2d)
    strict = costs_to_fid(cunet, unet2d, target, recipe_steps)
    return {
        "width": cunet["width"], "cunet": cunet["name"], "unet2d": unet2d["name"],
        "cunet_fid": final_fid(cunet), "unet2d_fid": target, "seed_spread_fid": spread,
        "steps": {"cunet": cunet["steps"], "unet2d": unet2d["steps"]},  # each to its own convergence
        "outcome": outcome(final_fid(cunet), target, spread),
        "train_seconds_to_unet2d_fid": strict["train_seconds"], "train_time_ratio": strict["train_time_ratio"],
        "sampling_timed": strict["sampling_timed"],
        "sampling_seconds_per_image_at_unet2d_fid": strict["sampling_seconds_per_image"],
        "sampling_time_ratio": strict["sampling_time_ratio"],
        "within_spread": costs_to_fid(cunet, unet2d, target + spread, recipe_steps) if spread is not None else None,
        # a cUNet that levels off above: what each pays for the quality both reach, the cUNet's own final FID
        "at_cunet_fid": costs_to_fid(cunet, unet2d, final_fid(cunet), recipe_steps)
        if final_fid(cunet) > target else None,
        "params_ratio": ratio(cunet.get("params"), unet2d.get("params")),
    }  # fmt: skip


def as_good_as(unet2d: dict[str, Any], cunets: list[dict[str, Any]], recipe_steps: int) -> dict[str, Any]:
    """The cUNets whose final FID is no worse than the settled UNet2DModel's, each with its costs relative to it
    (training time to that FID; sampling time per image at the recipe's steps)."""
    target = final_fid(unet2d)
    as_good = [{
        "run": row["name"], "fid": final_fid(row), "params_ratio": ratio(row.get("params"), unet2d.get("params")),
        "train_time_ratio": ratio(seconds_to_fid(row, target), seconds_to_fid(unet2d, target)),
        "sampling_timed": timed(row, unet2d),
        "sampling_time_ratio": ratio(recipe_seconds_per_image(row, recipe_steps),
                                     recipe_seconds_per_image(unet2d, recipe_steps)),
    } for row in cunets if final_fid(row) <= target]  # fmt: skip
    return {"unet2d": unet2d["name"], "fid": target, "cunets_at_least_as_good": as_good}


def recipe_runs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The settled seed-0 runs of the recipe's objective."""
    return [row for row in rows if row["settled"] and row["seed"] == 0 and row.get("objective") == RECIPE_OBJECTIVE]


def verdicts(rows: list[dict[str, Any]], spread: float | None, recipe_steps: int) -> dict[str, Any]:
    """Every verdict the settled runs allow (empty lists before any)."""
    recipe = recipe_runs(rows)
    cunets = {row["width"]: row for row in recipe if row["network"] == "cunet"}
    unet2ds = {row["width"]: row for row in recipe if row["network"] == "unet2d"}
    pairs = [pair_verdict(cunets[width], unet2d, spread, recipe_steps)
             for width, unet2d in unet2ds.items() if width in cunets]  # fmt: skip
    across = [as_good_as(unet2d, list(cunets.values()), recipe_steps) for unet2d in unet2ds.values() if cunets]
    fdm = [
        fdm_verdict(row, cunets[row["width"]], spread)
        for row in rows
        if row["settled"] and row.get("objective", "").startswith("edm-fdm") and row["width"] in cunets
    ]
    return {"same_width": pairs, "across_widths": across, "fdm": fdm}


def steps_to_fid(row: dict[str, Any], target: float) -> tuple[float, bool] | None:
    """Training steps until the run's scored FID first reaches `target` (see `first_crossing`)."""
    return first_crossing([p["step"] for p in row["points"]], [p["fid"] for p in row["points"]], target)


def fdm_verdict(fdm: dict[str, Any], plain: dict[str, Any], spread: float | None) -> dict[str, Any]:
    """An EDM-FDM run against the same cUNet's plain EDM run: final FIDs, and the steps each needs to first reach
    plain EDM's final FID (the target: FDM in at most `FDM_STEP_TARGET` of EDM's)."""
    target = final_fid(plain)
    fdm_steps, edm_steps = steps_to_fid(fdm, target), steps_to_fid(plain, target)
    step_ratio = ratio(fdm_steps, edm_steps)
    return {
        "run": fdm["name"], "objective": fdm["objective"], "fid": final_fid(fdm), "edm_run": plain["name"],
        "edm_fid": target, "outcome": outcome(final_fid(fdm), target, spread),
        "steps_to_edm_fid": {"fdm": fdm_steps, "edm": edm_steps}, "step_ratio": step_ratio,
        "meets_target": step_ratio is not None and step_ratio <= FDM_STEP_TARGET,
    }  # fmt: skip


def hours(value: tuple[float, bool] | None) -> str:
    if value is None:
        return "never (within its steps)"
    return ("<= " if value[1] else "") + f"{value[0] / 3600:.2f} h"


def per_image(value: tuple[float, bool] | None) -> str:
    if value is None:
        return "not reached at any sampler setting"
    return ("<= " if value[1] else "") + f"{value[0] * 1000:.1f} ms"


def steps_text(value: tuple[float, bool] | None) -> str:
    if value is None:
        return "never (within its steps)"
    return ("<= " if value[1] else "") + f"{value[0]:,.0f}"


def times(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "-"


def costs_text(target: str, costs: dict[str, Any] | None) -> str:
    """A sentence on the costs to one more target FID (`costs_to_fid`; nothing where there is none)."""
    if costs is None:
        return ""
    train = costs["train_seconds"]
    sample = (sampling_text(True, costs["sampling_seconds_per_image"], costs["sampling_time_ratio"])
              if costs["sampling_timed"] else UNTIMED)  # fmt: skip
    return (f" {target} (FID <= {costs['target_fid']:.2f}): training cUNet "
            f"{hours(train['cunet'])}, UNet2DModel {hours(train['unet2d'])} ({times(costs['train_time_ratio'])}); "
            f"sampling {sample}.")  # fmt: skip


def sampling_text(timed_in: bool, sample: dict[str, Any], sample_ratio: float | None) -> str:
    """Each network's sampling seconds per image to a target FID and the cUNet's share (`costs_to_fid`), or that
    the side-by-side times are not in yet."""
    if not timed_in:
        return NOT_TIMED
    return f"cUNet {per_image(sample['cunet'])}, UNet2DModel {per_image(sample['unet2d'])} ({times(sample_ratio)})"


def verdict_lines(found: dict[str, Any]) -> list[str]:
    """The verdicts as report lines (a sentence saying what is missing where no pair has finished)."""
    lines = ["\n### Verdicts at convergence\n"]
    if not any(found.values()):
        lines.append(
            "None yet: a verdict needs both networks of a width settled (finished and judged converged by the seed "
            "spread, or at their step cap; the seed spread needs a second seed finished). The 500-step verdicts "
            "elsewhere in this file are early training."
        )
        return lines
    for pair in found["same_width"]:
        spread = pair["seed_spread_fid"]
        spread_text = f"seed spread {spread:.2f}" if spread is not None else "no seed spread measured yet"
        train = pair["train_seconds_to_unet2d_fid"]
        sample = sampling_text(pair["sampling_timed"], pair["sampling_seconds_per_image_at_unet2d_fid"],
                               pair["sampling_time_ratio"])  # fmt: skip
        steps = pair["steps"]
        trained = (f"both {steps['cunet']:,} steps" if steps["cunet"] == steps["unet2d"]
                   else f"cUNet {steps['cunet']:,} steps, UNet2DModel {steps['unet2d']:,}")  # fmt: skip
        lines.append(
            f"- **{pair['width']}** (same objective; {trained}): the cUNet's final FID **{pair['cunet_fid']:.2f}** "
            f"against the UNet2DModel's **{pair['unet2d_fid']:.2f}** ({spread_text}): **{pair['outcome']}**. "
            f"Training time to the UNet2DModel's final FID: cUNet {hours(train['cunet'])}, UNet2DModel "
            f"{hours(train['unet2d'])} ({times(pair['train_time_ratio'])}). Sampling time per image at that FID: "
            f"{sample}; parameters {times(pair['params_ratio'])}."
            + costs_text("To within the seed spread of it", pair.get("within_spread"))
            + costs_text("To the cUNet's own final FID, the quality both reach", pair.get("at_cunet_fid"))
        )  # fmt: skip
    for entry in found["across_widths"]:
        good = ", ".join(f"`{c['run']}` (FID {c['fid']:.2f}; parameters {times(c['params_ratio'])}, training time "
                         f"{times(c['train_time_ratio'])}, sampling time "
                         f"{times(c['sampling_time_ratio']) if c['sampling_timed'] else UNTIMED})"
                         for c in entry["cunets_at_least_as_good"]) or "none: every cUNet's FID is higher"  # fmt: skip
        lines.append(f"- `{entry['unet2d']}` (FID {entry['fid']:.2f}): cUNets at least as good: {good}.")
    for entry in found["fdm"]:
        steps = entry["steps_to_edm_fid"]
        reached = (f"it reaches that FID at step {steps_text(steps['fdm'])} against EDM's {steps_text(steps['edm'])} "
                   f"({times(entry['step_ratio'])}; target <= {FDM_STEP_TARGET}x: "
                   f"{'met' if entry['meets_target'] else 'not met'})")  # fmt: skip
        lines.append(f"- `{entry['run']}` ({entry['objective']}): FID {entry['fid']:.2f} against the plain EDM run "
                     f"`{entry['edm_run']}`'s {entry['edm_fid']:.2f}: {entry['outcome']}; {reached}.")  # fmt: skip
    return lines
