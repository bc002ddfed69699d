"""Smoke test of the benchmark code: tiny models, seconds, everything written where it should be."""

from __future__ import annotations

import json

from benchmarks.__main__ import main


def test_tiny_benchmark_writes_results_report_and_plots(tmp_path):
    results, report = tmp_path / "results", tmp_path / "BENCHMARKS.md"
    main(["--mode", "tiny", "--results", str(results), "--report", str(report), "--runs", str(tmp_path / "runs")])
    cost = json.loads((results / "cost.json").read_text())
    ratio = cost["sizes"]["digits-16"]["ratio"]
    assert 0 < ratio["params"] < 1 and 0 < ratio["gflops_per_call"] < 1
    quality = json.loads((results / "quality.json").read_text())
    assert {r["model_type"] for r in quality["runs"]} == {"cunet", "unet2d"}
    for run in quality["runs"]:
        assert len(run["curve"]) == 2 and run["final"]["frechet_distance"] > 0
        assert run["denoise_digits"][0]["psnr"] > 0
        assert run["held_out_error"] > 0  # the EMA model's denoising error on the 300 held-out digits
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
    from benchmarks import gpu, report

    output = tmp_path / "gpu.json"
    result = gpu.main(["--mode", "tiny", "--output", str(output), "--compile-modes"])
    saved = json.loads(output.read_text())
    assert "errors" not in saved and saved["graph_breaks"]["cunet"] == {"graphs": 1, "graph_breaks": 0}
    assert {(r["precision"], r["batch"]) for r in result["forward"]} >= {("fp32", 1), ("fp32", 4), ("bf16", 4)}
    assert all(r["ratio"] > 0 for r in result["forward"] + result["sampling"])
    assert [(r["method"], r["steps"]) for r in result["solver_sweep"]] == list(gpu.SOLVER_SWEEP)
    assert all(r["throughput_ratio"] > 0 for r in result["training"])
    text = "\n".join(report.gpu_section(saved))
    assert "| fp32 | 4 | eager |" in text and "Fastest bf16 forward" in text and "| euler x2 | 14 |" in text


def test_benchmarks_write_outside_the_tracked_results_unless_asked(tmp_path, monkeypatch):
    from benchmarks import cost, paths

    tracked = paths.PUBLISHED_RESULTS / "cost.json"
    before = tracked.read_bytes()
    monkeypatch.setattr(paths, "OUTPUT", tmp_path / "outputs")
    cost.main(["--no-latency"])
    assert json.loads((tmp_path / "outputs" / "results" / "cost.json").read_text())["sizes"]
    assert tracked.read_bytes() == before
    assert paths.results_dir(publish=True) == tracked.parent and paths.report_path(True).name == "BENCHMARKS.md"
