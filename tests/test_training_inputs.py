"""training/train.py on other inputs: local image folders, class labels, bad input, and two processes."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from training_helpers import ROOT, TINY_ARGS, load_train_module, train

from diffusers_cunet.pipelines import ContinuousUNetPipeline
from training.launcher import requested_processes, warn_if_fewer_processes
from training.options import parse_args


@pytest.fixture(scope="module")
def module():
    return load_train_module()


def _image_folder(root, modes=("L", "RGB", "RGBA", "P"), count=8, size=(12, 10)):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).convert(modes[i % len(modes)]).save(root / f"img_{i}.png")
    return root


def test_local_image_folder_with_mixed_modes(tmp_path, module):
    folder = _image_folder(tmp_path / "images")
    output = tmp_path / "out"
    result = train(output, "--train_data_dir", str(folder), "--max_train_steps", "2", "--train_batch_size", "4",
                   module=module)  # fmt: skip
    assert result.global_step == 2
    assert (output / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    # the card is meant for the Hub: the folder by its name, not this machine's path; the 8-image folder is
    # smaller than the batch of 16, and the card says what a step really saw
    card = (output / "README.md").read_text()
    assert str(tmp_path) not in card and "local folder `images`" in card
    small = train(tmp_path / "small", "--train_data_dir", str(folder), "--max_train_steps", "1",
                  "--train_batch_size", "16", module=module)  # fmt: skip
    assert small.global_step == 1
    assert "16 x 1 x 1 (the data set is smaller: 8 images per step)" in (tmp_path / "small" / "README.md").read_text()


def test_rgb_model_on_local_folder(tmp_path, module):
    folder = _image_folder(tmp_path / "images")
    output = tmp_path / "out"
    config = tmp_path / "model.json"
    config.write_text(json.dumps({"in_channels": 3, "out_channels": 3}))
    train(output, "--train_data_dir", str(folder), "--model_config", str(config), "--max_train_steps", "1",
          "--train_batch_size", "4", "--random_flip", "--no-center_crop", module=module)  # fmt: skip
    unet_config = json.loads((output / "unet" / "config.json").read_text())
    assert unet_config["in_channels"] == 3 and unet_config["sample_size"] == 8


def test_class_conditional_training(tmp_path, module):
    output = tmp_path / "out"
    train(output, "--class_column", "label", "--max_train_steps", "2", module=module)
    unet_config = json.loads((output / "unet" / "config.json").read_text())
    assert unet_config["num_class_embeds"] == 10
    index = json.loads((output / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_cunet", "ContinuousUNetPipeline"]
    pipe = ContinuousUNetPipeline.from_pretrained(output)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, class_labels=[3, 7], num_inference_steps=2, output_type="np").images
    assert images.shape == (2, 8, 8, 1)


def test_two_runs_with_one_seed_are_identical(tmp_path, module):
    from safetensors.torch import load_file

    for name in ("a", "b"):
        train(tmp_path / name, "--max_train_steps", "3", "--random_flip", module=module)
    a = load_file(tmp_path / "a" / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "b" / "unet" / "diffusion_pytorch_model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--train_data_dir", "/no/such/folder"], "is not a directory"),
        (
            ["--image_column", "picture"],
            r"Image column 'picture' not found; the data set has columns \['image', 'label'\]",
        ),
        (["--class_column", "digit"], "Class column 'digit' not found"),
        (["--resolution", "7"], "--resolution 7 cannot be taken .* multiple of 2"),
        (["--solver_method", "rk45"], "Unknown ODE solver method 'rk45'"),
        (["--resume_from_checkpoint", "checkpoint-99"], "Checkpoint 'checkpoint-99' does not exist"),
    ],
)
def test_bad_input_fails_before_writing_anything(tmp_path, module, extra, message):
    output = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        train(output, "--max_train_steps", "1", *extra, module=module)
    assert not output.exists()


def test_unknown_hub_dataset_is_a_clear_error(tmp_path, module, offline):
    with pytest.raises(ValueError, match="Could not load data set 'no-such-org/no-such-dataset'"):
        train(tmp_path / "out", "--dataset_name", "no-such-org/no-such-dataset", module=module)
    assert not (tmp_path / "out").exists()


def test_empty_image_folder_is_a_clear_error(tmp_path, module):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="--train_data_dir"):
        train(tmp_path / "out", "--train_data_dir", str(tmp_path / "empty"), module=module)


def test_yaml_config_is_read_and_overridden(tmp_path, module):
    config = tmp_path / "run.yaml"
    config.write_text("max_train_steps: 3\nlearning_rate: 0.5\n")
    args = parse_args(["--config", str(config), "--learning_rate", "0.01"])
    assert args.max_train_steps == 3 and args.learning_rate == 0.01
    config.write_text("max_train_step: 3\n")
    with pytest.raises(SystemExit):
        parse_args(["--config", str(config)])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_processes_shard_the_data_and_keep_identical_replicas(tmp_path):
    """The README's two-CPU-process command: DDP over gloo, in fresh processes as a user runs it."""
    output = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()),
        str(ROOT / "training" / "train.py"), *TINY_ARGS, "--output_dir", str(output),
        "--max_train_steps", "3", "--record_process_log",
    ]  # fmt: skip
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    logs = [json.loads((output / "process_logs" / f"process_{i}.json").read_text()) for i in range(2)]
    assert [log["num_processes"] for log in logs] == [2, 2]
    assert logs[0]["distributed_type"] == "DistributedType.MULTI_CPU"
    # DDP averaged the gradients, so the replicas, fed different data, end bit-identical.
    assert logs[0]["weights_sha256"] == logs[1]["weights_sha256"]
    seen = [log["indices"] for log in logs]
    assert len(seen[0]) == len(seen[1]) == 3
    for step in range(3):
        assert not set(seen[0][step]) & set(seen[1][step]), f"both processes saw the same examples at step {step}"
    assert (output / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_unet2d_baseline_trains_with_the_same_recipe(tmp_path, module):
    from diffusers import DDPMPipeline, UNet2DModel

    output = tmp_path / "baseline"
    train(output, "--model_type", "unet2d", "--max_train_steps", "2", "--checkpointing_steps", "2", module=module)
    pipe = DDPMPipeline.from_pretrained(output)  # diffusers' own model: no code to trust
    assert isinstance(pipe.unet, UNet2DModel) and tuple(pipe.unet.config.block_out_channels) == (16, 32)
    assert "none (residual blocks)" in (output / "README.md").read_text()
    with pytest.raises(ValueError, match="--solver_steps only apply to --model_type cunet"):
        train(tmp_path / "x", "--model_type", "unet2d", "--solver_steps", "3", module=module)


def test_colour_folder_trains_a_colour_model_unless_told_otherwise(tmp_path, module):
    """A folder of RGB images used to become an in_channels=1 model silently; the channels now follow the data."""
    folder = _image_folder(tmp_path / "rgb", modes=("RGB",), count=4)
    for name, extra, expected in (("auto", (), 3), ("grey", ("--channels", "1"), 1)):
        output = tmp_path / name
        train(output, "--train_data_dir", str(folder), "--max_train_steps", "1", "--train_batch_size", "4",
              "--num_validation_images", "2", *extra, module=module)  # fmt: skip
        unet_config = json.loads((output / "unet" / "config.json").read_text())
        assert (unet_config["in_channels"], unet_config["out_channels"]) == (expected, expected), name
    grey = _image_folder(tmp_path / "grey-images", modes=("L",), count=4)
    train(tmp_path / "g", "--train_data_dir", str(grey), "--max_train_steps", "1", "--train_batch_size", "4",
          "--num_validation_images", "2", module=module)  # fmt: skip
    assert json.loads((tmp_path / "g" / "unet" / "config.json").read_text())["in_channels"] == 1


def test_accelerate_mixed_precision_is_respected_unless_the_flag_is_given(tmp_path, module, monkeypatch):
    """`accelerate launch --mixed_precision bf16` (seen by the script as ACCELERATE_MIXED_PRECISION) used to be
    overridden by the script's own default `no`."""
    from accelerate.state import AcceleratorState

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    for name, extra, expected in (("env", (), "bf16"), ("flag", ("--mixed_precision", "no"), "no")):
        output = tmp_path / name
        AcceleratorState._reset_state(reset_partial_state=True)  # a launch is one process: no state from other tests
        try:
            train(output, "--max_train_steps", "1", "--num_validation_images", "2", *extra, module=module)
        finally:
            AcceleratorState._reset_state(reset_partial_state=True)
        lines = [line for line in (output / "README.md").read_text().splitlines() if "mixed precision" in line]
        assert lines and expected in lines[0].split("mixed precision", 1)[1], (name, lines)


def _folder_with_bad_files(root):
    folder = _image_folder(root, modes=("L",), count=6)
    good = (folder / "img_0.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "notes.png").write_text("not an image")
    return folder


def test_unreadable_images_are_all_named_before_anything_is_written(tmp_path, module):
    folder = _folder_with_bad_files(tmp_path / "images")
    output = tmp_path / "out"
    with pytest.raises(ValueError, match="2 of 8 images") as error:
        train(output, "--train_data_dir", str(folder), "--max_train_steps", "1", module=module)
    message = str(error.value)
    assert "truncated.png" in message and "notes.png" in message and "--skip_bad_images" in message
    assert "img_0.png" not in message
    assert not output.exists()


def test_skip_bad_images_trains_on_the_readable_ones(tmp_path, module, caplog):
    folder = _folder_with_bad_files(tmp_path / "images")
    with caplog.at_level("WARNING"):
        result = train(tmp_path / "out", "--train_data_dir", str(folder), "--skip_bad_images",
                       "--max_train_steps", "1", "--train_batch_size", "4", module=module)  # fmt: skip
    assert result.global_step == 1
    assert "Leaving out 2 unreadable image(s)" in caplog.text and "truncated.png" in caplog.text


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("model_type: unet\n", r"model_type: 'unet' is not one of the choices \(cunet, unet2d\)"),
        ("report_to: wandb\n", "report_to: 'wandb' is not one of the choices"),
        ("max_train_steps: many\n", "max_train_steps: 'many' is not a valid int"),
        ("use_ema: maybe\n", "use_ema must be true or false"),
        ("learning_rat: 0.1\n", "did you mean 'learning_rate'"),
        ("resolution: [8, 16]\n", "resolution takes one value"),
    ],
)
def test_yaml_config_passes_the_command_line_checks(tmp_path, module, capsys, yaml_text, message):
    config = tmp_path / "run.yaml"
    config.write_text(yaml_text)
    with pytest.raises(SystemExit):
        parse_args(["--config", str(config)])
    error = capsys.readouterr().err
    assert str(config) in error and re.search(message, error), error


