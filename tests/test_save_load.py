"""save_pretrained / from_pretrained: safetensors only, variants, dtypes, and clear errors for bad files."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_CONFIG, make_tiny

from diffusers_cunet import ContinuousUNet2DModel

WEIGHTS = "diffusion_pytorch_model.safetensors"


def _public(config) -> dict:
    """A config as JSON would hold it (tuples become lists), without diffusers' private bookkeeping keys."""
    return {k: json.loads(json.dumps(v)) for k, v in config.items() if not k.startswith("_")}


def test_round_trip_gives_identical_outputs(tmp_path, tiny_model, tiny_inputs):
    sample, t = tiny_inputs
    tiny_model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", WEIGHTS, "modeling_cunet.py"]
    loaded = ContinuousUNet2DModel.from_pretrained(tmp_path).eval()
    assert _public(loaded.config) == _public(tiny_model.config)
    with torch.no_grad():
        torch.testing.assert_close(loaded(sample, t).sample, tiny_model(sample, t).sample, rtol=0, atol=0)


def test_never_writes_pickle(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path, safe_serialization=True)
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.pt"))


def test_fp16_variant_and_torch_dtype(tmp_path, tiny_model, tiny_inputs):
    sample, t = tiny_inputs
    tiny_model.to(torch.float16).save_pretrained(tmp_path, variant="fp16")
    assert (tmp_path / "diffusion_pytorch_model.fp16.safetensors").exists()
    half = ContinuousUNet2DModel.from_pretrained(tmp_path, variant="fp16", torch_dtype=torch.float16)
    assert half.dtype == torch.float16
    as_float = ContinuousUNet2DModel.from_pretrained(tmp_path, variant="fp16", torch_dtype=torch.float32).eval()
    assert as_float.dtype == torch.float32
    reference = make_tiny()
    with torch.no_grad():
        torch.testing.assert_close(as_float(sample, t).sample, reference(sample, t).sample, rtol=1e-2, atol=1e-2)


def test_solver_settings_survive_save_and_load(tmp_path, tiny_model):
    tiny_model.set_solver(method="rk4", steps=3)
    tiny_model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["solver_method"] == "rk4" and config["solver_steps"] == 3
    loaded = ContinuousUNet2DModel.from_pretrained(tmp_path)
    assert loaded.solver.method == "rk4" and loaded.solver.steps == 3


def test_sharded_checkpoint_round_trip(tmp_path, tiny_model, tiny_inputs):
    sample, t = tiny_inputs
    tiny_model.save_pretrained(tmp_path, max_shard_size="50KB")
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    loaded = ContinuousUNet2DModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(sample, t).sample, tiny_model(sample, t).sample, rtol=0, atol=0)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupted_weights_file_names_the_file(tmp_path, tiny_model, damage):
    tiny_model.save_pretrained(tmp_path)
    weights = tmp_path / WEIGHTS
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a safetensors file")
    with pytest.raises(ValueError, match=f"Could not load ContinuousUNet2DModel weights from .*{WEIGHTS}"):
        ContinuousUNet2DModel.from_pretrained(tmp_path)


def test_mismatched_weights_file_names_the_file(tmp_path):
    ContinuousUNet2DModel(**{**TINY_CONFIG, "block_out_channels": (16, 64)}).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["block_out_channels"] = [16, 32]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"{WEIGHTS}.*expected shape"):
        ContinuousUNet2DModel.from_pretrained(tmp_path)


def test_missing_folder_keeps_diffusers_error(tmp_path):
    with pytest.raises(OSError):
        ContinuousUNet2DModel.from_pretrained(tmp_path / "nothing-here")


def test_invalid_config_names_the_config_file(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["solver_method"] = "rk45"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"Invalid ContinuousUNet2DModel config .*config.json: Unknown ODE solver"):
        ContinuousUNet2DModel.from_pretrained(tmp_path)


def test_an_error_outside_the_weights_keeps_its_type(tmp_path, tiny_model, monkeypatch):
    """Only what goes wrong while reading the weights is reported as a weights problem."""
    tiny_model.save_pretrained(tmp_path)

    def broken(*args, **kwargs):
        raise RuntimeError("not about the weights")

    monkeypatch.setattr(ContinuousUNet2DModel, "_build_decoder", broken)
    with pytest.raises(RuntimeError, match="not about the weights"):
        ContinuousUNet2DModel.from_pretrained(tmp_path)
