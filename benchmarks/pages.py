"""The measured numbers of README.md and docs/*.md, rendered from the committed results (`benchmarks/results/*.json`).

A page marks each rendered part:

    <!-- rendered: NAME -->
    ...lines written by RENDERERS[NAME] from the results...
    <!-- /rendered -->

`python -m benchmarks.pages` rewrites those parts (publishing any benchmark does too, with BENCHMARKS.md);
`python -m benchmarks.pages --check` fails when a committed page differs from what its results render (a test runs
it). Text outside the marks is prose and carries no measured number: it names the page or section that holds it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import convergence, cost, fashion, gpu, guidance, step_aware
from .paths import PUBLISHED_RESULTS, ROOT, shown

BLOCK = re.compile(r"(?P<open><!-- rendered: (?P<name>[a-z0-9-]+) -->\n)(?P<body>.*?)(?P<close><!-- /rendered -->)",
                   re.S)  # fmt: skip
RELEASE_FILE = "release.json"  # written by `python -m training.release`


def read(results: Path, name: str) -> dict[str, Any] | None:
    path = results / name
    return json.loads(path.read_text()) if path.is_file() else None


def pages() -> list[Path]:
    """Every page that may hold rendered parts: the README and the docs."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def cost_rows(data: dict[str, Any]) -> list[str]:
    """Parameters, FLOPs and CPU sampling time at CIFAR-10 size against `google/ddpm-cifar10-32`'s architecture."""
    rows = data["sizes"]["cifar10-32"]
    shown_keys = {"params", "gflops_per_call", "ddim50_b16_s", "train_images_per_s"}
    lines = []
    for key, label, fmt in cost.COST_KEYS:
        if key in shown_keys:
            a, b = rows["cunet"][key], rows["unet2d"][key]
            ratio = f"{rows['ratio'][key]:.2f}" + ("x" if key.endswith("per_s") else "")  # throughput: times more
            lines.append(f"| {label}, CIFAR-10 size | {fmt.format(cost.value_of(a))} | {fmt.format(cost.value_of(b))} "
                         f"| **{ratio}** |")  # fmt: skip
    return lines


def early_rows(data: dict[str, Any]) -> list[str]:
    """The Fashion-MNIST x1 EDM pairs (cUNet, UNet2DModel) of each seed after their short training."""
    runs = {run["name"]: run for run in data["runs"]}
    pairs = [(a, b) for a, b in zip(*fashion.SEED_PAIRS) if a in runs and b in runs]
    first = runs[pairs[0][0]]
    measures = {  # label -> (the value of a run, its format, whether the ratio is shown)
        f"FID, seeds 0 / 1 (floor {data['reference_real_vs_real']['fid']:.2f})": (
            lambda run: run["final"]["fid"], "{:.1f}", False),
        f"training seconds for those {first['steps']} steps": (
            lambda run: run["train_seconds_median"], "{:.0f}", True),
        f"sampling ms per image in batches of {data['settings']['sample_batch']}, EDM DPM-Solver++ "
        f"{first['final']['sampling_steps']} steps": (
            lambda run: run["final"]["sampling_s_per_image"] * 1e3, "{:.0f}", True),
    }  # fmt: skip
    lines = []
    for index, (label, (value, fmt, ratio)) in enumerate(measures.items()):
        cells = [" / ".join(fmt.format(value(runs[pair[side]])) for pair in pairs) for side in (0, 1)]
        ratios = " / ".join(f"{value(runs[a]) / value(runs[b]):.2f}x" for a, b in pairs) if ratio else ""
        lead = f"Fashion-MNIST, same widths, EDM, {first['steps']} steps (early training): " if index == 0 else "... "
        lines.append(f"| {lead}{label} | {cells[0]} | {cells[1]} | {f'**{ratios}**' if ratios else ''} |")
    return lines


