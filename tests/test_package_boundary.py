"""The installed package is a library: it imports no trainer, benchmark, data-set or training-only dependency,
and the library never imports its pipelines (arrows point one way: pipelines -> model -> ODE blocks -> solvers)."""

from __future__ import annotations

import ast
import graphlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARY, PIPELINES = ROOT / "diffusers_cunet", ROOT / "pipelines"
# What only the [train]/[bench] extras install, and the repository's own non-installed folders.
FORBIDDEN = {"accelerate", "datasets", "sklearn", "scipy", "yaml", "matplotlib", "tensorboard", "training",
             "benchmarks"}  # fmt: skip


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports (absolute names; relative imports resolved against the package)."""
    package = "diffusers_cunet.pipelines" if path.parent == PIPELINES else "diffusers_cunet"
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.add(base)
    return names


# Every package of the repository whose modules import each other: folder -> its import name.
PACKAGES = {"diffusers_cunet": "diffusers_cunet", "pipelines": "diffusers_cunet.pipelines", "training": "training",
            "evaluation": "evaluation", "benchmarks": "benchmarks"}  # fmt: skip


def is_command_line_block(node: ast.AST) -> bool:
    """`if __name__ == "__main__":`: code that runs only when the module is the program, never on import."""
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and isinstance(test, ast.Compare) and getattr(test.left, "id", "") == "__name__"


def import_graph() -> dict[str, set[str]]:
    """Each repository module -> the repository modules it imports, at the top or inside a function alike (a lazy
    import is still an arrow), but not in its command-line block."""
    modules = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            name = ".".join((package, *path.relative_to(ROOT / folder).with_suffix("").parts))
            modules[name.removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        arrows: set[str] = set()
        pending = [ast.parse(path.read_text())]
        while pending:
            for node in ast.iter_child_nodes(pending.pop()):
                if is_command_line_block(node):
                    continue
                if isinstance(node, ast.Import):
                    targets = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    base = node.module or ""
                    if node.level:
                        parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                        base = f"{parent}.{base}" if base else parent
                    targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
                else:
                    pending.append(node)
                    continue
                for target in targets:  # `from a.b import c`: the module a.b.c where it is one, else a.b
                    while target and target not in modules:
                        target = target.rpartition(".")[0]
                    if target and target != name:
                        arrows.add(target)
        graph[name] = arrows
    return graph


def test_no_import_circle_anywhere():
    """Modules import each other one way only (a circle means neither can be read, tested or changed alone)."""
    graph = import_graph()
    assert {"benchmarks.report", "benchmarks.fashion", "training.loop"} <= set(graph)  # the walk found the modules
    assert "benchmarks.fashion" in graph["benchmarks.report"]  # ... and their arrows, lazy or not
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as error:
        raise AssertionError(f"import circle: {' -> '.join(error.args[1])}") from None


def test_the_package_imports_nothing_of_training_or_benchmarks():
    for path in [*LIBRARY.glob("*.py"), *PIPELINES.glob("*.py")]:
        top_level = {name.split(".")[0] for name in imported_modules(path)}
        assert not top_level & FORBIDDEN, f"{path.relative_to(ROOT)} imports {sorted(top_level & FORBIDDEN)}"


def test_the_library_never_imports_its_pipelines():
    for path in LIBRARY.glob("*.py"):
        assert not any(name.startswith("diffusers_cunet.pipelines") for name in imported_modules(path)), path.name


def test_pipelines_run_without_the_training_dependencies(tmp_path):
    """Sampling and denoising (with PSNR/SSIM) in a fresh interpreter where datasets and scikit-learn cannot be
    imported, as for a user who installed the package without extras."""
    for name in ("datasets", "sklearn"):
        (tmp_path / f"{name}.py").write_text(f"raise ImportError('{name} is not installed')\n")
    script = textwrap.dedent(
        """
        import sys, torch
        from diffusers import DDIMScheduler
        from diffusers_cunet import ContinuousUNet2DModel
        from diffusers_cunet.pipelines import ContinuousUNetDenoisePipeline, ContinuousUNetPipeline
        unet = ContinuousUNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32),
                                     attention_levels=(False, True), norm_num_groups=8, attention_head_dim=8)
        pipe = ContinuousUNetPipeline(unet=unet, scheduler=DDIMScheduler())
        images = pipe(batch_size=2, num_inference_steps=2, output_type="pt").images
        denoise = ContinuousUNetDenoisePipeline(unet=unet, scheduler=DDIMScheduler())
        out = denoise(images * 2 - 1, noise_std=0.1, num_inference_steps=2, clean_images=images * 2 - 1)
        assert out.psnr > 0
        loaded = sorted(m for m in ("datasets", "sklearn", "training", "benchmarks") if m in sys.modules)
        print("loaded:", loaded)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "loaded: []" in run.stdout
