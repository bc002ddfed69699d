"""The examples of the README and docs/*.md run as written: every Python block in a fresh interpreter (the Hub id it
names served from an offline cache, the output folders it names made by short training runs, the shipped model at
its path), every training command parsed by the training script's own parser; and every measured number they show
is what the committed results render (`benchmarks.pages`)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest
import torch
from conftest import lay_out_hub_cache
from diffusers import DDIMScheduler, DDPMPipeline
from training_helpers import ROOT, load_train_module, train

from diffusers_cunet.presets import from_preset
from training.options import parse_args

PAGES = {
    page.relative_to(ROOT).as_posix(): page.read_text() for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
}
PYTHON_BLOCKS = [(name, m.group(1)) for name, text in sorted(PAGES.items())
                 for m in re.finditer(r"```python\n(.*?)```", text, re.S)]  # fmt: skip
BASH_BLOCKS = [m.group(1) for text in PAGES.values() for m in re.finditer(r"```bash\n(.*?)```", text, re.S)]
NEEDS_CUDA = ".cuda()"


def _commands(block: str) -> list[list[str]]:
    """The shell commands of a bash block (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n\s*", " ", block)
    return [shlex.split(line, comments=True) for line in text.splitlines() if line.split("#")[0].strip()]


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory):
    """A working folder with the outputs the examples load, and a Hub cache holding `org/cunet-cifar10`."""
    folder = tmp_path_factory.mktemp("user")
    module = load_train_module()
    # as `make demo` trains it (EDM), and a DDPM-style run
    train(folder / "outputs" / "digits-demo", "--max_train_steps", "1", "--resolution", "16", "--preconditioning",
          "edm", module=module)  # fmt: skip
    train(folder / "outputs" / "digits-ddpm", "--max_train_steps", "1", "--resolution", "16", module=module)
    train(folder / "outputs" / "digits-fdm", "--max_train_steps", "1", "--preconditioning", "edm-fdm", module=module)
    train(folder / "outputs" / "digits-guided", "--max_train_steps", "1", "--preconditioning", "edm", "--class_column",
          "label", "--class_dropout_prob", "0.1", module=module)  # fmt: skip
    torch.manual_seed(0)
    hub = DDPMPipeline(unet=from_preset("cifar10-32", block_out_channels=(32, 64), attention_levels=(False, True)),
                       scheduler=DDIMScheduler())  # fmt: skip
    lay_out_hub_cache(folder / "hf" / "hub", "org/cunet-cifar10", hub)
    (folder / "pretrained").symlink_to(ROOT / "pretrained")  # the shipped model, where the examples name it
    return folder


def test_the_pages_have_examples():
    assert len(PYTHON_BLOCKS) >= 10 and any('from_pretrained("org/cunet-cifar10")' in b for _, b in PYTHON_BLOCKS)
    assert sum(name == "README.md" for name, _ in PYTHON_BLOCKS) >= 3  # load, swap schedulers: the first things


