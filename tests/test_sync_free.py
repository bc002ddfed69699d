"""The sync-free forward pass (issue: the cUNet must be fast on a GPU): the fixed-grid integrator agrees with
torchdiffeq (values and gradients), the vector field is pure, the model compiles as one graph with eager outputs,
the GPU paths a user expects (channels_last, autocast, compiled pipelines, compiled training) give the eager
results, evaluation counts survive compilation, and unsupported combinations are refused up front."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_tiny
from diffusers import DDIMScheduler, DDPMPipeline
from torchdiffeq import odeint
from training_helpers import loss_history, train

from diffusers_cunet.acceleration import CUDAGraphedModel, check_capturable, compile_model
from diffusers_cunet.fixed_grid import TABLEAUS, integrate_fixed_grid
from diffusers_cunet.noise_schedule import make_noise_scheduler
from diffusers_cunet.ode_blocks import ODEBlock
from diffusers_cunet.pipelines import ContinuousUNetPipeline
from diffusers_cunet.solvers import SolverConfig


def nontrivial_block(order: str, seed: int = 0) -> ODEBlock:
    torch.manual_seed(seed)
    block = ODEBlock(4, 8, order=order, norm_num_groups=2)
    with torch.no_grad():
        block.dynamics.conv2.weight.normal_(0, 0.3)
        block.dynamics.conv2.bias.normal_(0, 0.3)
    return block


def block_inputs(seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, 5, 5, generator=generator), torch.randn(2, 8, generator=generator)


def torchdiffeq_solve(block: ODEBlock, x, temb, method: str, steps: int) -> torch.Tensor:
    """The block's solve written directly against torchdiffeq.odeint, as the model did before the fast path."""
    conditioning = block.dynamics.conditioning(temb)
    state = x if block.initial_velocity is None else torch.cat([x, block.initial_velocity(x)], dim=1)
    span = torch.tensor([0.0, 1.0], dtype=x.dtype)
    grid = lambda func, y0, t: torch.linspace(0.0, 1.0, steps + 1, dtype=x.dtype)
    out = odeint(lambda s, y: block.dynamics(y, conditioning), state, span, method=method,
                 options={"grid_constructor": grid})  # fmt: skip
    return out[-1][:, : x.shape[1]]


def solve_both(block: ODEBlock, method: str, steps: int, dtype: torch.dtype):
    """(output, gradients) of the fast path and of torchdiffeq, for a squared-output loss."""
    block = block.to(dtype)
    results = []
    for solve in (
        lambda x, e: block(x, e, SolverConfig(method, steps)),
        lambda x, e: torchdiffeq_solve(block, x, e, method, steps),
    ):
        block.zero_grad()
        x, temb = (t.to(dtype).requires_grad_(True) for t in block_inputs())
        out = solve(x, temb)
        out.pow(2).sum().backward()
        grads = {n: p.grad for n, p in block.named_parameters() if p.grad is not None}
        results.append((out.detach(), {"x": x.grad, "temb": temb.grad, **grads}))
    return results


@pytest.mark.parametrize("method", sorted(TABLEAUS))
@pytest.mark.parametrize("order", ["first", "second"])
def test_fixed_grid_path_matches_torchdiffeq_values_and_gradients(method, order):
    block = nontrivial_block(order)
    for steps in (1, 2, 3, 5):
        (fast, _), (reference, _) = solve_both(block, method, steps, torch.float32)
        torch.testing.assert_close(fast, reference, atol=1e-6, rtol=1e-6, msg=f"{method} x{steps}")
        # gradients in float64, where rounding cannot hide a different computation
        (_, fast_grads), (_, reference_grads) = solve_both(block, method, steps, torch.float64)
        assert fast_grads.keys() == reference_grads.keys() and "dynamics.time_emb_proj.weight" in fast_grads
        for name, expected in reference_grads.items():
            torch.testing.assert_close(
                fast_grads[name], expected, atol=1e-10, rtol=1e-10, msg=f"{name} {method} x{steps}"
            )


def test_plain_solves_skip_torchdiffeq_and_special_ones_use_it(monkeypatch):
    import diffusers_cunet.ode_blocks as ode_blocks

    calls = []
    monkeypatch.setattr(ode_blocks, "odeint", lambda *a, **k: calls.append("odeint") or torch.stack([a[1], a[1]]))
    block = nontrivial_block("first")
    x, temb = block_inputs()
    block(x, temb, SolverConfig("rk4", 2))
    assert calls == []
    block(x, temb, SolverConfig("dopri5"))
    assert calls == ["odeint"]


def test_integrator_is_exact_on_a_linear_ode():
    """dy/ds = -y: rk4 with 8 steps matches e^-1 to its O(h^4) error; Euler x n is (1 - 1/n)^n exactly."""
    y0 = torch.ones(3, dtype=torch.float64)
    assert abs(integrate_fixed_grid(lambda y: -y, y0, "rk4", 8)[0].item() - torch.e**-1) < 1e-6
    assert abs(integrate_fixed_grid(lambda y: -y, y0, "euler", 4)[0].item() - 0.75**4) < 1e-15
    with pytest.raises(ValueError, match="No fixed-grid tableau"):
        integrate_fixed_grid(lambda y: -y, y0, "dopri5", 2)


def test_vector_field_keeps_no_per_call_state():
    """Two interleaved conditionings give what each gives alone: nothing is stored on the module."""
    block = nontrivial_block("first")
    x, temb = block_inputs()
    dynamics = block.dynamics
    a, b = dynamics.conditioning(temb), dynamics.conditioning(-temb)
    alone_a = dynamics(x, a)
    dynamics(x, b)
    torch.testing.assert_close(dynamics(x, a), alone_a)
    assert not hasattr(dynamics, "scale") and not hasattr(dynamics, "shift")


