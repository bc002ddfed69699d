"""The package and its top-level `pipelines/` folder import as `diffusers_cunet.pipelines` when installed
normally (a wheel) as well as in editable mode (how `make test` installs it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROBE = (
    "import diffusers_cunet, diffusers_cunet.pipelines;"
    "print(diffusers_cunet.__file__); print(diffusers_cunet.pipelines.__file__)"
)


def _import_paths(cwd: Path, pythonpath: str | None = None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=cwd, env=env, capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_installed_package_imports_from_any_directory(tmp_path):
    package, pipelines = _import_paths(tmp_path)
    assert Path(pipelines).parent.name in ("pipelines",)
    assert Path(package).parent.name == "diffusers_cunet"


@pytest.mark.slow
def test_wheel_install_contains_the_pipelines_package(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("diffusers_cunet-*.whl")
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )
    package, pipelines = _import_paths(tmp_path, pythonpath=str(site))
    assert Path(package).is_relative_to(site) and Path(pipelines).is_relative_to(site)
    assert Path(pipelines) == site / "diffusers_cunet" / "pipelines" / "__init__.py"
