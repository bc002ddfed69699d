"""Smoke test of the benchmark code: tiny models, seconds, everything written where it should be."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import quality as quality_benchmark
from benchmarks.__main__ import main


def test_tiny_benchmark_writes_results_report_and_plots(tmp_path):
    results, report = tmp_path / "results", tmp_path / "BENCHMARKS.md"
    main(["--mode", "tiny", "--results", str(results), "--report", str(report), "--runs", str(tmp_path / "runs")])
    cost = json.loads((results / "cost.json").read_text())
    ratio = cost["sizes"]["digits-16"]["ratio"]
    assert 0 < ratio["params"] < 1 and 0 < ratio["gflops_per_call"] < 1
    quality = json.loads((results / "quality.json").read_text())
    runs = {r["name"]: r for r in quality["runs"]}
    assert {r["model_type"] for r in runs.values()} == {"cunet", "unet2d"}
    for run in runs.values():
        assert run["curve"][-1]["step"] == run["steps"] and run["final"]["frechet_distance"] > 0
        assert all(point["held_out_error"] > 0 for point in run["curve"])  # at every checkpoint, on held-out digits
        assert run["held_out_error"] == run["curve"][-1]["held_out_error"]
        assert (run["denoise_digits"] is not None) == run["denoise"]
    assert runs["cunet-x1"]["denoise_digits"][0]["psnr"] > 0
    # trained separately for 0.7x the UNet2DModel's seconds, at the cUNet's own measured seconds per step
    paired, cunet, unet2d = runs["cunet-x1-0.7t"], runs["cunet-x1"], runs["unet2d-x1"]
    seconds_per_step = cunet["train_seconds"] / cunet["steps"]
    assert paired["steps"] == max(1, round(0.7 * unet2d["train_seconds"] / seconds_per_step))
    # an interrupted benchmark run again: finished models are read back from their folders, not retrained
    again = quality_benchmark.run("tiny", tmp_path / "runs", tmp_path / "again.json", only=["cunet-x1"])["runs"][0]
    assert again["final"]["frechet_distance"] == cunet["final"]["frechet_distance"]
    assert again["train_seconds"] == round(cunet["train_seconds"], 1)
    assert [(p["step"], p["held_out_error"]) for p in again["curve"]] == [
        (p["step"], p["held_out_error"]) for p in cunet["curve"]
    ]
    text = report.read_text()
    assert "| parameters |" in text and "Fréchet" in text and "Pareto frontier" in text
    assert "held-out error" in text
    for png in ("quality_curves.png", "frontier.png"):
        assert (results / png).stat().st_size > 1000


def test_tiny_momentum_benchmark_writes_curves_summary_and_plot(tmp_path):
    from benchmarks import momentum, report

    results = tmp_path / "results"
    result = momentum.main(["--mode", "tiny", "--results", str(results), "--runs", str(tmp_path / "runs")])
    assert set(result["runs"]) == {"ddpm", "edm", "edm-fdm"}
    for row in result["runs"].values():
        assert [p["step"] for p in row["curve"]] == [2, 4]
        assert all(p["frechet_distance"] > 0 for p in row["curve"])
        assert all(len(sweep) == 2 for sweep in row["sweeps"].values())
        assert row["held_out_error"] > 0
    assert set(result["runs"]["edm-fdm"]["sweeps"]) == {"EDM DPM-Solver++", "EDM Euler"}
    summary = result["summary"]
    assert (
        summary["ddim_calls"] == 3
        and summary["edm_final_fd"] == result["runs"]["edm"]["curve"][-1]["frechet_distance"]
    )
    assert (results / "momentum.png").stat().st_size > 1000
    assert (results / "momentum_samples.png").stat().st_size > 1000
    text = report.write(results, tmp_path / "BENCHMARKS.md", "test").read_text()
    assert "Momentum preconditioning (EDM-FDM)" in text and "| step |" in text


def test_gpu_benchmark_runs_on_cpu_with_small_sizes(tmp_path):
    """`python -m benchmarks.gpu --mode tiny` on the CPU: every section measured, none failed, the cUNet one graph."""
    from benchmarks import gpu

    output = tmp_path / "gpu.json"
    result = gpu.main(["--mode", "tiny", "--output", str(output), "--compile-modes"])
    saved = json.loads(output.read_text())
    assert "errors" not in saved and saved["graph_breaks"]["cunet"] == {"graphs": 1, "graph_breaks": 0}
    assert {(r["precision"], r["batch"]) for r in result["forward"]} >= {("fp32", 1), ("fp32", 4), ("bf16", 4)}
    assert all(r["ratio"] > 0 for r in result["forward"] + result["sampling"])
    assert [(r["method"], r["steps"]) for r in result["solver_sweep"]] == list(gpu.SOLVER_SWEEP)
    skipping = result["block_skipping"]  # skipping the deepest blocks first, then a cached call
    assert [len(r["skipped"]) for r in skipping] == [0, 2, 4, 0] and skipping[1]["skipped"][0] == "mid_block"
    assert skipping[0]["gflops_per_call"] > skipping[1]["gflops_per_call"] > skipping[2]["gflops_per_call"]
    assert skipping[3]["cached_levels"] == 1 and skipping[3]["gflops_per_call"] < skipping[0]["gflops_per_call"]
    assert all(r["throughput_ratio"] > 0 for r in result["training"])
    text = "\n".join(gpu.gpu_section(saved))
    assert "| fp32 | 4 | eager |" in text and "Fastest bf16 forward" in text and "| euler x2 | 14 |" in text
    assert "| skipping mid_block, " in text and "reusing cached deep features" in text
    # a file stopped before its first section is reported as partial, not a crash
    partial = {key: saved[key] for key in ("device", "torch", "date", "mode", "counts")}
    assert "partial result" in "\n".join(gpu.gpu_section(partial))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_benchmark_refuses_full_sizes_without_cuda(tmp_path, capsys):
    from benchmarks import gpu

    with pytest.raises(SystemExit):
        gpu.main(["--output", str(tmp_path / "gpu.json")])
    assert "no CUDA device here" in capsys.readouterr().err and not (tmp_path / "gpu.json").exists()


@pytest.mark.parametrize("module", ["quality", "fashion", "guidance"])
def test_a_misspelt_model_name_is_an_error_that_lists_the_models(tmp_path, module):
    """`--only` with a name no model has stops before anything is trained, instead of running nothing."""
    import importlib

    benchmark = importlib.import_module(f"benchmarks.{module}")
    names = [variant.name for variant in benchmark.variants("tiny")]
    with pytest.raises(ValueError, match=r"No tiny-mode models named \['cunet-x9'\]") as raised:
        benchmark.run("tiny", tmp_path / "runs", tmp_path / "results.json", only=[names[0], "cunet-x9"])
    assert all(name in str(raised.value) for name in names)
    assert not (tmp_path / "runs").exists()


def test_benchmarks_write_outside_the_tracked_results_unless_asked(tmp_path, monkeypatch):
    from benchmarks import cost, paths

    tracked = paths.PUBLISHED_RESULTS / "cost.json"
    before = tracked.read_bytes()
    monkeypatch.setattr(paths, "OUTPUT", tmp_path / "outputs")
    cost.main(["--no-latency"])
    assert json.loads((tmp_path / "outputs" / "results" / "cost.json").read_text())["sizes"]
    assert tracked.read_bytes() == before
    assert paths.results_dir(publish=True) == tracked.parent and paths.report_path(True).name == "BENCHMARKS.md"


def _run(name, model_type, seconds, held_out, fd, sampling=0.01, curve=(), equal_time=None):
    """A quality-benchmark run as `benchmarks.frontier` reads it; `curve` holds (step, held-out, FD) points."""
    points = [{"step": step, "held_out_error": h, "frechet_distance": f} for step, h, f in curve]
    points.append({"step": 10, "held_out_error": held_out, "frechet_distance": fd})
    final = {"frechet_distance": fd, "recognisable": 0.9, "sampling_s_per_image": sampling}
    return {"name": name, "model_type": model_type, "train_seconds": seconds, "steps": 10, "held_out_error": held_out,
            "final": final, "curve": points, "equal_time": equal_time}  # fmt: skip


def test_frontier_reads_seed_spread_convergence_pairs_and_dominance():
    from benchmarks import frontier

    runs = [
        _run("cunet", "cunet", 50, 0.050, 100, curve=[(7, 0.0505, 101)]),  # moved less than the spread
        _run("cunet-s1", "cunet", 50, 0.052, 104),
        _run("unet2d", "unet2d", 100, 0.049, 99, sampling=0.02, curve=[(7, 0.060, 130)]),  # still improving
        _run("unet2d-s1", "unet2d", 100, 0.050, 101, sampling=0.02),
        _run("cunet-0.7t", "cunet", 69, 0.047, 98, equal_time=("cunet", "unet2d", 0.7)),
        _run("cunet-big", "cunet", 90, 0.040, 90),  # better, but at 0.9x the time
    ]
    spread = frontier.seed_spread(runs)
    assert spread["pairs"] == [["cunet", "cunet-s1"], ["unet2d", "unet2d-s1"]]
    assert abs(spread["held_out_error"] - 0.002) < 1e-12 and spread["frechet_distance"] == 4
    verdicts = {run["name"]: frontier.convergence(run, spread)["converged"] for run in runs}
    assert verdicts["cunet"] is True and verdicts["unet2d"] is False and verdicts["cunet-s1"] is None
    (pair,) = frontier.equal_time_pairs(runs, spread)
    assert pair["matched"]["name"] == "unet2d" and pair["as_good"] and abs(pair["time_ratio"] - 0.69) < 1e-12
    by_time = {row["unet2d"]["name"]: row for row in frontier.dominance(runs, spread, frontier.training_seconds)}
    # within the seed spread "cunet" ties the UNet2DModel (cunet-s1 does not), cheapest first; cunet-big is too slow
    assert [r["name"] for r in by_time["unet2d"]["within"]] == ["cunet", "cunet-0.7t"]
    assert by_time["unet2d"]["cheapest"]["name"] == "cunet"
    worse = [_run("cunet", "cunet", 50, 0.09, 150), _run("cunet-s1", "cunet", 50, 0.09, 151)]
    worse.append(_run("unet2d", "unet2d", 100, 0.01, 20))
    (row,) = frontier.dominance(worse, frontier.seed_spread(worse), frontier.training_seconds)
    assert row["within"] == [] and row["cheapest"] is None
    text = "\n".join(frontier.section(runs))
    assert "Equal-time pairs" in text and "| cunet-0.7t (10, 69) | unet2d (10, 100) | 0.69 |" in text
    assert "**no**" in text and "Against sampling time" in text
    assert "no cUNet is at least as good" in "\n".join(frontier.section(worse))


def test_published_report_names_every_benchmark_whichever_ran_last(tmp_path, monkeypatch):
    """Each benchmark rewrites the whole report: the published one must name all of them, not the last one run; any
    other report names the command that wrote it."""
    from benchmarks import report

    published = tmp_path / "published" / "BENCHMARKS.md"
    monkeypatch.setattr(report, "PUBLISHED_REPORT", published)
    (tmp_path / "results").mkdir()
    header = report.write(tmp_path / "results", published, "python -m benchmarks.guidance").read_text().split("\n")[2]
    assert header.startswith("Produced by `" + "; ".join(report.PUBLISH_COMMANDS) + "`")
    other = report.write(tmp_path / "results", tmp_path / "mine.md", "python -m benchmarks.guidance").read_text()
    assert other.split("\n")[2].startswith("Produced by `python -m benchmarks.guidance`")
