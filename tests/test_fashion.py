"""Fashion-MNIST: the IDX reader, the data set it builds, padding, the committed judge and its scores, the EDM
UNet2DModel baseline, `--score_samples` and the benchmark's tiny mode. Reads Debian's files (the set-up installs
them) and files the tests write; nothing is downloaded."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import needs_data
from PIL import Image
from training_helpers import loss_history, train

from diffusers_cunet import ContinuousUNet2DModel, PreconditionedUNet2DModel
from diffusers_cunet.pipelines import ContinuousUNetPipeline
from evaluation.distances import precision_recall
from evaluation.fashion_judge import WEIGHTS, judge_metadata, load_judge
from evaluation.fashion_scores import sample_scores
from training import fashion_mnist
from training.data import ImageTransform, load_image_dataset


def write_idx(folder: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    image_file, label_file = fashion_mnist.FILES[split]
    header = (0x803).to_bytes(4, "big") + b"".join(int(n).to_bytes(4, "big") for n in images.shape)
    (folder / image_file).write_bytes(gzip.compress(header + images.tobytes()))
    header = (0x801).to_bytes(4, "big") + len(labels).to_bytes(4, "big")
    (folder / label_file).write_bytes(gzip.compress(header + labels.tobytes()))


@pytest.fixture
def idx_folder(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("test", 5)):
        write_idx(tmp_path, split, rng.integers(0, 256, (count, 28, 28), dtype=np.uint8),
                  rng.integers(0, 10, count, dtype=np.uint8))  # fmt: skip
    return tmp_path


def test_idx_files_become_the_hubs_columns(idx_folder):
    images, labels = fashion_mnist.read_split(idx_folder, "train")
    dataset = fashion_mnist.fashion_mnist_dataset("train", idx_folder)
    assert dataset.column_names == ["image", "label"] and len(dataset) == 12
    assert dataset.features["label"].names[9] == "Ankle boot"
    assert dataset[3]["image"].mode == "L"
    np.testing.assert_array_equal(np.asarray(dataset[3]["image"]), images[3])  # PNG is lossless
    assert dataset["label"] == labels.tolist()


def test_named_folder_and_variable(idx_folder, tmp_path_factory, monkeypatch):
    monkeypatch.setenv(fashion_mnist.FOLDER_VARIABLE, str(idx_folder))
    assert load_image_dataset("fashion_mnist", split="test").num_rows == 5
    empty = tmp_path_factory.mktemp("empty")
    monkeypatch.setenv(fashion_mnist.FOLDER_VARIABLE, str(empty))
    with pytest.raises(ValueError, match="FASHION_MNIST_DIR.*lacks"):
        fashion_mnist.local_folder()
    monkeypatch.delenv(fashion_mnist.FOLDER_VARIABLE)
    with pytest.raises(ValueError, match="--fashion_mnist_dir .*lacks"):
        fashion_mnist.local_folder(empty)


def test_damaged_files_are_named(idx_folder):
    image_file = idx_folder / fashion_mnist.FILES["test"][0]
    image_file.write_bytes(image_file.read_bytes()[:-40])  # a cut-short download
    with pytest.raises(ValueError, match="t10k-images"):
        fashion_mnist.read_split(idx_folder, "test")
    label_file = idx_folder / fashion_mnist.FILES["train"][1]
    label_file.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="train-labels"):
        fashion_mnist.read_split(idx_folder, "train")
    with pytest.raises(ValueError, match="splits"):
        fashion_mnist.read_split(idx_folder, "validation")


@needs_data
def test_debian_files_are_fashion_mnist():
    images, labels = fashion_mnist.read_split(fashion_mnist.local_folder(), "test")
    assert images.shape == (10_000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * 10  # Zalando's balanced test split
    padded, _ = fashion_mnist.split_tensors("test")
    assert padded.shape == (10_000, 1, 32, 32)
    assert padded[:, :, :2].abs().max() == 0 and padded[:, :, :, -2:].abs().max() == 0


def test_pad_fit_keeps_every_pixel():
    pixels = np.random.default_rng(1).integers(0, 256, (28, 28), dtype=np.uint8)
    out = ImageTransform(32, 1, "image", fit="pad").image_to_tensor(Image.fromarray(pixels, mode="L"), 0)
    assert out.shape == (1, 32, 32)
    torch.testing.assert_close(out[0, 2:30, 2:30], torch.from_numpy(pixels / 127.5 - 1).float())
    assert (out[0, :2] == -1).all() and (out[0, :, 30:] == -1).all()  # black border
    resized = ImageTransform(32, 1, "image", fit="resize").image_to_tensor(Image.fromarray(pixels, mode="L"), 0)
    assert resized.shape == (1, 32, 32) and not torch.equal(resized, out)
    with pytest.raises(ValueError, match="fit"):
        ImageTransform(32, 1, "image", fit="stretch")


@needs_data
def test_committed_judge_is_accurate_and_small():
    assert WEIGHTS.stat().st_size <= 2_000_000
    assert judge_metadata()["test_accuracy"] >= 0.91
    images, labels = fashion_mnist.split_tensors("test")
    best, _ = load_judge().predict(images[:2000])
    assert (best == labels[:2000]).float().mean() >= 0.9
    best28, _ = load_judge().predict(images[:200, :, 2:30, 2:30])  # 28x28 input is padded the same way
    torch.testing.assert_close(best28, best[:200])


def test_damaged_judge_is_a_clear_error(tmp_path):
    bad = tmp_path / "judge.safetensors"
    bad.write_bytes(WEIGHTS.read_bytes()[:1000])
    with pytest.raises(ValueError, match="judge.safetensors"):
        load_judge(bad)
    with pytest.raises(ValueError, match="missing"):
        load_judge(tmp_path / "absent.safetensors")


def test_precision_recall_tell_fidelity_from_diversity():
    real = torch.randn(400, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    same = precision_recall(real, real.clone())
    assert same == {"precision": 1.0, "recall": 1.0}
    far = precision_recall(real, real + 100)
    assert far == {"precision": 0.0, "recall": 0.0}
    collapsed = real[:20].repeat(20, 1) + 1e-6 * torch.randn(400, 8, dtype=torch.float64)  # 20 modes of 400
    scores = precision_recall(real, collapsed)
    assert scores["precision"] == 1.0 and scores["recall"] < 0.3


@needs_data
def test_scores_rank_real_above_noise():
    judge = load_judge()
    train_images, _ = fashion_mnist.split_tensors("train")
    test_images, _ = fashion_mnist.split_tensors("test")
    real = sample_scores(judge, test_images[:1000], train_images[:500])
    blurred = torch.nn.functional.avg_pool2d(train_images[:500], 3, stride=1, padding=1)
    noise = torch.rand(500, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    worse, worst = sample_scores(judge, test_images[:1000], blurred), sample_scores(judge, test_images[:1000], noise)
    assert real["fid"] < worse["fid"] < worst["fid"]
    # uniform noise lands in one spot of feature space: inside a few real balls, but it covers nothing
    assert real["precision"] > 0.8 and real["recall"] > 0.8 and worst["recall"] < 0.05
    assert real["classes_found"] == 10 and real["confident"] > 400
    assert real["samples"] == 500 and real["real_images"] == 1000


def test_preconditioned_unet2d_round_trip(tmp_path):
    from training.baselines import unet2d_config

    model = PreconditionedUNet2DModel(**unet2d_config(16, 1, (16, 32)), preconditioning={"type": "edm-fdm"})
    assert model.preconditioning.type == "edm-fdm" and model.config.preconditioning["momentum"] == 1.0
    model.save_pretrained(tmp_path)
    loaded = PreconditionedUNet2DModel.from_pretrained(tmp_path)
    assert loaded.preconditioning == model.preconditioning
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([-0.5, 0.3])
    torch.testing.assert_close(loaded(x, t).sample, model(x, t).sample)
    assert PreconditionedUNet2DModel(**unet2d_config(16, 1, (16, 32))).preconditioning is None
    with pytest.raises(ValueError, match="Unknown preconditioning"):
        PreconditionedUNet2DModel(**unet2d_config(16, 1, (16, 32)), preconditioning={"type": "vp"})


FASHION_TINY = ["--dataset_name", "fashion_mnist", "--image_fit", "pad", "--resolution", "32",
                "--max_train_samples", "256", "--held_out_samples", "16", "--held_out_split", "test"]  # fmt: skip


@needs_data
def test_unet2d_trains_with_edm_and_loads_in_our_pipeline(tmp_path):
    # class-conditional with a null class, as the recipe: its scores are of balanced labels at guidance scale 1
    result = train(tmp_path, *FASHION_TINY, "--model_type", "unet2d", "--preconditioning", "edm",
                   "--class_column", "label", "--class_dropout_prob", "0.1",
                   "--max_train_steps", "30", "--score_samples", "40")  # fmt: skip
    history = loss_history(tmp_path)
    assert np.mean(history[-5:]) < 0.8 * np.mean(history[:3])
    assert result.held_out_error[0]["step"] == 0 and len(result.held_out_error) >= 2
    pipe = ContinuousUNetPipeline.from_pretrained(tmp_path)
    assert type(pipe.unet) is PreconditionedUNet2DModel and pipe.unet.preconditioning.type == "edm"
    assert type(pipe.scheduler).__name__ == "EDMDPMSolverMultistepScheduler"
    images = pipe(batch_size=2, num_inference_steps=3, output_type="np").images
    assert images.shape == (2, 32, 32, 1)
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    fid = next(value for key, value in metrics.items() if key.startswith("FID (40 samples vs 10000 test"))
    assert fid > metrics["FID floor (as many real training images)"] > 0
    assert metrics["garment classes among them"].endswith("of 10")
    assert metrics["samples scored"] == "labels balanced over the classes, guidance scale 1"
    assert 0 <= metrics["class accuracy (judge: the class asked for)"] <= 1


@needs_data
def test_an_unconditional_model_is_scored_on_unconditional_samples():
    from argparse import Namespace

    from diffusers_cunet.noise_schedule import make_noise_scheduler
    from diffusers_cunet.objectives import DDPMObjective
    from training.export import judge_metrics

    model = ContinuousUNet2DModel(sample_size=32, in_channels=1, out_channels=1, block_out_channels=(16, 32),
                                  attention_levels=(False, False), norm_num_groups=8)  # fmt: skip
    args = Namespace(score_samples=8, validation_inference_steps=2, seed=0, fashion_mnist_dir=None)
    metrics = judge_metrics(model.eval(), DDPMObjective(make_noise_scheduler()), args)
    assert (
        metrics["samples scored"] == "unconditional" and "class accuracy (judge: the class asked for)" not in metrics
    )
    assert (
        metrics["FID (8 samples vs 10000 test images; judge features)"]
        > metrics["FID floor (as many real training images)"]
    )


def test_score_samples_needs_fashion_mnist():
    from training.options import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--dataset_name", "digits", "--score_samples", "10"])


@needs_data
def test_benchmark_tiny_mode(tmp_path):
    from benchmarks import fashion

    results = tmp_path / "results"
    fashion.run("tiny", tmp_path / "runs", results / fashion.RESULTS_FILE)
    data = json.loads((results / fashion.RESULTS_FILE).read_text())
    runs = {run["name"]: run for run in data["runs"]}
    assert list(runs) == [v.name for v in fashion.variants("tiny")]
    assert runs["cunet-x1-edm"]["params"] < runs["unet2d-x1-edm"]["params"]
    scored = [point for point in runs["cunet-x1-edm"]["curve"] if "fid" in point]
    assert len(scored) == 2 and all(point["samples"] == 24 for point in scored)
    assert [p["sampling_steps"] for p in runs["cunet-x1-edm"]["sweep"]] == [2, 3]
    equal = runs["cunet-x1-edm-equal-time"]
    per_step = runs["cunet-x1-edm"]["train_seconds_median"] / runs["cunet-x1-edm"]["steps"]  # median step times
    assert equal["steps"] == max(1, round(runs["unet2d-x1-edm"]["train_seconds_median"] / per_step))
    assert data["judge"]["test_accuracy"] >= 0.91 and data["reference_real_vs_real"]["samples"] == 24
    text = "\n".join(fashion.report_section(data, results))
    assert "Fashion-MNIST" in text and "`cunet-x1-edm` | `unet2d-x1-edm`" in text
    assert (results / "fashion.png").stat().st_size > 0
    # started again, it keeps every finished, scored model instead of training or sampling it again
    grid = tmp_path / "runs" / "cunet-x1-edm" / "samples.png"
    stamp = grid.stat().st_mtime_ns
    again = fashion.run("tiny", tmp_path / "runs", results / fashion.RESULTS_FILE, only=["cunet-x1-edm"])
    assert {run["name"]: run["final"]["fid"] for run in again["runs"]} == {
        n: r["final"]["fid"] for n, r in runs.items()
    }
    assert grid.stat().st_mtime_ns == stamp


def test_recipe_is_the_convergence_queues_cunet_x1():
    """`make fashion` trains exactly the convergence queue's cUNet x1 (same data, model, objective, classes and
    guidance dropout, optimiser, schedule, EMA, seed and steps), so that run's scores are the recipe's: its steps are
    the run's as published, so a run the queue extends (not converged at its plan) moves the recipe with it."""
    from benchmarks import convergence
    from training.model_setup import model_arguments
    from training.options import make_config, parse_args

    root = Path(__file__).resolve().parents[1]
    recipe = parse_args(["--config", str(root / "training" / "configs" / "fashion-mnist.yaml"), "--output_dir", "x"])
    mode = convergence.MODES["cpu"]
    run = next(run for run in mode.runs if run.name == "cunet-x1")
    published = json.loads((root / "benchmarks" / "results" / "convergence.json").read_text())
    steps = next(row["planned_steps"] for row in published["runs"] if row["name"] == run.name)
    queue = make_config(**convergence.train_options(run, mode.settings, Path("runs"), steps))
    bookkeeping = {
        "config",
        "output_dir",
        "max_train_samples",
        "validation_steps",
        "num_validation_images",
        "score_samples",
        "report_to",
        "logging_steps",
        "resume_from_checkpoint",
    }  # how the queue runs it, not what it trains
    differ = {key for key in vars(recipe) if key not in bookkeeping and getattr(recipe, key) != getattr(queue, key)}
    # the queue names the preset's widths and solver explicitly; the recipe takes them from the preset
    assert differ <= {"block_out_channels", "solver_method", "solver_steps"}, differ
    models = [ContinuousUNet2DModel(**model_arguments(options, 10, 1, list(fashion_mnist.CLASS_NAMES)))
              for options in (recipe, queue)]  # fmt: skip
    same = [{k: v for k, v in model.config.items() if not k.startswith("_")} for model in models]
    assert same[0] == same[1]  # the same network (diffusers' record of which values were defaults aside)
    assert tuple(models[0].config.block_out_channels) == (32, 64, 128) and models[0].config.num_class_embeds == 11


@needs_data
def test_the_test_images_features_are_the_judges_and_computed_once_per_process():
    from evaluation.fashion_scores import judge_features, test_image_features

    first = test_image_features(100)
    expected = judge_features(load_judge(), fashion_mnist.split_tensors("test")[0][:100])
    torch.testing.assert_close(first, expected, rtol=0, atol=0)
    assert test_image_features(100) is first  # cached: every benchmark and search scores against the same tensor
    assert test_image_features(50).shape == (50, first.shape[1])
