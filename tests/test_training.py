"""training/train.py: the loss falls, resume is exact, outputs reload, the card and the upload are right."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline
from safetensors.torch import load_file
from training_helpers import assert_same_weights, load_train_module, loss_history, train

from training.checkpointing import list_checkpoints
from training.hub import push_to_hub


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short run shared by the output tests: 60 steps on 8x8 digits."""
    output = tmp_path_factory.mktemp("run")
    result = train(output, "--max_train_steps", "60", "--checkpointing_steps", "30", "--checkpoints_total_limit", "1")
    return output, result


def test_loss_falls(trained):
    output, _ = trained
    history = loss_history(output)
    assert len(history) == 60
    first, last = np.mean(history[:5]), np.mean(history[-10:])
    assert last < 0.5 * first, (first, last)


def test_outputs_are_written(trained):
    output, result = trained
    for name in ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                 "scheduler/scheduler_config.json", "samples.png", "metrics.json", "README.md"]:  # fmt: skip
        assert (output / name).is_file(), name
    assert not list(output.rglob("*.bin")) or all("checkpoint-" in str(p) for p in output.rglob("*.bin"))
    assert [p.name for p in list_checkpoints(output)] == ["checkpoint-60"]  # total limit 1 rotated the older one
    assert result.grid_path.name == "samples.png"


def test_saved_pipeline_reloads_and_samples(trained):
    output, _ = trained
    pipe = DDPMPipeline.from_pretrained(output, trust_remote_code=True)  # the model code shipped in unet/
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=3, output_type="np")
    assert images.images.shape == (2, 8, 8, 1)
    ema = load_file(output / "checkpoint-60" / "unet_ema" / "diffusion_pytorch_model.safetensors")
    saved = load_file(output / "unet" / "diffusion_pytorch_model.safetensors")
    assert ema.keys() == saved.keys()
    for key in saved:  # the published weights are the EMA weights
        torch.testing.assert_close(saved[key], ema[key])


def test_model_card_has_the_real_numbers(trained):
    output, _ = trained
    card = (output / "README.md").read_text()
    metrics = json.loads((output / "metrics.json").read_text())["metrics"]
    unet = DDPMPipeline.from_pretrained(output, trust_remote_code=True).unet
    assert f"{sum(p.numel() for p in unet.parameters()):,}" in card
    assert str(metrics["final_loss (mean of last 10% of batches)"]) in card
    assert "library_name: diffusers" in card and "diffusers-cunet" in card
    assert "ContinuousUNetPipeline.from_pretrained" in card and "`DDPMSolverMultistepScheduler`" not in card
    assert "`DDIMScheduler`" in card and "UniPC and DEIS raise" in card  # what DDPMPipeline drives correctly
    assert "pip install diffusers-cunet" not in card and "datasets:" not in card  # digits: no Hub data set
    assert "![samples](samples.png)" in card
    assert "recognisable samples" in card
    recognised = metrics["recognisable samples (digit classifier p >= 0.9)"]
    assert re.fullmatch(r"\d+ of 4", recognised), recognised  # a count beside its sample size
    assert re.fullmatch(r"\d+ of 10", metrics["digit classes among them"])


def test_model_card_usage_code_runs_as_written(trained):
    output, _ = trained
    card = (output / "README.md").read_text()
    remote, installed = re.findall(r"```python\n(.*?)```", card, re.S)  # without the package, then with it
    for code in (remote, installed):  # the card's own snippets, on the local folder
        repo_id = re.search(r'from_pretrained\("([^"]+)"', code).group(1)
        namespace: dict = {}
        exec(code.replace(repo_id, str(output)), namespace)
    assert type(namespace["pipe"]).__name__ == "ContinuousUNetPipeline"
    assert len(namespace["images"]) == 16 and namespace["images"][0].size == (8, 8)


def test_resume_is_exact(tmp_path):
    """A run resumed from step 4 ends with the same weights, EMA and all, as the uninterrupted run."""
    module = load_train_module()
    common = ["--max_train_steps", "10", "--max_train_samples", "96", "--random_flip", "--no-center_crop",
              "--gradient_accumulation_steps", "2", "--checkpointing_steps", "4",
              "--checkpoints_total_limit", "5"]  # fmt: skip
    full = tmp_path / "full"
    train(full, *common, module=module)
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-4", resumed / "checkpoint-4")
    # A run killed while writing its next checkpoint leaves a partial folder: it must be ignored.
    (resumed / ".checkpoint-8.partial").mkdir()
    (resumed / ".checkpoint-8.partial" / "model.safetensors").write_bytes(b"half written")
    train(resumed, *common, "--resume_from_checkpoint", "latest", module=module)

    assert not (resumed / ".checkpoint-8.partial").exists()
    for name in ("checkpoint-8", "checkpoint-10"):
        assert_same_weights(full / name / "model.safetensors", resumed / name / "model.safetensors", f"{name}: ")
    ema = Path("unet", "diffusion_pytorch_model.safetensors")
    assert_same_weights(full / ema, resumed / ema, "EMA ")
    assert loss_history(resumed) == loss_history(full)  # the whole run's history, restored from checkpoint-4
    metrics = json.loads((resumed / "metrics.json").read_text())["metrics"]
    assert metrics["training steps"] == 10 and metrics["resumed at step"] == 4
    full_metrics = json.loads((full / "metrics.json").read_text())["metrics"]
    loss_key = "final_loss (mean of last 10% of batches)"
    assert metrics[loss_key] == full_metrics[loss_key]  # from the whole run's history, not the last session
    card = (resumed / "README.md").read_text()
    assert "| steps | 10 |" in card and "| resumed at step | 4 |" in card