def guidance_row(data: dict[str, Any]) -> list[str]:
    """Class accuracy by the judge at the largest guidance scale both networks were sampled at (seed 0)."""
    runs = {run["model_type"]: run for run in data["runs"] if run["seed"] == 0}
    plain = [{p["scale"]: p for p in run["points"] if not guidance.point_key(p)[1]} for run in runs.values()]
    scale = max(set.intersection(*(set(points) for points in plain)))  # the largest scale both were sampled at

    def accuracy(run: dict[str, Any]) -> str:
        point = next(p for p in run["points"] if guidance.point_key(p) == (scale, ()))
        return f"{point['class_accuracy']:.1%} (FID {point['fid']:.1f})"

    ceiling = data["judge"]["test_accuracy"]
    label = f"... class accuracy at guidance scale {scale:g}, seed 0 (the judge's own on real images: {ceiling:.1%})"
    return [f"| {label} | {accuracy(runs['cunet'])} | {accuracy(runs['unet2d'])} | |"]


def convergence_row(data: dict[str, Any]) -> list[str]:
    """Each width's pair in the convergence queue (x1, then x0.5): its verdict once both have settled, until then
    each run's latest scored FID."""
    runs = {row["name"]: row for row in data["runs"]}
    verdicts = {pair["width"]: pair for pair in (data.get("verdicts") or {}).get("same_width", [])}

    def latest(name: str) -> str:
        row = runs.get(name)
        if not row or not row["points"]:
            return "not scored yet"
        done = "finished" if row["steps"] >= row["planned_steps"] else f"of {row['planned_steps']:,}"
        return f"{row['points'][-1]['fid']:.2f} (step {row['steps']:,} {done})"

    lines = []
    for width in dict.fromkeys(row["width"] for row in data["runs"]):  # in the queue's order
        if width in verdicts:
            lines += convergence_verdict_rows(verdicts[width])
        else:
            lines.append(f"| Fashion-MNIST at convergence, {width}, FID at the latest scored step ({data['date']}) | "
                         f"{latest(f'cunet-{width}')} | {latest(f'unet2d-{width}')} | |")  # fmt: skip
    return lines


def convergence_verdict_rows(pair: dict[str, Any]) -> list[str]:
    """One width's verdict at convergence (`convergence_verdicts.pair_verdict`): final FID, training time to the
    UNet2DModel's final FID, sampling time per image at that FID."""
    from .convergence_verdicts import hours, times

    spread = pair["seed_spread_fid"]
    spread_text = f"seed spread {spread:.2f}" if spread is not None else "no seed spread yet"
    train, sample = pair["train_seconds_to_unet2d_fid"], pair["sampling_seconds_per_image_at_unet2d_fid"]
    train_ratio, sample_ratio, target = (
        pair["train_time_ratio"],
        pair["sampling_time_ratio"],
        "UNet2DModel's final FID",
    )
    # the first FID both networks reach: the UNet2DModel's final one, within the seed spread of it (the same quality,
    # by noise), else the cUNet's own final FID (a cUNet that levels off above)
    others = ((pair.get("within_spread"), "UNet2DModel's final FID within the seed spread (<= {:.2f})"),
              (pair.get("at_cunet_fid"), "cUNet's own final FID ({:.2f}), the quality both reach"))  # fmt: skip
    for costs, text in others:
        if train["cunet"] is None and costs is not None:
            train, sample = costs["train_seconds"], costs["sampling_seconds_per_image"]
            train_ratio, sample_ratio = costs["train_time_ratio"], costs["sampling_time_ratio"]
            target = text.format(costs["target_fid"])
    return [
        f"| Fashion-MNIST at convergence, {pair['width']}, same objective: final FID ({spread_text}; the cUNet's is "
        f"{pair['outcome']}) | {pair['cunet_fid']:.2f} | {pair['unet2d_fid']:.2f} | |",
        f"| ... training time to the {target} (2 CPU cores) | {hours(train['cunet'])} | "
        f"{hours(train['unet2d'])} | **{times(train_ratio)}** |",
        sampling_row(pair["sampling_timed"], sample, sample_ratio),
    ]


def sampling_row(timed: bool, sample: dict[str, Any], sample_ratio: float | None) -> str:
    """The README row of sampling seconds per image at the verdict's FID (its cells say so while untimed)."""
    from .convergence_verdicts import UNTIMED, per_image, times

    if not timed:
        return (
            "| ... sampling time per image at that FID (timed side by side after the end-of-run measurements) | "
            f"{UNTIMED} | {UNTIMED} | |"
        )
    return (f"| ... sampling time per image at that FID | {per_image(sample['cunet'])} | "
            f"{per_image(sample['unet2d'])} | **{times(sample_ratio)}** |")  # fmt: skip


