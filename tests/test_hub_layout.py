"""Saved pipeline folders load by Hub id with or without the package: the `model_index.json` entries name code
files shipped in the folder (`unet/modeling_cunet.py`, `pipeline_cunet.py`), generated from the package."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import lay_out_hub_cache, make_tiny
from diffusers import DDIMScheduler, DDPMPipeline, DiffusionPipeline
from without_package import run_without_the_package

from diffusers_cunet import ContinuousUNet2DModel
from diffusers_cunet.hub_code import PIPELINE_CODE_FILE
from diffusers_cunet.pipelines import ContinuousUNetDenoisePipeline, ContinuousUNetPipeline
from diffusers_cunet.pipelines.code_files import code_file_problems, main
from diffusers_cunet.remote_code import model_code, pipeline_code
from diffusers_cunet.step_schedule import SolverStepSchedule

# huggingface_hub, numpy and PIL come with diffusers (its own requirements)
MODEL_IMPORTS = {"torch", "torchdiffeq", "diffusers", "huggingface_hub", *sys.stdlib_module_names}
PIPELINE_IMPORTS = {*MODEL_IMPORTS, "numpy", "PIL"}
# a bin that skips a block: the shipped pipeline file applies skips as the package does
SCHEDULE = SolverStepSchedule(
    settings=[{"method": "euler", "steps": 1, "skip": ["mid_block"]}, {"method": "rk4", "steps": 1}]
)


def top_level_imports(code: str) -> set[str]:
    """Every module a file imports, at any depth (diffusers checks them all before running remote code)."""
    tree = ast.parse(code)
    names = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    names |= {
        node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 0
    }
    return names


@pytest.mark.parametrize(
    "generate, allowed", [(model_code, MODEL_IMPORTS), (pipeline_code, PIPELINE_IMPORTS)], ids=["model", "pipeline"]
)
def test_generated_files_import_only_what_diffusers_users_have(generate, allowed):
    code = generate()
    assert top_level_imports(code) <= allowed, top_level_imports(code) - allowed
    tree = ast.parse(code)
    assert not any(isinstance(node, ast.ImportFrom) and node.level for node in ast.walk(tree))
    defined = [target.id for node in tree.body for target in getattr(node, "targets", [])
               if isinstance(target, ast.Name)]  # fmt: skip
    defined += [node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))]
    repeated = {name for name in defined if defined.count(name) > 1}
    assert not repeated, f"modules concatenated into one file define {repeated} twice"


def conditional_pipeline() -> ContinuousUNetPipeline:
    pipe = ContinuousUNetPipeline(unet=make_tiny(num_class_embeds=3, solver_steps=2), scheduler=DDIMScheduler())
    pipe.solver_schedule = SCHEDULE
    return pipe


def sample(pipe, **kwargs) -> tuple[np.ndarray, int | None]:
    pipe.set_progress_bar_config(disable=True)
    out = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=4, output_type="np",
               **kwargs)  # fmt: skip
    return out.images, getattr(out, "ode_evaluations", None)


def test_saved_folders_name_their_code_files(tmp_path):
    DDPMPipeline(unet=make_tiny(), scheduler=DDIMScheduler()).save_pretrained(tmp_path / "ddpm")
    conditional_pipeline().save_pretrained(tmp_path / "ours")
    for name, entry in (("ddpm", "diffusers_cunet"), ("ours", "modeling_cunet")):  # library and Hub layouts
        index = json.loads((tmp_path / name / "model_index.json").read_text())
        assert index["unet"] == [entry, "ContinuousUNet2DModel"]
        assert (tmp_path / name / "unet" / "modeling_cunet.py").read_text() == model_code()
        assert code_file_problems(tmp_path / name) == []
    index = json.loads((tmp_path / "ours" / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_cunet", "ContinuousUNetPipeline"]
    assert (tmp_path / "ours" / PIPELINE_CODE_FILE).read_text() == pipeline_code()
    assert not (tmp_path / "ddpm" / PIPELINE_CODE_FILE).exists()


def test_the_installed_package_loads_by_hub_id_without_running_shipped_code(tmp_path):
    """The cache holds the repository's file listing, as after a real download: diffusers' loader then checks
    every entry of model_index.json against the files (an installed-module entry used to fail there)."""
    pipe = conditional_pipeline()
    cache = tmp_path / "hub"
    lay_out_hub_cache(cache, "org/cunet-steps", pipe)
    hub = {"cache_dir": cache, "local_files_only": True}
    loaded = ContinuousUNetPipeline.from_pretrained("org/cunet-steps", **hub)
    assert type(loaded.unet) is ContinuousUNet2DModel and isinstance(loaded.solver_schedule, SolverStepSchedule)
    labels = {"class_labels": [0, 2]}
    np.testing.assert_array_equal(sample(loaded, **labels)[0], sample(pipe, **labels)[0])
    denoiser = ContinuousUNetDenoisePipeline.from_pretrained("org/cunet-steps", **hub)
    assert type(denoiser.unet) is ContinuousUNet2DModel
    # diffusers' loader, running the shipped pipeline_cunet.py and unet/modeling_cunet.py (from the snapshot folder:
    # offline, diffusers cannot load a repository's own pipeline file by Hub id, it asks the Hub for the commit)
    snapshot = next((cache / "models--org--cunet-steps" / "snapshots").iterdir())
    remote = DiffusionPipeline.from_pretrained(snapshot, trust_remote_code=True)
    assert type(remote).__module__.endswith("pipeline_cunet") and remote.solver_schedule is not None
    images, evaluations = sample(remote, **labels)
    expected_images, expected_evaluations = sample(pipe, **labels)
    np.testing.assert_allclose(images, expected_images, rtol=0, atol=1e-6)
    assert evaluations == expected_evaluations
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        DiffusionPipeline.from_pretrained(snapshot)  # diffusers' refusal, before any of our code runs


NO_INSTALL = """
import json, sys, torch
from diffusers import AutoModel, DDPMPipeline, DiffusionPipeline, DDIMScheduler, DPMSolverMultistepScheduler
def images(pipe, **kwargs):
    pipe.set_progress_bar_config(disable=True)
    out = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=4, output_type="np",
               **kwargs)
    return out.images.tolist(), getattr(out, "ode_evaluations", None)
