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
    text = report.read_text()
    assert "| parameters |" in text and "Fréchet" in text and "Pareto frontier" in text
    for png in ("quality_curves.png", "frontier.png"):
        assert (results / png).stat().st_size > 1000
