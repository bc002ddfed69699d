"""The shipped model (`pretrained/cunet-fashion-mnist/`): it loads the ways people load models (our pipeline,
diffusers' loader running the shipped code in a process without the package, a Hub id from an offline cache), the
same seed giving the same images every way; every scheduler the support table allows samples it; `make sample`'s
script draws every class by name; its card is what its results file renders; packaging a checkpoint gives such a
folder."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT
from training_helpers import train
from without_package import run_without_the_package

from diffusers_cunet import ContinuousUNet2DModel
from diffusers_cunet.pipelines import ContinuousUNetPipeline
from diffusers_cunet.pipelines.scheduler_support import scheduler_for, supported_schedulers
from training import release

SHIPPED = release.SHIPPED
pytestmark = pytest.mark.skipif(not (SHIPPED / "model_index.json").is_file(), reason="no shipped model")


def sample(pipe, **kwargs) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    out = pipe(batch_size=2, class_labels=["Trouser", "Bag"], num_inference_steps=4, output_type="np",
               generator=torch.Generator().manual_seed(0), **kwargs)  # fmt: skip
    return out.images


def test_the_folder_is_small_fp16_and_loads_as_fp32():
    size = sum(path.stat().st_size for path in SHIPPED.rglob("*") if path.is_file())
    assert size <= 5e6, f"{size / 1e6:.1f} MB"
    from safetensors import safe_open

    with safe_open(str(SHIPPED / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as weights:
        assert {weights.get_tensor(key).dtype for key in weights.keys()} == {torch.float16}
    pipe = ContinuousUNetPipeline.from_pretrained(SHIPPED)
    assert type(pipe.unet) is ContinuousUNet2DModel and pipe.unet.dtype == torch.float32
    assert pipe.labels[1] == "Trouser" and pipe.unet.config.null_class_label == 10


LOAD_WITHOUT_PACKAGE = """
import json, sys, torch
from diffusers import DiffusionPipeline
for folder in sys.argv[1:]:
    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, class_labels=["Trouser", "Bag"], num_inference_steps=4, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    print(json.dumps(images.tolist()))
