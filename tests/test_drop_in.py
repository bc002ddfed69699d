"""What users of diffusers' pipelines expect, and what a new user trips over: `latents`, step callbacks, generator
lists, class names, half precision, clear errors for bad requests, and runs that never overwrite another."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_tiny
from diffusers import DDIMScheduler, DDPMPipeline, EDMDPMSolverMultistepScheduler
from PIL import Image
from training_helpers import train

from diffusers_cunet import ContinuousUNet2DModel
from diffusers_cunet.pipelines import ContinuousUNetDenoisePipeline, ContinuousUNetPipeline

NAMES = {"0": "cat", "1": "dog", "2": "owl"}


def pipeline(**overrides) -> ContinuousUNetPipeline:
    pipe = ContinuousUNetPipeline(unet=make_tiny(**overrides), scheduler=DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def images(pipe, seed: int = 0, **kwargs) -> torch.Tensor:
    kwargs.setdefault("batch_size", 2)
    return pipe(
        num_inference_steps=4, generator=torch.Generator().manual_seed(seed), output_type="pt", **kwargs
    ).images


def test_latents_and_an_identity_callback_give_the_same_images():
    pipe = pipeline()
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    reference = images(pipe)  # the generator draws exactly this noise
    np.testing.assert_array_equal(images(pipe, latents=noise.clone()), reference)
    seen = []

    def unchanged(pipe_, step, timestep, tensors):
        seen.append((step, int(timestep), tuple(tensors)))
        return tensors

    np.testing.assert_array_equal(images(pipe, latents=noise.clone(), callback_on_step_end=unchanged), reference)
    assert [step for step, _, _ in seen] == [0, 1, 2, 3] and all(names == ("latents",) for *_, names in seen)
    assert [t for _, t, _ in seen] == pipe.scheduler.timesteps.tolist()

    def zero(pipe_, step, timestep, tensors):
        return {"latents": torch.zeros_like(tensors["latents"])} if step == 3 else tensors

    assert not torch.equal(images(pipe, callback_on_step_end=zero), reference)  # what it returns replaces the sample
    with pytest.raises(ValueError, match=r"Unexpected latents shape \(1, 3, 8, 8\): expected \(2, 3, 8, 8\)"):
        images(pipe, latents=noise[:1])
    with pytest.raises(ValueError, match="floating-point"):
        images(pipe, latents=noise.long())
    with pytest.raises(ValueError, match=r"\['noise'\] are not among the pipeline's \['latents'\]"):
        images(pipe, callback_on_step_end=unchanged, callback_on_step_end_tensor_inputs=["noise"])


def test_edm_latents_are_scaled_by_init_noise_sigma():
    unet = make_tiny(preconditioning={"type": "edm"})
    pipe = ContinuousUNetPipeline(unet=unet, scheduler=EDMDPMSolverMultistepScheduler())
    pipe.set_progress_bar_config(disable=True)
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(images(pipe, latents=noise), images(pipe))  # unit noise in, sigma_max applied


def test_generator_lists_and_step_counts_are_checked():
    pipe = pipeline()
    generators = [torch.Generator().manual_seed(k) for k in range(2)]
    assert pipe(batch_size=2, generator=generators, num_inference_steps=2, output_type="pt").images.shape[0] == 2
    with pytest.raises(ValueError, match="list of 3 generators for a batch of 2"):
        pipe(batch_size=2, generator=[torch.Generator()] * 3, num_inference_steps=2)
    for steps in (0, -1, 2.5):
        with pytest.raises(ValueError, match="num_inference_steps must be a positive integer"):
            pipe(batch_size=1, num_inference_steps=steps)
    ddpm = DDPMPipeline(unet=make_tiny(), scheduler=DDIMScheduler())
    with pytest.raises(ValueError, match="a batch of 0"):
        ddpm(batch_size=0, num_inference_steps=2)


def test_class_names_and_labels():
    pipe = pipeline(num_class_embeds=3, id2label={0: "cat", 1: "dog", 2: "owl"})
    assert pipe.unet.config.id2label == NAMES  # string keys, as JSON keeps them
    assert pipe.labels == {0: "cat", 1: "dog", 2: "owl"}
    assert pipe.get_label_ids(["owl", "cat"]) == [2, 0] and pipe.get_label_ids("dog") == [1]
    np.testing.assert_array_equal(images(pipe, class_labels=["owl", "cat"]), images(pipe, class_labels=[2, 0]))
    with pytest.raises(ValueError, match=r"Unknown class name 'cow'; the model's classes are \['cat', 'dog', 'owl'\]"):
        images(pipe, class_labels=["cow", "cat"])
    with pytest.raises(ValueError, match="conditioned on 3 classes"):
        images(pipe)
    with pytest.raises(ValueError, match=r"id2label must name classes 0..2"):
        make_tiny(num_class_embeds=3, id2label={0: "cat"})


def test_a_model_with_a_null_class_samples_without_labels(tmp_path):
    pipe = pipeline(num_class_embeds=4, null_class_label=3, id2label=NAMES)
    unconditional = images(pipe)
    np.testing.assert_array_equal(unconditional, images(pipe, class_labels=[3, 3]))
    with pytest.raises(ValueError, match=r"lie in \[0, 2\] or 3, the null class"):
        images(pipe, class_labels=[4, 0])
    denoise = ContinuousUNetDenoisePipeline(unet=pipe.unet, scheduler=DDIMScheduler())
    denoise.set_progress_bar_config(disable=True)
    noisy = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert denoise(noisy, timestep=200, num_inference_steps=2, output_type="pt").images.shape == (2, 3, 8, 8)
    pipe.save_pretrained(tmp_path)
    assert ContinuousUNetPipeline.from_pretrained(tmp_path).unet.config.id2label == NAMES


@pytest.mark.parametrize("preconditioning", [None, {"type": "edm"}], ids=["ddpm-style", "edm"])
def test_bfloat16_sampling_on_the_cpu(preconditioning):
    scheduler = EDMDPMSolverMultistepScheduler() if preconditioning else DDIMScheduler()
    pipe = ContinuousUNetPipeline(unet=make_tiny(preconditioning=preconditioning), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(torch.bfloat16)
    out = images(pipe)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    assert (out.float() - images(pipe.to(torch.float32)).float()).abs().max() < 0.25  # bf16 rounding, not noise


@pytest.mark.parametrize("name", ["outputs/no-such-run", "./no-such-run", "/tmp/no/such/run"])
def test_a_missing_folder_says_so(name, offline):
    with pytest.raises(ValueError, match=f"No folder {name} exists") as raised:
        ContinuousUNetPipeline.from_pretrained(name)
    if name == "outputs/no-such-run":  # could be a Hub id: that reading is answered too
        assert "no repository outputs/no-such-run is in the Hugging Face cache (offline)" in str(raised.value)


def test_a_run_never_overwrites_another(tmp_path):
    output = tmp_path / "run"
    first = train(output, "--max_train_steps", "2", "--checkpointing_steps", "2")
    before = (output / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    with pytest.raises(
        ValueError, match=r"holds another run \(checkpoint-2, an exported pipeline.*--overwrite_output"
    ):
        train(output, "--max_train_steps", "3")
    assert (output / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == before  # untouched
    resumed = train(output, "--max_train_steps", "3", "--checkpointing_steps", "3", "--resume_from_checkpoint",
                    "latest")  # fmt: skip
    assert resumed.global_step == 3 and first.global_step == 2
    fresh = train(output, "--max_train_steps", "1", "--checkpointing_steps", "1", "--overwrite_output_dir")
    assert fresh.global_step == 1
    assert sorted(p.name for p in output.glob("checkpoint-*")) == ["checkpoint-1"], "no checkpoint of the old run"


def test_the_data_decides_the_resolution_and_names_the_classes(tmp_path, caplog):
    folder = tmp_path / "images"
    rng = np.random.default_rng(0)
    for name in ("apple", "pear"):
        (folder / name).mkdir(parents=True)
        for k in range(6):
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(folder / name / f"{k}.png")
    common = ["--train_data_dir", str(folder), "--max_train_steps", "1", "--class_column", "label"]
    result = train(tmp_path / "a", *common, "--resolution", "12", "--block_out_channels", "16", "32")
    assert result.unet.config.sample_size == 12
    assert result.unet.config.id2label == {"0": "apple", "1": "pear"}
    assert "`apple`" in (tmp_path / "a" / "README.md").read_text()  # the card lists the names

    module_args = ["--train_data_dir", str(folder), "--max_train_steps", "1", "--report_to", "none",
                   "--num_validation_images", "2", "--validation_inference_steps", "2", "--block_out_channels",
                   "16", "32", "--train_batch_size", "4"]  # fmt: skip
    from training import train as train_module

    taken = train_module.main([*module_args, "--output_dir", str(tmp_path / "b")])
    assert taken.unet.config.sample_size == 12  # no preset, no --resolution: the images' size
    with caplog.at_level("WARNING"):
        resized = train_module.main([*module_args, "--output_dir", str(tmp_path / "c"), "--model_preset", "digits-16"])
    assert resized.unet.config.sample_size == 16
    assert "The images are 12 pixels on their short side and the model's sample size is 16" in caplog.text


def test_a_class_column_of_names_becomes_labels(tmp_path):
    import datasets

    from training.data import class_names, encode_class_names

    rows = datasets.Dataset.from_dict({"label": ["pear", "apple", "pear"], "x": [0, 1, 2]})
    encoded = encode_class_names(rows, "label")
    assert encoded["label"] == [1, 0, 1] and class_names(encoded, "label") == ["apple", "pear"]
    held_out = encode_class_names(datasets.Dataset.from_dict({"label": ["pear"]}), "label", ["apple", "pear"])
    assert held_out["label"] == [1]
    with pytest.raises(ValueError, match=r"names \['plum'\] not among"):
        encode_class_names(datasets.Dataset.from_dict({"label": ["plum"]}), "label", ["apple", "pear"])


def test_saved_class_names_survive_diffusers_save_and_load(tmp_path):
    unet = make_tiny(num_class_embeds=3, id2label=NAMES)
    unet.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["id2label"] == NAMES
    assert ContinuousUNet2DModel.from_pretrained(tmp_path).config.id2label == NAMES


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--collective_timeout", "0"], "--collective_timeout must be a positive number of seconds"),
        (["--max_nonfinite_steps", "-1"], "--max_nonfinite_steps must be >= 0"),
        (["--overwrite_output_dir", "--resume_from_checkpoint", "latest"], "give one"),
    ],
)
def test_option_checks_happen_when_options_are_parsed(argv, message, capsys):
    from training.options import parse_args

    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


def test_a_checkpoint_without_class_names_still_resumes(tmp_path):
    """Runs checkpointed before class names were recorded resume (the names do not shape the weights)."""
    from training.checkpoint_manifest import write_manifest
    from training.checkpointing import MODEL_CONFIG_FILE

    output = tmp_path / "run"
    train(output, "--max_train_steps", "2", "--checkpointing_steps", "2", "--class_column", "label")
    saved = output / "checkpoint-2" / MODEL_CONFIG_FILE
    config = json.loads(saved.read_text())
    assert config.pop("id2label")["3"] == "3"  # the digits' ClassLabel names
    saved.write_text(json.dumps(config))  # as an earlier version wrote it (its manifest too)
    write_manifest(saved.parent)
    resumed = train(output, "--max_train_steps", "3", "--checkpointing_steps", "3", "--class_column", "label",
                    "--resume_from_checkpoint", "latest")  # fmt: skip
    assert resumed.global_step == 3 and resumed.unet.config.id2label["9"] == "9"
