"""Numerics of the neural-ODE blocks: order of accuracy, gradcheck, adjoint vs direct gradients."""

from __future__ import annotations

import math

import pytest
import torch

from diffusers_cunet.ode_blocks import ODEBlock
from diffusers_cunet.solvers import FIXED_STEP_ORDERS, SolverConfig


def make_block(order: str = "first", channels: int = 4, temb: int = 8, seed: int = 0) -> ODEBlock:
    torch.manual_seed(seed)
    block = ODEBlock(channels, temb, order=order, norm_num_groups=2).double()
    with torch.no_grad():  # a non-trivial vector field: the zero-initialised output conv gets real weights
        block.dynamics.conv2.weight.normal_(0, 0.3)
        block.dynamics.conv2.bias.normal_(0, 0.3)
    return block


def inputs(channels: int = 4, size: int = 4, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, channels, size, size, generator=generator, dtype=torch.float64)
    temb = torch.randn(2, 8, generator=generator, dtype=torch.float64)
    return x, temb


@pytest.mark.parametrize("method", sorted(FIXED_STEP_ORDERS))
@pytest.mark.parametrize("order", ["first", "second"])
def test_fixed_step_solvers_converge_at_their_order(method, order):
    block = make_block(order)
    x, temb = inputs()
    with torch.no_grad():
        exact = block(x, temb, SolverConfig("rk4", 512))
        errors = [(block(x, temb, SolverConfig(method, n)) - exact).abs().max().item() for n in (4, 8, 16)]
    observed = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    expected = FIXED_STEP_ORDERS[method]
    assert errors[-1] < errors[0]
    assert abs(observed[-1] - expected) < 0.4, (errors, observed)


def test_adaptive_solver_meets_its_tolerance():
    block = make_block()
    x, temb = inputs()
    with torch.no_grad():
        exact = block(x, temb, SolverConfig("rk4", 512))
        loose = block(x, temb, SolverConfig("dopri5", rtol=1e-3, atol=1e-4))
        tight = block(x, temb, SolverConfig("dopri5", rtol=1e-8, atol=1e-9))
    assert (tight - exact).abs().max() < 1e-6
    assert (tight - exact).abs().max() < (loose - exact).abs().max() + 1e-12


@pytest.mark.parametrize("order", ["first", "second"])
def test_gradcheck(order):
    block = make_block(order, channels=2)
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(1, 2, 3, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    temb = torch.randn(1, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    solver = SolverConfig("rk4", 2)
    assert torch.autograd.gradcheck(lambda a, b: block(a, b, solver), (x, temb), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("order", ["first", "second"])
def test_adjoint_gradients_match_direct_ones(order):
    block = make_block(order)
    x, temb = inputs()
    grads = {}
    for adjoint in (False, True):
        block.zero_grad()
        a = x.clone().requires_grad_(True)
        b = temb.clone().requires_grad_(True)
        block(a, b, SolverConfig("rk4", 32, adjoint=adjoint)).pow(2).sum().backward()
        named = {n: p.grad.clone() for n, p in block.named_parameters() if p.grad is not None}
        grads[adjoint] = {"x": a.grad, "temb": b.grad, **named}
    assert grads[True].keys() == grads[False].keys()
    assert "dynamics.time_emb_proj.weight" in grads[True]  # the conditioning reaches the adjoint
    # The adjoint integrates backwards on its own grid, so it agrees up to the solver's error (O(h^4) here).
    for name, direct in grads[False].items():
        relative = (grads[True][name] - direct).abs().max() / direct.abs().max()
        assert relative < 1e-6, (name, relative.item())


def test_fresh_block_is_the_identity():
    """The vector field's last conv starts at zero, so an untrained block passes its input through."""
    torch.manual_seed(0)
    block = ODEBlock(4, 8, norm_num_groups=2).double()
    x, temb = inputs()
    torch.testing.assert_close(block(x, temb, SolverConfig()), x)


def test_solver_config_counts_evaluations():
    assert SolverConfig("rk4", 3).evaluations_per_solve == 12
    assert SolverConfig("euler", 5).evaluations_per_solve == 5
    assert SolverConfig("dopri5").evaluations_per_solve is None
    assert SolverConfig.from_options({"steps": 7}, base=SolverConfig("midpoint", 1)) == SolverConfig("midpoint", 7)
