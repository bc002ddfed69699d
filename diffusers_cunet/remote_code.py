"""The model and the pipeline as self-contained files, shipped in every saved folder: `modeling_cunet.py` (the
model, with every saved model folder) and `pipeline_cunet.py` (`ContinuousUNetPipeline`, with folders saved as one).

diffusers loads a class from a repository's own code file (`AutoModel.from_pretrained(folder,
trust_remote_code=True)` through `auto_map` in `config.json`; `DiffusionPipeline.from_pretrained(repo,
trust_remote_code=True)` through `model_index.json`), but it fetches only that one file: it must hold everything
the class needs and import nothing but torch, torchdiffeq, diffusers and their own dependencies. The files are
generated from the package's modules, never kept by hand: the modules a class is made of are concatenated in
dependency order, without their docstrings, `__all__` and relative imports (tests check that the generated classes
give the package's outputs).

`python -m diffusers_cunet.pipelines.code_files FOLDER` writes (or refreshes) them in a saved folder.

The rule this depends on, checked by `tests/test_remote_code.py` for both lists below: a module of the package
imports another only as `from .x import name` (dropped here, the name then comes from the earlier module's text),
never by absolute name, and no two of the concatenated modules bind one top-level name to different things.
A new module a class needs is added to its list after the modules it imports.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# The modules each file is made of, each after the ones it imports ("pipelines." = diffusers_cunet.pipelines).
MODEL_MODULES = (
    "atomic_write", "hub_code", "class_names", "feature_cache", "fixed_grid", "solvers", "ode_blocks",
    "preconditioning", "guidance", "model_loading", "unet_continuous_2d",
)  # fmt: skip
PIPELINE_MODULES = (
    "atomic_write", "hub_code", "class_names", "feature_cache", "fixed_grid", "guidance", "solvers", "step_schedule",
    "preconditioning", "pipelines.scheduler_support", "pipelines.objective_bridge", "pipelines.sampling_loop",
    "pipelines.pipeline_utils", "pipelines.pipeline_continuous_unet",
)  # fmt: skip


def _module_path(name: str) -> Path:
    if name.startswith("pipelines."):  # found, not imported: the library never imports its pipelines
        folder = importlib.util.find_spec("diffusers_cunet.pipelines").submodule_search_locations[0]
        return Path(folder) / f"{name.removeprefix('pipelines.')}.py"
    return PACKAGE_DIR / f"{name}.py"


def _module_body(name: str) -> str:
    """The source of module `name` less its docstring, `__future__` and relative imports, `__all__`."""
    source = _module_path(name).read_text()
    lines = source.splitlines(keepends=True)
    drop: set[int] = set()
    tree = ast.parse(source)
    for index, node in enumerate(tree.body):
        is_docstring = index == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        is_relative = isinstance(node, ast.ImportFrom) and (node.level > 0 or node.module == "__future__")
        is_all = isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets)
        if is_docstring or is_relative or is_all:
            drop.update(range(node.lineno - 1, node.end_lineno))
    return "".join(line for number, line in enumerate(lines) if number not in drop).strip() + "\n"


def _generated(modules: tuple[str, ...], title: str, usage: str) -> str:
    from . import __version__

    bodies = [f"# ---- {_module_path(name).relative_to(_module_path(name).parents[1])}\n\n{_module_body(name)}"
              for name in modules]  # fmt: skip
    text = "\n\n".join(bodies)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    header = (
        f'"""{title}, self-contained.\n\n'
        f"Generated from diffusers-cunet {__version__} (code {digest}) by diffusers_cunet.remote_code; do not edit.\n"
        f"{usage}\n"
        '"""\n\nfrom __future__ import annotations\n\n'
    )
    return header + text


@functools.cache  # the package's sources do not change while it runs
def model_code() -> str:
    """The text of `modeling_cunet.py` for this version of the package."""
    usage = (
        "Load with `AutoModel.from_pretrained(folder, trust_remote_code=True)`; needs torch, torchdiffeq, diffusers."
    )
    return _generated(MODEL_MODULES, "ContinuousUNet2DModel (the continuous U-Net of arXiv 2310.20092)", usage)


@functools.cache
def pipeline_code() -> str:
    """The text of `pipeline_cunet.py` for this version of the package."""
    usage = "Load with `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`; needs torch, diffusers."
    return _generated(PIPELINE_MODULES, "ContinuousUNetPipeline (diffusers-cunet's sampling pipeline)", usage)