def results_table(results: Path) -> list[str]:
    """The README's one short results table, from every results file there is."""
    lines = ["| | cUNet | UNet2DModel | ratio |", "|---|---:|---:|---:|"]
    sources = ((cost.RESULTS_FILE, cost_rows), (fashion.RESULTS_FILE, early_rows),
               (guidance.RESULTS_FILE, guidance_row), (convergence.RESULTS_FILE, convergence_row))  # fmt: skip
    for name, rows in sources:
        data = read(results, name)
        if data is not None:
            lines += rows(data)
    return lines


def shipped_model(results: Path) -> list[str]:
    """One line on the shipped model: its training step and its scores, from its measurement."""
    data = read(results, RELEASE_FILE)
    if data is None:
        return ["The shipped model has not been measured yet (`python -m training.release`)."]
    best, floor = data["recommended"], data["floor"]
    fid = data.get("full_protocol") or data["scale_1"]  # FID and accuracy at scale 1 of the same samples
    training = data["training"]
    ending = " (interim)" if not training.get("settled") else " (converged)" if training["converged"] else " (its cap)"
    return [
        f"The shipped model (`{data['folder']}`): the convergence run `{training['run']}` at step "
        f"{training['step']:,}{ending}; FID {fid['fid']:.2f} at guidance scale 1 "
        f"on {fid['samples']:,} samples (floor {floor['fid']:.2f}), class accuracy {fid['class_accuracy']:.1%} at "
        f"scale 1 and {best['class_accuracy']:.1%} (FID {best['fid']:.2f} on {best['samples']:,} samples) at the "
        f"recommended scale {data['recommended_guidance_scale']:g} and {data['recommended_steps']} sampler steps; "
        f"{data['cost']['params_ratio']:.2f}x the parameters and {data['cost']['gflops_ratio']:.2f}x the FLOPs of "
        f"the UNet2DModel trained the same way (its card has every score)."
    ]


def from_file(name: str, lines: Callable[[dict[str, Any]], list[str]]) -> Callable[[Path], list[str]]:
    """A renderer of one results file (a line saying it is missing where it is)."""

    def rendered(results: Path) -> list[str]:
        data = read(results, name)
        return lines(data) if data is not None else [f"({name} has not been published yet.)"]

    return rendered


RENDERERS: dict[str, Callable[[Path], list[str]]] = {
    "results": results_table,
    "shipped-model": shipped_model,
    "guidance-scales": from_file(guidance.RESULTS_FILE, guidance.scales_table),
    "step-aware-settings": from_file(step_aware.RESULTS_FILE, step_aware.settings_table),
    "gpu-summary": from_file(gpu.RESULTS_FILE, gpu.summary_table),
}


def render(text: str, results: Path) -> str:
    """`text` with every rendered part written again from `results`; an unknown part's name is an error."""

    def again(match: re.Match) -> str:
        name = match["name"]
        if name not in RENDERERS:
            raise ValueError(f"unknown rendered part {name!r}; known: {sorted(RENDERERS)}")
        return match["open"] + "\n".join(RENDERERS[name](results)) + "\n" + match["close"]

    return BLOCK.sub(again, text)


def stale_pages(results: Path = PUBLISHED_RESULTS) -> list[Path]:
    """The pages whose rendered parts differ from what `results` render."""
    return [page for page in pages() if render(page.read_text(), results) != page.read_text()]


def write_pages(results: Path = PUBLISHED_RESULTS) -> list[Path]:
    """Rewrite the rendered parts of every page from `results`; the pages that changed."""
    changed = stale_pages(results)
    for page in changed:
        page.write_text(render(page.read_text(), results))
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only say which pages differ (exit status 1 if any)")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_pages()
        for page in stale:
            print(f"{shown(page)} differs from what {shown(PUBLISHED_RESULTS)} render: python -m benchmarks.pages")
        return 1 if stale else 0
    for page in write_pages():
        print(f"rewrote {shown(page)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
