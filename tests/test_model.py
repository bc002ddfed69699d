"""Behaviour of ContinuousUNet2DModel: shapes, outputs, conditioning, solver settings, training features."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_CONFIG, make_tiny

from diffusers_cunet import ContinuousUNet2DModel, ContinuousUNet2DOutput, SolverConfig


def test_output_shape_and_type(tiny_model, tiny_inputs):
    sample, t = tiny_inputs
    out = tiny_model(sample, t)
    assert isinstance(out, ContinuousUNet2DOutput)
    assert out.sample.shape == sample.shape
    assert torch.isfinite(out.sample).all()


def test_out_channels_may_differ_from_in_channels():
    model = make_tiny(out_channels=6)
    assert model(torch.randn(1, 3, 8, 8), 3).sample.shape == (1, 6, 8, 8)


def test_dict_and_tuple_outputs_match(tiny_model, tiny_inputs):
    sample, t = tiny_inputs
    with torch.no_grad():
        as_dict = tiny_model(sample, t).sample
        (as_tuple,) = tiny_model(sample, t, return_dict=False)
    torch.testing.assert_close(as_dict, as_tuple, rtol=0, atol=0)


def test_deterministic(tiny_model, tiny_inputs):
    sample, t = tiny_inputs
    with torch.no_grad():
        torch.testing.assert_close(tiny_model(sample, t).sample, tiny_model(sample, t).sample, rtol=0, atol=0)


def test_output_does_not_depend_on_batch_companions(tiny_model, tiny_inputs):
    sample, t = tiny_inputs
    with torch.no_grad():
        both = tiny_model(sample, t).sample
        first = tiny_model(sample[:1], t[:1]).sample
    torch.testing.assert_close(both[:1], first, rtol=1e-5, atol=1e-5)


def test_config_attribute_access(tiny_model):
    assert tiny_model.config.sample_size == 8
    assert tiny_model.config.in_channels == 3
    assert tiny_model.config.out_channels == 3
    assert tuple(tiny_model.config.block_out_channels) == (16, 32)
    assert tiny_model.config.solver_method == "euler"
    with pytest.raises(AttributeError):
        tiny_model.config.no_such_setting  # noqa: B018


def test_timestep_conditions_the_output(tiny_model, tiny_inputs):
    sample, _ = tiny_inputs
    with torch.no_grad():
        early = tiny_model(sample, 10).sample
        late = tiny_model(sample, 900).sample
    assert (early - late).abs().max() > 1e-3


def test_timestep_reaches_every_ode_block(tiny_model, tiny_inputs):
    """The released cUNet code forgets the time embedding inside its ODE functions; ours must not."""
    sample, _ = tiny_inputs
    blocks = [*tiny_model.down_blocks, tiny_model.mid_block, *tiny_model.up_blocks]
    for block in blocks:
        outputs = []
        for t in (10, 900):
            emb = tiny_model.time_embedding(tiny_model.time_proj(torch.tensor([t])))
            channels = block.dynamics.conv2.out_channels
            x = torch.randn(1, channels, 4, 4, generator=torch.Generator().manual_seed(0))
            outputs.append(block(x, emb, tiny_model.solver))
        assert (outputs[0] - outputs[1]).abs().max() > 1e-4


@pytest.mark.parametrize("timestep", [7, 7.0, torch.tensor(7), torch.tensor([7]), torch.tensor([7, 7])])
def test_timestep_forms_agree(tiny_model, tiny_inputs, timestep):
    sample, _ = tiny_inputs
    with torch.no_grad():
        reference = tiny_model(sample, torch.tensor([7, 7])).sample
        torch.testing.assert_close(tiny_model(sample, timestep).sample, reference)


def test_class_conditioning():
    model = make_tiny(num_class_embeds=4)
    model.class_embedding.weight.data.normal_()
    sample = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        a = model(sample, 5, class_labels=torch.tensor([0, 0])).sample
        b = model(sample, 5, class_labels=torch.tensor([3, 3])).sample
    assert (a - b).abs().max() > 1e-4
    with pytest.raises(ValueError, match="class_labels are required"):
        model(sample, 5)
    with pytest.raises(ValueError, match="class_labels must have shape"):
        model(sample, 5, class_labels=torch.tensor([1, 2, 3]))


@pytest.mark.parametrize(
    "overrides",
    [
        {"ode_order": "second"},
        {"ode_residual": True},
        {"norm_type": "instance"},
        {"norm_type": "none"},
        {"solver_method": "rk4", "solver_steps": 1},
        {"solver_method": "dopri5"},
        {"mid_channels": 64, "block_out_channels": (16, 32, 32), "attention_levels": (False, False, True)},
    ],
)
def test_variants_run(overrides, tiny_inputs):
    model = make_tiny(**overrides)
    sample, t = tiny_inputs
    out = model(sample, t).sample
    assert out.shape == sample.shape and torch.isfinite(out).all()


def test_second_order_has_initial_velocity_network():
    model = make_tiny(ode_order="second")
    assert all(block.initial_velocity is not None for block in model.down_blocks)
    assert make_tiny().down_blocks[0].initial_velocity is None


# ----------------------------------------------------------------------------- solver settings
def test_nfe_counts_match_the_solver(tiny_model, tiny_inputs):
    sample, t = tiny_inputs
    for method, steps, per_step in [("euler", 2, 1), ("midpoint", 3, 2), ("rk4", 1, 4), ("heun3", 2, 3)]:
        tiny_model.set_solver(method=method, steps=steps)
        tiny_model.ode_function_evaluations(reset=True)
        with torch.no_grad():
            tiny_model(sample, t)
        expected = per_step * steps * tiny_model.num_ode_blocks
        assert tiny_model.evaluations_per_call() == expected
        assert tiny_model.ode_function_evaluations() == expected


def test_set_solver_updates_config_and_output(tiny_model, tiny_inputs):
    sample, t = tiny_inputs
    with torch.no_grad():
        before = tiny_model(sample, t).sample
        tiny_model.set_solver(steps=1)
        after = tiny_model(sample, t).sample
    assert tiny_model.config.solver_steps == 1 and tiny_model.solver.steps == 1
    assert not torch.allclose(before, after)


def test_forward_solver_override_is_per_call(tiny_model, tiny_inputs):
    sample, t = tiny_inputs
    with torch.no_grad():
        override = tiny_model(sample, t, solver={"method": "rk4", "steps": 1}).sample
        default = tiny_model(sample, t).sample
        tiny_model.set_solver(method="rk4", steps=1)
        persistent = tiny_model(sample, t).sample
    assert tiny_model.config.solver_method == "rk4"
    torch.testing.assert_close(override, persistent)
    assert not torch.allclose(default, override)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"method": "rk5"}, "Unknown ODE solver method 'rk5'"),
        ({"step": 3}, r"Unknown ODE solver option\(s\) \['step'\]"),
        ({"steps": 0}, "positive integer"),
        ({"rtol": -1.0}, "rtol must be a positive number"),
        ({"adjoint": "yes"}, "adjoint must be a bool"),
    ],
)
def test_invalid_solver_settings_raise(tiny_model, options, message):
    with pytest.raises(ValueError, match=message):
        tiny_model.set_solver(**options)
    with pytest.raises(ValueError, match=message):
        tiny_model(torch.randn(1, 3, 8, 8), 1, solver=options)
    assert tiny_model.solver == SolverConfig("euler", 2)


def test_invalid_solver_in_constructor_raises():
    with pytest.raises(ValueError, match="Unknown ODE solver method"):
        ContinuousUNet2DModel(**{**TINY_CONFIG, "solver_method": "scipy_solver"})


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "sample, timestep, message",
    [
        (torch.randn(1, 1, 8, 8), 1, "has 1 channels but the model expects in_channels=3"),
        (torch.randn(1, 3, 6, 7), 1, "6x7 is not divisible by 2"),
        (torch.randn(3, 8, 8), 1, "must be a 4-d tensor"),
        (torch.randn(2, 3, 8, 8), torch.tensor([1, 2, 3]), r"shape \(2,\)"),
        (torch.randn(2, 3, 8, 8), torch.ones(2, 1), r"shape \(2,\)"),
        (torch.randn(1, 3, 8, 8), "5", "must be a number or a tensor"),
        (torch.randn(1, 3, 8, 8), float("nan"), "timestep must be finite"),
        (torch.full((1, 3, 8, 8), float("inf")), 1, "NaN or infinite"),
    ],
)
def test_bad_input_raises(tiny_model, sample, timestep, message):
    with pytest.raises(ValueError, match=message):
        tiny_model(sample, timestep)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"attention_levels": (True,)}, "attention_levels has 1 entries"),
        ({"norm_type": "batch"}, "Unknown norm_type 'batch'"),
        ({"ode_order": "third"}, "Unknown ode_order 'third'"),
        ({"block_out_channels": (12, 32)}, r"\[12\] are not divisible by norm_num_groups=8"),
        ({"attention_head_dim": 5}, "not divisible by attention_head_dim=5"),
    ],
)
def test_bad_architecture_raises(overrides, message):
    with pytest.raises(ValueError, match=message):
        ContinuousUNet2DModel(**{**TINY_CONFIG, **overrides})


# ----------------------------------------------------------------------------- training features
def _gradients(model, sample, t):
    model.zero_grad()
    model(sample, t).sample.pow(2).mean().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_gives_the_same_gradients(tiny_inputs):
    sample, t = tiny_inputs
    model = make_tiny().train()
    assert model._supports_gradient_checkpointing
    reference = _gradients(model, sample, t)
    model.enable_gradient_checkpointing()
    assert all(block.gradient_checkpointing for block in model.down_blocks)
    checkpointed = _gradients(model, sample, t)
    assert reference.keys() == checkpointed.keys() and len(reference) > 10
    for name in reference:
        torch.testing.assert_close(checkpointed[name], reference[name], rtol=1e-5, atol=1e-6, msg=name)


def test_every_parameter_gets_a_gradient(tiny_inputs):
    sample, t = tiny_inputs
    model = make_tiny(num_class_embeds=3).train()
    model.zero_grad()
    model(sample, t, class_labels=torch.tensor([0, 2])).sample.pow(2).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_bf16_autocast_runs(tiny_model, tiny_inputs):
    sample, t = tiny_inputs
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = tiny_model(sample, t).sample
    reference = tiny_model(sample, t).sample
    assert out.shape == sample.shape and torch.isfinite(out).all()
    assert (out.float() - reference).abs().max() < 0.1


def test_channels_last_matches(tiny_model, tiny_inputs):
    sample, t = tiny_inputs
    with torch.no_grad():
        reference = tiny_model(sample, t).sample
        tiny_model.to(memory_format=torch.channels_last)
        out = tiny_model(sample.to(memory_format=torch.channels_last), t).sample
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_torch_compile_matches_eager(tiny_model, tiny_inputs):
    sample, t = tiny_inputs
    with torch.no_grad():
        reference = tiny_model(sample, t).sample
        compiled = torch.compile(tiny_model)
        out = compiled(sample, t).sample
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-4)


def test_cifar10_preset_stays_within_its_budget_against_ddpm_cifar10():
    """presets.py's promise: the 32x32 default has at most 25% of the parameters and 30% of the FLOPs of
    diffusers' UNet2DModel with google/ddpm-cifar10-32's configuration."""
    from diffusers_cunet.flops import count_forward_flops, count_parameters
    from diffusers_cunet.presets import from_preset
    from training.baselines import ddpm_cifar10_unet

    cunet, unet = from_preset("cifar10-32"), ddpm_cifar10_unet()
    assert count_parameters(cunet) <= 0.25 * count_parameters(unet)
    assert count_forward_flops(cunet) <= 0.30 * count_forward_flops(unet)


def test_the_default_solver_is_the_presets_one_euler_step():
    """One source for the default: the constructor, SolverConfig and every preset agree (one Euler step)."""
    from diffusers_cunet.presets import PRESETS, from_preset

    model = ContinuousUNet2DModel(sample_size=8, block_out_channels=(16, 32), attention_levels=(False, True),
                                  attention_head_dim=8, norm_num_groups=8)  # fmt: skip
    assert model.solver == SolverConfig() == SolverConfig("euler", 1)
    assert {from_preset(name).solver for name in PRESETS} == {SolverConfig("euler", 1)}