def test_the_quick_start_samples_the_shipped_model_as_its_card_recommends():
    """The README's first example uses the shipped model's measured recommended guidance scale and sampler steps
    (`benchmarks/results/release.json`): a new release with another recommended scale changes it."""
    import json

    release = json.loads((ROOT / "benchmarks" / "results" / "release.json").read_text())
    first = next(code for page, code in PYTHON_BLOCKS if page == "README.md" and "cunet-fashion-mnist" in code)
    assert float(re.search(r"guidance_scale=([\d.]+)", first).group(1)) == release["recommended_guidance_scale"]
    assert int(re.search(r"num_inference_steps=(\d+)", first).group(1)) == release["recommended_steps"]


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)), ids=lambda i: f"{PYTHON_BLOCKS[i][0]}-{i}")
def test_python_example_runs_as_written(index, user_folder):
    page, code = PYTHON_BLOCKS[index]
    if NEEDS_CUDA in code and not torch.cuda.is_available():
        pytest.skip("a GPU example (tests/test_gpu.py covers its parts where a GPU is present)")
    hf = user_folder / "hf"
    env = {**os.environ, "HF_HOME": str(hf), "HF_HUB_CACHE": str(hf / "hub"), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", code], cwd=user_folder, env=env, capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    assert run.returncode == 0, f"{page}'s example failed:\n{code}\n{run.stderr[-3000:]}"


def test_training_commands_parse():
    """Every `training/train.py` command line of the pages is accepted by the script's parser as written."""
    commands = [c for block in BASH_BLOCKS for c in _commands(block) if "training/train.py" in c]
    assert len(commands) >= 5
    cwd = os.getcwd()
    os.chdir(ROOT)  # the configs are named relative to the repository root
    try:
        for command in commands:
            parse_args(command[command.index("training/train.py") + 1 :])
    finally:
        os.chdir(cwd)


# ------------------------------------------------------------------------------------------- rendered numbers
def test_every_page_shows_what_its_results_render():
    from benchmarks import pages

    assert pages.stale_pages() == [], "run: python -m benchmarks.pages"
    rendered = [name for name, text in PAGES.items() if pages.BLOCK.search(text)]
    assert {"README.md", "docs/guidance.md", "docs/step-aware.md", "docs/gpu.md"} <= set(rendered)


def test_a_changed_result_changes_the_page(tmp_path):
    """The rendered parts come from the results files: another measurement renders another page, an unknown part
    is an error, and a results file that is missing says so instead of failing."""
    import json
    import shutil

    from benchmarks import cost, pages

    results = tmp_path / "results"
    shutil.copytree(ROOT / "benchmarks" / "results", results)
    data = json.loads((results / cost.RESULTS_FILE).read_text())
    data["sizes"]["cifar10-32"]["cunet"]["params"] = 1_234_567
    (results / cost.RESULTS_FILE).write_text(json.dumps(data))
    readme = PAGES["README.md"]
    again = pages.render(readme, results)
    assert "| 1,234,567 |" in again and "| 1,234,567 |" not in readme
    assert again.split("<!-- rendered: results -->")[0] == readme.split("<!-- rendered: results -->")[0]  # prose kept
    with pytest.raises(ValueError, match="unknown rendered part 'nope'"):
        pages.render("<!-- rendered: nope -->\nx\n<!-- /rendered -->", results)
    (results / "gpu.json").unlink()
    assert "gpu.json has not been published yet" in pages.render(PAGES["docs/gpu.md"], results)


def test_the_convergence_verdict_replaces_the_in_progress_row_once_the_pair_is_finished():
    """Until the x1 pair has finished the README shows each run's latest scored FID; then the verdict: final FID
    against the seed spread, training time to the UNet2DModel's final FID and sampling time at that FID, with ratios
    (the same numbers as BENCHMARKS.md's section, from the same verdict)."""
    import json

    from benchmarks import convergence, pages
    from benchmarks.convergence_verdicts import pair_verdict

    data = json.loads((ROOT / "benchmarks" / "results" / convergence.RESULTS_FILE).read_text())
    data["verdicts"] = {"same_width": [], "across_widths": [], "fdm": []}  # in progress, whatever is published now
    in_progress = pages.convergence_row(data)
    assert [row.split(",")[1].strip() for row in in_progress] == ["x1", "x0.5"]  # a row for each width's pair
    assert all("at the latest scored step" in row for row in in_progress)
    runs = {row["name"]: row for row in data["runs"]}
    finished = {"cunet-x1": ([(2000, 9.77, 1400), (4000, 4.3, 2500)], 0.01),
                "unet2d-x1": ([(2000, 8.9, 4000), (4000, 3.4, 6200)], 0.03)}  # fmt: skip
    for name, (points, seconds) in finished.items():
        runs[name].update(steps=runs[name]["planned_steps"], objective="edm", seconds_per_image={"20": seconds},
                          points=[{"step": step, "fid": fid, "train_seconds": t, "train_seconds_median": t}
                                  for step, fid, t in points])  # fmt: skip
    data["verdicts"] = {"same_width": [pair_verdict(runs["cunet-x1"], runs["unet2d-x1"], 1.0, 20)]}
    rows = "\n".join(pages.convergence_row(data))
    assert "seed spread 1.00; the cUNet's is within the seed spread) | 4.30 | 3.40 |" in rows
    assert "at convergence, x1, same objective" in rows and "at convergence, x0.5, FID at the latest" in rows
    # 4.3 never reaches 3.4, but is within the spread of it: the times are to within the spread (FID <= 4.40)
    assert "training time to the UNet2DModel's final FID within the seed spread (<= 4.40)" in rows
    worse = pair_verdict(runs["cunet-x1"], runs["unet2d-x1"], 0.5, 20)  # 4.3 against 3.4, beyond the spread
    worse_rows = "\n".join(pages.convergence_row({**data, "verdicts": {"same_width": [worse]}}))
    # neither 3.4 nor 3.9 is reached by the cUNet: the row gives the costs to the FID both reach, its own 4.3
    assert "the cUNet's is worse) | 4.30 | 3.40 |" in worse_rows
    assert "training time to the cUNet's own final FID (4.30), the quality both reach" in worse_rows
    assert "| 0.69 h | 1.62 h | **0.43x** |" in worse_rows  # 2,500 s; 4,000 + 2,200 x 4.6 / 5.5 = 5,840 s
    assert "sampling time per image at that FID" in rows and "never" not in rows
    assert "not timed yet" not in rows
    for name in finished:  # before the side-by-side timing: the row says so instead of "not reached"
        runs[name]["seconds_per_image"] = None
    untimed = pair_verdict(runs["cunet-x1"], runs["unet2d-x1"], 1.0, 20)
    rows = "\n".join(pages.convergence_row({**data, "verdicts": {"same_width": [untimed]}}))
    assert "| not timed yet | not timed yet | |" in rows and "not reached" not in rows