def test_checkpoint_of_another_model_is_refused_before_training(tmp_path):
    module = load_train_module()
    train(tmp_path, "--max_train_steps", "2", "--checkpointing_steps", "2", module=module)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ValueError, match="belongs to another model.*block_out_channels"):
        train(tmp_path, "--max_train_steps", "4", "--block_out_channels", "16", "64",
              "--resume_from_checkpoint", "latest", module=module)  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_push_to_hub_uploads_the_pipeline_not_the_checkpoints(trained, monkeypatch):
    from huggingface_hub import HfApi, RepoUrl

    output, _ = trained
    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["repo"] = (repo_id, kwargs.get("private"))
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, ignore_patterns=None, **kwargs):
        # The real file selection of huggingface_hub, without the network commit.
        operations = self._prepare_upload_folder_additions(
            folder_path, "", allow_patterns=None, ignore_patterns=ignore_patterns, token=None, repo_type="model"
        )
        calls["files"] = sorted(op.path_in_repo for op in operations)
        return "https://huggingface.co/org/cunet-digits/commit/0"

    def validate_yaml(self, content, **kwargs):  # a Hub endpoint checks the card's metadata
        calls["card"] = content

    monkeypatch.setattr(HfApi, "_validate_yaml", validate_yaml)
    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    push_to_hub(output, "org/cunet-digits", token=None, private=True)
    assert calls["repo"] == ("org/cunet-digits", True)
    assert calls["card"] == (output / "README.md").read_text()
    assert calls["files"] == sorted([
        "README.md", "metrics.json", "model_index.json", "samples.png", "scheduler/scheduler_config.json",
        "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "unet/modeling_cunet.py",
    ])  # fmt: skip


def test_resuming_a_finished_run_touches_nothing(tmp_path):
    """Resuming at or past --max_train_steps must not train a step, write a checkpoint, prune the old ones or
    overwrite the saved pipeline (it used to run one more step and delete checkpoint-2 under the limit)."""
    output = tmp_path / "run"
    first = train(output, "--max_train_steps", "4", "--checkpointing_steps", "2", "--checkpoints_total_limit", "2",
                  "--num_validation_images", "2")  # fmt: skip
    before = {p.relative_to(output): p.stat().st_mtime_ns for p in output.rglob("*") if p.is_file()}
    result = train(output, "--max_train_steps", "4", "--checkpointing_steps", "2", "--checkpoints_total_limit", "2",
                   "--resume_from_checkpoint", "latest")  # fmt: skip
    after = {p.relative_to(output): p.stat().st_mtime_ns for p in output.rglob("*") if p.is_file()}
    assert result.already_done and result.global_step == 4
    assert after == before
    # the result is complete, as the run left it: the EMA model, its numbers and histories, read back
    for name, value in first.unet.state_dict().items():
        torch.testing.assert_close(result.unet.state_dict()[name], value, rtol=0, atol=0)
    assert result.loss_history == first.loss_history and result.held_out_error == first.held_out_error
    assert result.train_seconds == pytest.approx(first.train_seconds, abs=0.05) and result.metrics == first.metrics
    assert [p.name for p in list_checkpoints(output)] == ["checkpoint-2", "checkpoint-4"]