@pytest.mark.slow
def test_model_compiles_as_one_graph_with_eager_outputs(tiny_inputs):
    model = make_tiny()
    sample, t = tiny_inputs
    explanation = torch._dynamo.explain(model)(sample, t)
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons
    torch._dynamo.reset()
    compiled = compile_model(model, backend="aot_eager")  # fullgraph=True: a break would raise
    with torch.no_grad():
        torch.testing.assert_close(compiled(sample, t).sample, model(sample, t).sample, atol=1e-5, rtol=1e-5)
        rk4 = {"method": "rk4", "steps": 1}
        torch.testing.assert_close(compiled(sample, t, solver=rk4).sample, model(sample, t, solver=rk4).sample)
    torch._dynamo.reset()


def test_channels_last_and_bf16_autocast_match_the_eager_fp32_outputs(tiny_inputs):
    model = make_tiny()
    sample, t = tiny_inputs
    with torch.no_grad():
        reference = model(sample, t).sample
        channels_last = model.to(memory_format=torch.channels_last)(sample.to(memory_format=torch.channels_last), t)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(sample, t).sample
    torch.testing.assert_close(channels_last.sample, reference, atol=1e-5, rtol=1e-5)
    assert low.dtype == torch.bfloat16
    # bf16 keeps ~3 significant digits: the outputs agree to a few percent of their scale
    assert (low.float() - reference).abs().max() < 0.05 * reference.abs().max()


@pytest.mark.slow
@pytest.mark.parametrize("pipeline", ["ddpm", "continuous"])
def test_pipelines_drive_a_compiled_model_and_count_its_evaluations(pipeline):
    model = make_tiny()
    scheduler = DDIMScheduler.from_config(make_noise_scheduler().config)
    cls = DDPMPipeline if pipeline == "ddpm" else ContinuousUNetPipeline
    pipe = cls(unet=model, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)

    def run():
        return pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=3, output_type="np")

    eager = run()
    torch._dynamo.reset()
    pipe.unet = torch.compile(model, fullgraph=True, backend="aot_eager")
    compiled = run()
    torch._dynamo.reset()
    assert abs(compiled.images - eager.images).max() < 1e-4
    if pipeline == "continuous":
        # the model's own counter does not run inside compiled code; the pipeline counts from the solver settings
        assert compiled.ode_evaluations == eager.ode_evaluations == 3 * model.evaluations_per_call()


def test_adaptive_solver_counts_through_the_model_counter():
    model = make_tiny(solver_method="dopri5")
    pipe = ContinuousUNetPipeline(unet=model, scheduler=DDIMScheduler.from_config(make_noise_scheduler().config))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(batch_size=1, num_inference_steps=2, output_type="np")
    assert out.ode_evaluations >= 2 * 6 * model.num_ode_blocks  # dopri5: at least one step of 6 stages per solve


@pytest.mark.parametrize(
    "settings,match",
    [({"solver_method": "dopri5"}, "adaptive 'dopri5'"), ({"solver_adjoint": True}, "adjoint")],
)
def test_whole_graph_paths_refuse_unsupported_solvers_up_front(settings, match):
    model = make_tiny(**settings)
    with pytest.raises(ValueError, match=match):
        compile_model(model)
    with pytest.raises(ValueError, match=match):
        CUDAGraphedModel(model)
    compile_model(model, fullgraph=False, backend="aot_eager")  # breaks allowed: accepted
    with pytest.raises(ValueError, match="adaptive"):
        check_capturable(make_tiny(), "CUDA-graph capture", {"method": "bosh3"})


def test_cuda_graphed_model_needs_cuda_tensors(tiny_inputs):
    sample, t = tiny_inputs
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        CUDAGraphedModel(make_tiny())(sample, t)


def test_value_checks_run_on_cpu_tensors_without_a_device_read(tiny_inputs):
    model = make_tiny()
    sample, t = tiny_inputs
    with pytest.raises(ValueError, match="NaN or infinite"):
        model(sample * float("nan"), t)
    with pytest.raises(ValueError, match="timestep must be finite"):
        model(sample, torch.tensor([float("inf"), 1.0]))
    with pytest.raises(ValueError, match="timestep must be finite"):
        model(sample, float("nan"))


@pytest.mark.slow
def test_training_with_torch_compile_trains_and_resumes_uncompiled(tmp_path):
    output = tmp_path / "run"
    result = train(output, "--max_train_steps", "4", "--checkpointing_steps", "2", "--torch_compile",
                   "--torch_compile_backend", "aot_eager", "--num_validation_images", "2")  # fmt: skip
    torch._dynamo.reset()
    assert result.global_step == 4
    assert getattr(result.unet, "_compiled_call_impl", None) is not None  # it really ran compiled
    history = loss_history(output)
    assert len(history) == 4 and all(math.isfinite(loss) for loss in history)
    # checkpoints keep the plain module's keys: an uncompiled run resumes from them
    resumed = train(
        output, "--max_train_steps", "6", "--resume_from_checkpoint", "latest", "--num_validation_images", "2"
    )
    assert resumed.global_step == 6


def test_training_refuses_torch_compile_with_an_adaptive_solver(tmp_path):
    with pytest.raises(ValueError, match="--torch_compile needs a fixed-grid ODE solver"):
        train(tmp_path / "run", "--max_train_steps", "2", "--torch_compile", "--solver_method", "dopri5")
    assert not (tmp_path / "run" / "checkpoint-1").exists()