"""


def test_the_same_images_every_way_it_loads(tmp_path):
    from conftest import lay_out_hub_cache

    ours = sample(ContinuousUNetPipeline.from_pretrained(SHIPPED))
    cache = tmp_path / "hub"
    lay_out_hub_cache(cache, release.REPO_ID, ContinuousUNetPipeline.from_pretrained(SHIPPED))
    snapshot = next((cache / f"models--{release.REPO_ID.replace('/', '--')}" / "snapshots").iterdir())
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    from_hub = ContinuousUNetPipeline.from_pretrained(release.REPO_ID, cache_dir=cache, local_files_only=True)
    np.testing.assert_allclose(sample(from_hub), ours, rtol=0, atol=1e-6)
    # the folder itself, and (offline, diffusers loads a repository's own pipeline file from its snapshot folder: see
    # the README) the Hub id's snapshot in the cache
    folders = [str(SHIPPED), str(snapshot)]
    for images in run_without_the_package(LOAD_WITHOUT_PACKAGE, *folders, cwd="/", env=env, outputs=2, timeout=300):
        np.testing.assert_allclose(np.array(images), ours, rtol=0, atol=1e-6)


def test_every_allowed_scheduler_samples_it():
    pipe = ContinuousUNetPipeline.from_pretrained(SHIPPED)
    allowed = supported_schedulers(pipe.unet)
    assert allowed, "the support table allows some scheduler"
    edm = pipe.scheduler
    for scheduler_class in allowed:
        pipe.scheduler = scheduler_for(scheduler_class, pipe.unet, edm)
        images = sample(pipe)
        assert np.isfinite(images).all() and images.std() > 0.01, scheduler_class.__name__


def test_make_sample_draws_classes_by_name(tmp_path, capsys):
    sys.path.insert(0, str(ROOT))
    import sample as sample_script

    path = sample_script.main(["--classes", "Trouser", "Bag", "--steps", "3", "--columns", "2", "--output",
                               str(tmp_path / "grid.png")])  # fmt: skip
    assert path.is_file() and str(path) in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"Unknown class name 'Sock'"):
        sample_script.main(["--classes", "Sock", "--output", str(tmp_path / "no.png")])


def test_the_card_recommends_the_measured_settings_where_tools_read_them(tmp_path, offline, monkeypatch):
    """The card's front matter carries the measured recommended scale and steps (the Hub's `inference: parameters:`);
    `sample.py` and the app start from them, for a folder or a cached Hub id; no card, no recommendation."""
    import huggingface_hub
    from conftest import lay_out_hub_cache

    from diffusers_cunet.card_settings import recommended_settings

    results = json.loads(release.RESULTS.read_text())
    measured = {"guidance_scale": results["recommended_guidance_scale"],
                "num_inference_steps": results["recommended_steps"]}  # fmt: skip
    assert recommended_settings(SHIPPED) == measured
    cache = tmp_path / "hub"
    lay_out_hub_cache(cache, release.REPO_ID, ContinuousUNetPipeline.from_pretrained(SHIPPED))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    assert recommended_settings(release.REPO_ID) == {}  # a pipeline's download holds no card
    snapshot = next((cache / f"models--{release.REPO_ID.replace('/', '--')}" / "snapshots").iterdir())
    shutil.copy(SHIPPED / "README.md", snapshot / "README.md")
    assert recommended_settings(release.REPO_ID) == measured  # its card cached beside it
    bare = tmp_path / "bare"
    ContinuousUNetPipeline.from_pretrained(SHIPPED).save_pretrained(bare)
    assert recommended_settings(bare) == {}
    (bare / "README.md").write_text("---\nlicense: mit\n---\n# a card that recommends nothing\n")
    assert recommended_settings(bare) == {}

    sys.path.insert(0, str(ROOT))
    import sample as sample_script

    args = sample_script.parse_args([])
    assert (args.guidance_scale, args.steps) == (measured["guidance_scale"], measured["num_inference_steps"])
    args = sample_script.parse_args(["--pipeline", str(bare), "--guidance_scale", "2.5"])
    assert (args.guidance_scale, args.steps) == (2.5, release.SAMPLING_STEPS)


def test_the_card_is_what_the_results_render(tmp_path):
    results = json.loads(release.RESULTS.read_text())
    copy = tmp_path / "folder"
    shutil.copytree(SHIPPED, copy)
    release.render_card(results, copy)
    assert (copy / "README.md").read_text() == (SHIPPED / "README.md").read_text()
    card = (SHIPPED / "README.md").read_text()
    assert f"{results['scale_1']['fid']:.2f}" in card and "library_name: diffusers" in card
    assert f"step {results['training']['step']:,} of" in card
    assert ("Interim checkpoint" in card) != bool(results["training"].get("settled"))
    assert f"num_inference_steps={results['recommended_steps']}," in card  # its example samples as it recommends
    for point in results["step_sweep"]:  # the recommended scale at fewer steps, each a row
        assert f"| {point['sampling_steps']} | {point['fid']:.2f} | {point['kid_mean']:.4f} |" in card


def test_the_recommended_steps_have_the_lowest_fid_at_the_recommended_scale():
    at_recipe = {"sampling_steps": 20, "fid": 0.85}
    tied = [{"sampling_steps": 10, "fid": 0.7}, {"sampling_steps": 8, "fid": 0.7}]
    assert release.recommended_steps_point([*tied, at_recipe])["sampling_steps"] == 8  # a tie: the fewer steps
    assert release.recommended_steps_point([{"sampling_steps": 8, "fid": 0.9}, at_recipe]) is at_recipe


def test_the_card_says_how_the_run_ended(tmp_path):
    """The published convergence results decide what the card calls a checkpoint: interim before its run settles,
    else the run's end, converged by the criterion or at its step cap."""
    assert not release.convergence_state("cunet-x0.5", 12_000)["settled"]  # passed on the way to 24,000
    state = release.convergence_state("cunet-x0.5", 24_000)
    assert state["settled"] and state["converged"] and state["planned_steps"] == 24_000
    with pytest.raises(SystemExit, match="'cunet-x9' is not a run"):
        release.convergence_state("cunet-x9", 2_000)
    results = json.loads(release.RESULTS.read_text())
    shutil.copytree(SHIPPED, tmp_path / "folder")
    for converged, words in ((True, "converged by the benchmark's criterion"), (False, "without meeting")):
        results["training"].update(state, converged=converged)
        card = release.render_card(results, tmp_path / "folder").read_text()
        assert words in card and "Interim" not in card and f"{state['seed_spread_fid']:.2f}" in card