@pytest.mark.parametrize(
    "repo_id, env, message",
    [
        (
            "org/cunet-digits",
            {"HF_HUB_OFFLINE": "1"},
            "cannot be reached as a logged-in user.*hf upload org/cunet-digits",
        ),
        ("not a/valid//id", {}, "is not a valid repo id"),
    ],
)
def test_push_to_hub_problems_surface_before_training(tmp_path, monkeypatch, repo_id, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", bool(env))
    with pytest.raises(ValueError, match=message):
        train(tmp_path / "out", "--max_train_steps", "2", "--push_to_hub", "--hub_model_id", repo_id)
    assert not (tmp_path / "out").exists()


def test_a_failed_upload_after_training_keeps_the_folder_and_says_how_to_upload(tmp_path, monkeypatch, capsys):
    from huggingface_hub import HfApi

    def refuse(self, *args, **kwargs):
        raise ConnectionError("Hub unreachable")

    monkeypatch.setattr(HfApi, "whoami", lambda self, *a, **k: {"name": "me"})  # the dry check passes ...
    monkeypatch.setattr(HfApi, "create_repo", refuse)  # ... then the network goes away
    output = tmp_path / "out"
    result = train(output, "--max_train_steps", "2", "--push_to_hub", "--hub_model_id", "me/cunet")
    assert "ConnectionError: Hub unreachable" in result.push_error
    assert f"hf upload me/cunet {output}" in result.push_error and "--exclude 'checkpoint-*/**'" in result.push_error
    assert (output / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_model_card_metadata_names_only_hub_data_sets():
    from conftest import make_tiny

    from training.model_card import render_model_card

    common = dict(repo_id="me/cunet", training_settings={}, metrics={})
    local = render_model_card(make_tiny(), dataset_name="/home/me/photos", **common)
    hub = render_model_card(make_tiny(), dataset_name="uoft-cs/cifar10", hub_dataset="uoft-cs/cifar10", **common)
    assert local.data.datasets is None and "/home/me/photos" in local.text
    assert hub.data.datasets == ["uoft-cs/cifar10"]


def test_held_out_error_falls_and_the_held_out_images_are_never_trained_on(tmp_path):
    output = tmp_path / "run"
    result = train(output, "--max_train_steps", "40", "--held_out_samples", "100", "--validation_steps", "20",
                   "--record_process_log")  # fmt: skip
    steps = [entry["step"] for entry in result.held_out_error]
    assert steps == [0, 20, 40]
    first, last = result.held_out_error[0]["mean"], result.held_out_error[-1]["mean"]
    assert last < 0.7 * first, (first, last)
    assert set(result.held_out_error[0]) == {"step", "mean", "sigma=0.1", "sigma=0.3", "sigma=1", "sigma=3"}
    saved = json.loads((output / "metrics.json").read_text())
    assert saved["held_out_error"] == result.held_out_error
    assert "held-out denoising error" in (output / "README.md").read_text()
    log = json.loads((output / "process_logs" / "process_0.json").read_text())
    assert max(max(batch) for batch in log["indices"]) < 1797 - 100  # the last 100 digits never reach a batch


def test_held_out_error_resumes_exactly(tmp_path):
    common = ["--max_train_steps", "8", "--max_train_samples", "96", "--checkpointing_steps", "4",
              "--validation_steps", "4", "--held_out_samples", "32", "--checkpoints_total_limit", "5"]  # fmt: skip
    full = train(tmp_path / "full", *common)
    (tmp_path / "resumed").mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint-4", tmp_path / "resumed" / "checkpoint-4")
    resumed = train(tmp_path / "resumed", *common, "--resume_from_checkpoint", "latest")
    assert resumed.held_out_error == full.held_out_error and [e["step"] for e in full.held_out_error] == [0, 4, 8]
    weights = Path("unet", "diffusion_pytorch_model.safetensors")
    assert_same_weights(tmp_path / "full" / weights, tmp_path / "resumed" / weights)


def test_holding_out_everything_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="--held_out_samples 1797 leaves nothing to train on"):
        train(tmp_path / "out", "--held_out_samples", "1797")
    assert not (tmp_path / "out").exists()


def test_a_resume_is_quiet(tmp_path, capfd):
    """Resuming reads the EMA folder without diffusers' FutureWarning (a path passed to from_config) or its notice
    about the EMA keys of the config; the only message is the resume itself."""
    import warnings

    module = load_train_module()
    common = ["--max_train_steps", "4", "--checkpointing_steps", "2", "--lr_warmup_steps", "1"]
    train(tmp_path, *common[:1], "2", *common[2:], module=module)
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(tmp_path, *common, "--resume_from_checkpoint", "latest", module=module)
    printed = capfd.readouterr()
    assert not [w for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))]
    assert "were passed to" not in printed.err + printed.out and "deprecated" not in printed.err


def test_metrics_json_has_machine_keys_and_old_files_still_read(trained, tmp_path):
    """Code reads metrics.json's "record" (machine keys); the labels are for people, from one table."""
    from training.export import RECORD_LABELS, read_run_values

    output, _ = trained
    saved = json.loads((output / "metrics.json").read_text())
    record = saved["record"]
    assert record["training_steps"] == saved["metrics"]["training steps"] and set(record) <= set(RECORD_LABELS)
    assert all(saved["metrics"][RECORD_LABELS[key]] == value for key, value in record.items())
    old = tmp_path / "old"
    old.mkdir()
    (old / "metrics.json").write_text(json.dumps({k: v for k, v in saved.items() if k != "record"}))
    assert read_run_values(old) == record  # a file written before "record" existed
