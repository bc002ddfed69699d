"""benchmarks.parallel: a benchmark's models trained side by side, one process each, merged into one results file
(its own file, so the test runner can put these multi-process tests beside the rest of the benchmark tests)."""

from __future__ import annotations

import re

import pytest


@pytest.mark.slow
def test_parallel_starts_timed_runs_after_their_sources(tmp_path):
    """benchmarks.parallel's own smoke test: the equal-time model starts once the model it is timed from that runs
    beside it (unet2d-x1) has finished; the other (cunet-x1, not chosen) its own process trains first; the merged
    results hold each chosen model's own row."""
    from benchmarks import parallel

    merged = parallel.main(["--mode", "tiny", "--output", str(tmp_path / "out"), "--runs", str(tmp_path / "runs"),
                            "--threads", "1", "--only", "unet2d-x1", "cunet-x1-0.7t"])  # fmt: skip
    assert [run["name"] for run in merged["runs"]] == ["unet2d-x1", "cunet-x1-0.7t"]
    assert merged["unfinished"] == [] and (tmp_path / "out" / "BENCHMARKS.md").is_file()
    log = (tmp_path / "out" / "log.txt").read_text()
    assert log.index("=== training unet2d-x1") < log.index("=== training cunet-x1-0.7t")
    assert "=== training cunet-x1 (" in log.split("===== cunet-x1-0.7t")[1]  # in the equal-time model's process


@pytest.mark.slow
def test_parallel_exits_non_zero_with_the_failing_runs_error(tmp_path, monkeypatch, capsys):
    from benchmarks import parallel

    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path))  # no IDX files there: every run fails at once
    with pytest.raises(SystemExit) as stop:
        parallel.main(["--benchmark", "fashion", "--mode", "tiny", "--output", str(tmp_path / "out"),
                       "--runs", str(tmp_path / "runs"), "--threads", "1"])  # fmt: skip
    assert stop.value.code not in (0, None)
    err = capsys.readouterr().err
    assert "FAILED cunet-x1-edm: exit 1:" in err and "FAILED unet2d-x1-edm: exit 1:" in err
    assert "lacks the Fashion-MNIST file(s)" in err  # the failing run's own error line
    assert re.search(r"FAILED cunet-x1-edm-equal-time: not started: (cunet|unet2d)-x1-edm failed", err), err