def test_the_card_sets_the_model_against_the_unet2dmodel_trained_the_same_way(tmp_path):
    """Once the UNet2DModel of the same widths has settled, the card gives the published verdict (the FIDs, which is
    lower, what the cUNet pays for its own final FID) and, where the cUNet loses, says so; before, that it comes."""
    published = json.loads((ROOT / "benchmarks" / "results" / "convergence.json").read_text())
    versus = release.versus_unet2d("cunet-x1")
    pair = next((pair for pair in published["verdicts"]["same_width"] if pair["cunet"] == "cunet-x1"), None)
    assert (versus is None) == (pair is None)
    results = json.loads(release.RESULTS.read_text())
    shutil.copytree(SHIPPED, tmp_path / "folder")
    worse = {"cunet": "cunet-x1", "unet2d": "unet2d-x1", "cunet_fid": 1.64, "unet2d_fid": 0.85, "samples": 2000,
             "seed_spread_fid": 0.55, "outcome": "worse", "params_ratio": 0.43,
             "at_cunet_fid": {"train_time_ratio": 0.76}}  # fmt: skip
    results["versus_unet2d"] = worse
    card = release.render_card(results, tmp_path / "folder").read_text()
    assert "FID 1.64 against 0.85 (2,000 samples each" in card and "this model's FID is **worse**" in card
    assert "the UNet2DModel is the better choice" in card and "0.76x the training time" in card
    assert "Timed\nside by side" not in card  # untimed: no sampling sentence
    results["versus_unet2d"] = {**worse, "sampling_timed": True, "sampling_time_ratio": 0.43}
    card = release.render_card(results, tmp_path / "folder").read_text()
    assert "final FID in 0.43x its sampling time per image" in card
    results["versus_unet2d"] = {**worse, "cunet_fid": 0.8, "outcome": "within the seed spread", "at_cunet_fid": None}
    card = release.render_card(results, tmp_path / "folder").read_text()
    assert "**within the seed spread**." in card and "better choice" not in card and "training time the" not in card
    results["versus_unet2d"] = None
    card = release.render_card(results, tmp_path / "folder").read_text()
    assert "comes when the UNet2DModel's run has settled" in card


def test_packaging_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    train(run, "--max_train_steps", "2", "--checkpointing_steps", "2", "--class_column", "label",
          "--class_dropout_prob", "0.1", "--preconditioning", "edm")  # fmt: skip
    folder = release.package(run / "checkpoint-2", tmp_path / "shipped")
    pipe = ContinuousUNetPipeline.from_pretrained(folder)
    assert pipe.unet.dtype == torch.float32 and pipe.labels[9] == "Ankle boot"
    assert json.loads((folder / "model_index.json").read_text())["unet"][0] == "modeling_cunet"  # the Hub layout
    assert np.isfinite(sample(pipe)).all()


def test_the_shipped_code_files_are_this_versions():
    from diffusers_cunet.pipelines.code_files import code_file_problems

    problems = code_file_problems(SHIPPED)
    assert not problems, f"{problems}: refresh with `python -m diffusers_cunet.pipelines.code_files {SHIPPED}`"