result = {}
try:
    DDPMPipeline.from_pretrained("org/cunet-cifar10")
except ValueError as error:
    result["refusal"] = str(error)
pipe = DDPMPipeline.from_pretrained("org/cunet-cifar10", trust_remote_code=True)
pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
result["ddim"] = images(pipe)[0]
pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type="dpmsolver++")
result["dpm++"] = images(pipe)[0]
result["generic"] = images(DiffusionPipeline.from_pretrained("org/cunet-cifar10", trust_remote_code=True))[0]
snapshot = sys.argv[1]
unet = AutoModel.from_pretrained(snapshot + "/unet", trust_remote_code=True)
result["automodel"] = type(unet).__name__
# offline, diffusers loads a repository's own pipeline file from its snapshot folder (by Hub id it asks the Hub)
from huggingface_hub import snapshot_download
steps = DiffusionPipeline.from_pretrained(snapshot_download("org/cunet-steps"), trust_remote_code=True)
result["pipeline_class"] = type(steps).__name__
result["steps"] = images(steps, class_labels=[0, 2])
steps.save_pretrained(sys.argv[2])  # re-saved from the remote classes
print(json.dumps(result))
"""

RELOAD = """
import json, sys, torch
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained(sys.argv[1], trust_remote_code=True)
pipe.set_progress_bar_config(disable=True)
out = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=4, output_type="np",
           class_labels=[0, 2])
cached = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=4, output_type="np",
              class_labels=[0, 2], cache_interval=2, cache_levels=1)
