"""The model as one self-contained file, `modeling_cunet.py`, shipped in every saved model folder.

diffusers loads a model class from a repository's own code file (`AutoModel.from_pretrained(folder,
trust_remote_code=True)`, through `auto_map` in `config.json`), but it fetches only that one file: it must hold
everything the class needs and import nothing but torch, torchdiffeq and diffusers. It is generated from the
package's modules, never kept by hand: the modules the model is made of are concatenated in dependency order,
without their docstrings, `__all__` and relative imports (a test checks that the generated class gives the
package's outputs).
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

# The modules of the model, each after the ones it imports.
MODEL_MODULES = ("fixed_grid", "solvers", "ode_blocks", "preconditioning", "unet_continuous_2d")
PACKAGE_DIR = Path(__file__).resolve().parent


def _module_body(name: str) -> str:
    """The source of `diffusers_cunet/<name>.py` less its docstring, `__future__` and relative imports, `__all__`."""
    source = (PACKAGE_DIR / f"{name}.py").read_text()
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


@functools.cache  # the package's sources do not change while it runs
def model_code() -> str:
    """The text of `modeling_cunet.py` for this version of the package."""
    from . import __version__

    bodies = [f"# ---- diffusers_cunet/{name}.py\n\n{_module_body(name)}" for name in MODEL_MODULES]
    text = "\n\n".join(bodies)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    header = (
        '"""ContinuousUNet2DModel (the continuous U-Net of arXiv 2310.20092), self-contained.\n\n'
        f"Generated from diffusers-cunet {__version__} (code {digest}) by diffusers_cunet.remote_code; do not edit.\n"
        "Load with `AutoModel.from_pretrained(folder, trust_remote_code=True)`; needs torch, torchdiffeq, diffusers.\n"
        '"""\n\nfrom __future__ import annotations\n\n'
    )
    return header + text
