"""`modeling_cunet.py`: the model as one generated file in every saved folder, loadable with no install."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch
from conftest import lay_out_hub_cache, make_tiny
from diffusers import AutoModel, DDIMScheduler, DDPMPipeline
from without_package import run_without_the_package

from diffusers_cunet.hub_code import MODEL_CODE_FILE
from diffusers_cunet.remote_code import model_code

SETTINGS = [
    {},
    {"solver_method": "midpoint", "solver_steps": 3},
    {"solver_method": "rk4", "solver_steps": 1},
    {"solver_method": "dopri5", "solver_rtol": 1e-3, "solver_atol": 1e-3},
    {"solver_method": "rk4", "solver_steps": 1, "solver_adjoint": True},
    {"ode_order": "second"},
    {"preconditioning": {"type": "edm"}},
    {"preconditioning": {"type": "edm-fdm", "momentum": 0.5}},
    {"num_class_embeds": 4},
]


@pytest.fixture(scope="module")
def generated_module(tmp_path_factory):
    path = tmp_path_factory.mktemp("code") / MODEL_CODE_FILE
    path.write_text(model_code())
    spec = importlib.util.spec_from_file_location("generated_modeling_cunet", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()) or "default")
def test_the_generated_class_gives_the_packages_outputs(generated_module, settings):
    model = make_tiny(**settings)
    copy = generated_module.ContinuousUNet2DModel(**dict(model.config)).eval()
    copy.load_state_dict(model.state_dict())
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 3, 8, 8, generator=generator)
    preconditioned = "preconditioning" in settings
    timestep = torch.tensor([-1.5, 0.7]) if preconditioned else torch.tensor([10, 700])  # c_noise or integer t
    labels = torch.tensor([1, 3]) if "num_class_embeds" in settings else None
    with torch.no_grad():
        expected = model(sample, timestep, class_labels=labels).sample
        actual = copy(sample, timestep, class_labels=labels).sample
    assert torch.equal(actual, expected)


def test_saved_folders_load_by_automodel_with_remote_code_and_resave(tmp_path):
    model = make_tiny(num_class_embeds=3)
    model.save_pretrained(tmp_path / "a")
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["auto_map"] == {"AutoModel": "modeling_cunet.ContinuousUNet2DModel"}
    assert (tmp_path / "a" / MODEL_CODE_FILE).read_text() == model_code()
    with pytest.raises(ValueError, match="contains custom code. Pass `trust_remote_code=True`"):
        AutoModel.from_pretrained(str(tmp_path / "a"))  # diffusers' own refusal, nothing of ours runs
    loaded = AutoModel.from_pretrained(str(tmp_path / "a"), trust_remote_code=True).eval()
    assert type(loaded).__module__.endswith("modeling_cunet")
    sample, t, labels = torch.randn(1, 3, 8, 8), torch.tensor([99]), torch.tensor([2])
    with torch.no_grad():
        actual, expected = loaded(sample, t, class_labels=labels).sample, model(sample, t, class_labels=labels).sample
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)  # diffusers' loading path: float rounding
    loaded.save_pretrained(tmp_path / "b")  # the remote class ships the file it was loaded from
    assert (tmp_path / "b" / MODEL_CODE_FILE).read_text() == model_code()
    assert AutoModel.from_pretrained(str(tmp_path / "b"), trust_remote_code=True).config.num_class_embeds == 3


def test_a_pipeline_folder_ships_the_code_with_its_model(tmp_path):
    DDPMPipeline(unet=make_tiny(), scheduler=DDIMScheduler()).save_pretrained(tmp_path)
    assert (tmp_path / "unet" / MODEL_CODE_FILE).is_file()


NO_INSTALL_SCRIPT = """
import json, sys, torch
from diffusers import AutoModel
unet = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
sample = torch.load(sys.argv[2])
with torch.no_grad():
    print(json.dumps(unet(sample, torch.tensor([10, 500])).sample.tolist()))
"""


def test_automodel_loads_from_an_offline_hub_cache_without_the_package(tmp_path):
    model = make_tiny()
    cache = tmp_path / "hf" / "hub"
    lay_out_hub_cache(cache, "org/cunet-cifar10", DDPMPipeline(unet=model, scheduler=DDIMScheduler()))
    snapshot = next((cache / "models--org--cunet-cifar10" / "snapshots").iterdir())
    sample = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.save(sample, tmp_path / "sample.pt")
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    [actual] = run_without_the_package(NO_INSTALL_SCRIPT, str(snapshot / "unet"), str(tmp_path / "sample.pt"),
                                       cwd=tmp_path, env=env, timeout=300)  # fmt: skip
    with torch.no_grad():
        expected = model(sample, torch.tensor([10, 500])).sample
    torch.testing.assert_close(torch.tensor(actual), expected, rtol=0, atol=1e-6)


def _top_level_names(module: str) -> list[tuple[str, str]]:
    """(name, where it comes from) for each name a module binds at top level: 'def' for its own definitions,
    the source module for imports (relative imports are dropped by the generator and bind nothing there)."""
    import ast

    from diffusers_cunet import remote_code

    bound = []
    for node in ast.parse(remote_code._module_path(module).read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.append((node.name, "def"))
        elif isinstance(node, ast.Assign):
            bound += [(t.id, "def") for t in node.targets if isinstance(t, ast.Name) and t.id != "__all__"]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            bound.append((node.target.id, "def"))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module != "__future__":
            bound += [(alias.asname or alias.name, node.module) for alias in node.names]
        elif isinstance(node, ast.Import):
            bound += [((alias.asname or alias.name).split(".")[0], alias.name) for alias in node.names]
    return bound


@pytest.mark.parametrize("files", ["MODEL_MODULES", "PIPELINE_MODULES"])
def test_the_concatenated_modules_stay_safe_to_concatenate(files):
    """The rule the generated code files depend on (diffusers_cunet.remote_code): the package's own modules import
    each other only as `from .x import name` (dropped when concatenated), and no two of them bind one name to two
    things (a later definition would silently replace an earlier one in the generated file)."""
    import ast

    from diffusers_cunet import remote_code

    modules = getattr(remote_code, files)
    seen: dict[str, tuple[str, str]] = {}
    for module in modules:
        tree = ast.parse(remote_code._module_path(module).read_text())
        absolute = [n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.level == 0 and
                    n.module and n.module.startswith("diffusers_cunet")]  # fmt: skip
        assert absolute == [], f"{module} imports {absolute} by absolute name: use `from .x import name`"
        for name, source in _top_level_names(module):
            if name in seen and (source == "def" or seen[name][1] == "def" or seen[name][1] != source):
                raise AssertionError(f"{name!r} is bound in {seen[name][0]} ({seen[name][1]}) and {module} ({source})")
            seen.setdefault(name, (module, source))