print(json.dumps([out.images.tolist(), out.ode_evaluations, cached.images.tolist(), cached.ode_evaluations]))
"""


def run_in_the_hub_cache(tmp_path, script: str, *args: str) -> Any:
    """What `script` prints last, run without the package, offline, on the Hub cache under `tmp_path / "hf"`."""
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": None}
    return run_without_the_package(script, *args, cwd=tmp_path, env=env)[0]


def test_the_no_install_process_cannot_import_the_package(tmp_path):
    script = """
    import json
    try:
        import diffusers_cunet.pipelines
        print(json.dumps("imported"))
    except ImportError:
        print(json.dumps("refused"))
    """
    assert run_without_the_package(script, cwd=tmp_path, env={}) == ["refused"]


def test_no_install_loading_by_hub_id_resave_and_reload(tmp_path):
    from diffusers import DPMSolverMultistepScheduler

    cache = tmp_path / "hf" / "hub"
    plain = DDPMPipeline(unet=make_tiny(), scheduler=DDIMScheduler())
    lay_out_hub_cache(cache, "org/cunet-cifar10", plain)
    steps = conditional_pipeline()
    lay_out_hub_cache(cache, "org/cunet-steps", steps)
    snapshot = next((cache / "models--org--cunet-cifar10" / "snapshots").iterdir())
    result = run_in_the_hub_cache(tmp_path, NO_INSTALL, str(snapshot), str(tmp_path / "resaved"))

    assert "trust_remote_code=True" in result["refusal"]
    # the reference: the same folder loaded with the package installed, sampled on the same seed
    installed = ContinuousUNetPipeline.from_pretrained(snapshot)
    np.testing.assert_allclose(result["ddim"], sample(installed)[0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(result["generic"], sample(installed)[0], rtol=0, atol=1e-6)
    installed.scheduler = DPMSolverMultistepScheduler.from_config(
        installed.scheduler.config, algorithm_type="dpmsolver++"
    )
    np.testing.assert_allclose(result["dpm++"], sample(installed)[0], rtol=0, atol=1e-6)
    assert result["automodel"] == "ContinuousUNet2DModel"
    assert result["pipeline_class"] == "ContinuousUNetPipeline"
    steps_snapshot = next((cache / "models--org--cunet-steps" / "snapshots").iterdir())
    images, evaluations = sample(ContinuousUNetPipeline.from_pretrained(steps_snapshot), class_labels=[0, 2])
    np.testing.assert_allclose(result["steps"][0], images, rtol=0, atol=1e-6)
    assert result["steps"][1] == evaluations  # the saved solver schedule is applied
    assert evaluations != sample(steps, class_labels=[0, 2], solver_schedule=lambda i, t: None)[1]

    resaved = tmp_path / "resaved"
    index = json.loads((resaved / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_cunet", "ContinuousUNetPipeline"] and "_name_or_path" not in index
    assert index["unet"] == ["modeling_cunet", "ContinuousUNet2DModel"]
    assert code_file_problems(resaved) == [] and (resaved / "solver_schedule.json").is_file()
    reloaded = run_in_the_hub_cache(tmp_path, RELOAD, str(resaved))
    np.testing.assert_allclose(reloaded[0], images, rtol=0, atol=1e-6)
    assert reloaded[1] == evaluations
    # feature reuse in the shipped pipeline file gives the package's images and evaluation count
    cached = sample(ContinuousUNetPipeline.from_pretrained(steps_snapshot), class_labels=[0, 2], cache_interval=2)
    np.testing.assert_allclose(reloaded[2], cached[0], rtol=0, atol=1e-6)
    assert reloaded[3] == cached[1] < evaluations


def test_old_or_damaged_folders_warn_and_are_repaired(tmp_path, capsys):
    folder = tmp_path / "old"
    DDPMPipeline(unet=make_tiny(), scheduler=DDIMScheduler()).save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["unet"] = ["diffusers_cunet.unet_continuous_2d", "ContinuousUNet2DModel"]  # as version 0.1 saved it
    (folder / "model_index.json").write_text(json.dumps(index))
    (folder / "unet" / "modeling_cunet.py").unlink()
    with pytest.warns(UserWarning, match=r"model_index.json names the unet's code as 'diffusers_cunet"):
        assert type(ContinuousUNetPipeline.from_pretrained(folder).unet) is ContinuousUNet2DModel

    main([str(folder)])
    out = capsys.readouterr().out
    assert "wrote unet/modeling_cunet.py" in out
    assert "laid out for the Hub: diffusers loads it with trust_remote_code=True" in out  # what changed, said
    assert code_file_problems(folder) == []
    assert json.loads((folder / "model_index.json").read_text())["unet"][0] == "modeling_cunet"
    assert DDPMPipeline.from_pretrained(folder, trust_remote_code=True).unet.config.sample_size == 8

    code = folder / "unet" / "modeling_cunet.py"
    code.write_text(
        code.read_text().replace("Generated from diffusers-cunet ", "Generated from diffusers-cunet 0.0.1 ")
    )
    problems = code_file_problems(folder)
    assert len(problems) == 1 and str(code) in problems[0] and "0.0.1" in problems[0]
    code.unlink()
    with pytest.warns(UserWarning, match=rf"{code} is missing.*python -m diffusers_cunet.pipelines.code_files"):
        ContinuousUNetPipeline.from_pretrained(folder)


def test_bad_loading_input_is_refused_with_the_file_named(tmp_path):
    with pytest.raises(TypeError, match=r"unexpected options \['device_map'\]"):
        ContinuousUNetPipeline.from_pretrained(tmp_path, device_map="auto")
    with pytest.raises(ValueError, match=f"{tmp_path / 'model_index.json'} does not exist"):
        ContinuousUNetPipeline.from_pretrained(tmp_path)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "X", "unet": ["somewhere", "Thing"]}))
    with pytest.raises(ValueError, match="names unet = \\['somewhere', 'Thing'\\]"):
        ContinuousUNetPipeline.from_pretrained(tmp_path)
    with pytest.raises(SystemExit):
        main([str(tmp_path / "nothing-here")])


def test_push_to_hub_uploads_the_complete_folder(tmp_path, monkeypatch):
    from huggingface_hub import HfApi, RepoUrl

    uploaded = {}

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        root = Path(folder_path)
        uploaded[repo_id] = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    monkeypatch.setattr(HfApi, "create_repo", lambda self, name, **kwargs: RepoUrl(f"https://huggingface.co/{name}"))
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    conditional_pipeline().save_pretrained(tmp_path / "out", push_to_hub=True, repo_id="org/cunet-steps")
    assert {"pipeline_cunet.py", "unet/modeling_cunet.py", "solver_schedule.json", "model_index.json"} <= set(
        uploaded["org/cunet-steps"]
    )
