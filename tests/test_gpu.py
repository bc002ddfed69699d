"""Checks that need a CUDA device (skipped elsewhere; CI never has one): the forward pass makes no host
synchronisation, CUDA-graph replay and the pipelines on it give the eager results, the fixed-grid path agrees
with torchdiffeq on the device."""

from __future__ import annotations

import pytest
import torch
from conftest import perturb_zero_init
from diffusers import DDIMScheduler

from diffusers_cunet.acceleration import CUDAGraphedModel
from diffusers_cunet.noise_schedule import make_noise_scheduler
from diffusers_cunet.pipelines import ContinuousUNetPipeline
from diffusers_cunet.presets import from_preset
from diffusers_cunet.solvers import SolverConfig

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def model():
    torch.manual_seed(0)
    return perturb_zero_init(from_preset("digits-16")).cuda().eval()


def cuda_inputs(batch: int = 4):
    generator = torch.Generator().manual_seed(1)
    sample = torch.randn(batch, 1, 16, 16, generator=generator).cuda()
    return sample, torch.randint(0, 1000, (batch,), generator=generator).cuda()


@pytest.mark.parametrize("method,steps", [("euler", 2), ("rk4", 1), ("heun3", 3)])
def test_forward_never_synchronises(model, method, steps):
    sample, t = cuda_inputs()
    model.set_solver(method=method, steps=steps)
    with torch.no_grad():
        model(sample, t)  # warm-up (cuDNN, allocator)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            model(sample, t)
        finally:
            torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("method", ["euler", "midpoint", "heun2", "heun3", "rk4"])
def test_fixed_grid_matches_torchdiffeq_on_cuda(model, method):
    sample, t = cuda_inputs()
    with torch.no_grad():
        fast = model(sample, t, solver={"method": method, "steps": 3}).sample
        block = model.down_blocks[0]
        # the same block through torchdiffeq (the adjoint path routes there; forward values are the plain solve)
        x = model.conv_in(sample)
        emb = model.time_embedding(model.time_proj(t))
        direct = block(x, emb, SolverConfig(method, 3))
        reference = block._solve_with_torchdiffeq(x, block.dynamics.conditioning(emb), SolverConfig(method, 3))
    torch.testing.assert_close(direct, reference, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(fast).all()


def test_graphed_model_matches_eager(model):
    sample, t = cuda_inputs()
    graphed = CUDAGraphedModel(model)
    with torch.no_grad():
        eager = model(sample, t).sample
        first = graphed(sample, t).sample
        other_sample, other_t = cuda_inputs()
        again = graphed(other_sample * 0.5, other_t.flip(0)).sample
        expected_again = model(other_sample * 0.5, other_t.flip(0)).sample
    torch.testing.assert_close(first, eager, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again, expected_again, atol=1e-5, rtol=1e-5)
    assert len(graphed._graphs) == 1  # one graph serves every call of the same signature


def test_pipeline_on_graphed_model_gives_eager_images(model):
    def images(unet):
        pipe = ContinuousUNetPipeline(unet=unet, scheduler=DDIMScheduler.from_config(make_noise_scheduler().config))
        pipe.set_progress_bar_config(disable=True)
        out = pipe(
            batch_size=4, num_inference_steps=5, generator=torch.Generator("cuda").manual_seed(0), output_type="pt"
        )
        return out.images, out.ode_evaluations

    eager, eager_count = images(model)
    graphed, graphed_count = images(CUDAGraphedModel(model))
    torch.testing.assert_close(graphed, eager, atol=1e-4, rtol=1e-4)
    assert graphed_count == eager_count == 5 * model.evaluations_per_call()