def test_yaml_config_values_become_the_same_options_as_the_command_line(tmp_path, module):
    config = tmp_path / "run.yaml"
    config.write_text("learning_rate: 1e-3\nblock_out_channels: [16, 32]\nuse_ema: false\nrandom_flip: true\n")
    args = parse_args(["--config", str(config)])
    assert args.learning_rate == 1e-3 and args.block_out_channels == [16, 32]  # YAML reads 1e-3 as a string
    assert args.use_ema is False and args.random_flip is True
    assert parse_args(["--config", str(config), "--use_ema"]).use_ema is True


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"block_out_channel": [16, 32]}', "'block_out_channel' .did you mean 'block_out_channels'"),
        ('{"in_channels": 3,}', "is not valid JSON"),
        ("[16, 32]", "must hold a JSON object"),
        ('{"norm_num_groups": "8"}', "cannot be built from --model_config"),
    ],
)
def test_model_config_mistakes_are_clear_errors(tmp_path, module, content, message):
    config = tmp_path / "model.json"
    config.write_text(content)
    with pytest.raises(ValueError, match=message):
        train(tmp_path / "out", "--model_config", str(config), "--max_train_steps", "1", module=module)
    assert not (tmp_path / "out").exists()


def test_a_multi_process_request_that_runs_one_process_is_reported(tmp_path):
    """`accelerate launch --num_processes 2` without --multi_gpu starts one process: the script says so."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "training" / "train.py"),
        *TINY_ARGS, "--max_train_steps", "1", "--output_dir", str(tmp_path / "out"),
    ]  # fmt: skip
    env = {**os.environ, "MASTER_PORT": str(_free_port())}
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "asked for 2 processes but started 1" in run.stderr and "--multi_gpu" in run.stderr


def test_requested_processes_reads_the_launcher_config_file(tmp_path, module):
    config = tmp_path / "accelerate.yaml"
    config.write_text("num_processes: 4\n")
    launcher = subprocess.Popen(  # a stand-in whose command line reads like `accelerate launch --config_file ...`
        [sys.executable, "-c", "import time; time.sleep(60)", "accelerate", "launch", "--config_file", str(config)]
    )
    try:
        deadline = time.monotonic() + 30  # until the child has exec'd: before that /proc shows pytest's command line
        while b"launch" not in Path(f"/proc/{launcher.pid}/cmdline").read_bytes() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert requested_processes(launcher.pid) == 4
        assert "asked for 4 processes but started 1" in warn_if_fewer_processes(1, launcher.pid)
        assert warn_if_fewer_processes(4, launcher.pid) is None
    finally:
        launcher.kill()
        launcher.wait()
    assert requested_processes(os.getpid()) is None  # pytest is not a launcher


def test_long_waits_have_a_bar_and_odd_settings_a_warning(tmp_path, module, caplog, capsys):
    with caplog.at_level("WARNING"):
        train(tmp_path / "out", "--max_train_steps", "3", "--lr_warmup_steps", "5", module=module)
    assert "--lr_warmup_steps 5 is not shorter than --max_train_steps 3" in caplog.text
    err = capsys.readouterr().err
    assert "training" in err and "final samples" in err  # the sampling after the last step shows a bar


def test_a_data_folder_holding_training_outputs_is_refused(tmp_path, module):
    folder = _image_folder(tmp_path / "images")
    with pytest.raises(ValueError, match="lies inside --train_data_dir"):
        train(folder / "run", "--train_data_dir", str(folder), "--max_train_steps", "1", module=module)
    (folder / "old-run").mkdir()
    (folder / "old-run" / "model_index.json").write_text("{}")
    Image.new("RGB", (64, 64)).save(folder / "old-run" / "samples.png")
    with pytest.raises(ValueError, match="contains a saved pipeline"):
        train(tmp_path / "out", "--train_data_dir", str(folder), "--max_train_steps", "1", module=module)
    assert not (tmp_path / "out").exists()


def test_command_line_errors_are_one_line_with_a_hint(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--max_train_step", "3"])
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "usage:" not in error
    assert "'max_train_step' (did you mean 'max_train_steps'?)" in error and "--help" in error
    with pytest.raises(SystemExit):  # no abbreviations: --learning is not silently --learning_rate
        parse_args(["--learning", "0.1"])
    assert "unknown option(s) 'learning'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--learning_rate", "fast"])
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_model_config_may_be_inline_json_or_a_yaml_mapping(tmp_path, module, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("model_config:\n  layers_per_block: 1\nmodel_type: unet2d\n")
    args = parse_args(["--config", str(config)])
    assert json.loads(args.model_config) == {"layers_per_block": 1}
    result = train(tmp_path / "out", "--config", str(config), "--max_train_steps", "1", "--block_out_channels",
                   "16", "32", module=module)  # fmt: skip
    assert result.unet.config.layers_per_block == 1
    (tmp_path / "bad.yaml").write_text("learning_rate:\n  value: 0.1\n")
    with pytest.raises(SystemExit):
        parse_args(["--config", str(tmp_path / "bad.yaml")])
    assert "learning_rate takes a value, not a mapping; only model_config" in capsys.readouterr().err


def test_metadata_that_lists_fewer_images_is_a_warning(tmp_path, module, caplog):
    folder = _image_folder(tmp_path / "images", modes=("L",), count=6)
    (folder / "metadata.csv").write_text("file_name,caption\nimg_0.png,a\nimg_1.png,b\nimg_2.png,c\nimg_3.png,d\n")
    with caplog.at_level("WARNING"):
        train(tmp_path / "out", "--train_data_dir", str(folder), "--max_train_steps", "1", "--train_batch_size", "2",
              module=module)  # fmt: skip
    assert "lists 4 image(s) but the folder holds 6" in caplog.text


def test_a_missing_local_path_as_dataset_name_is_no_such_folder(tmp_path, module):
    with pytest.raises(ValueError, match="looks like a local path, but there is no such folder"):
        train(tmp_path / "out", "--dataset_name", str(tmp_path / "my_images"), module=module)
    with pytest.raises(ValueError, match="no such folder"):
        train(tmp_path / "out", "--dataset_name", "./my_images", module=module)
    assert not (tmp_path / "out").exists()
