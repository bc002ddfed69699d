"""Named model configurations: the 32x32 RGB default (CIFAR-10 size), a small 16x16 grey one (digits size) and
a small 32x32 grey one (Fashion-MNIST).

The CIFAR-10 preset is sized against diffusers' `UNet2DModel` with `google/ddpm-cifar10-32`'s config
(35.7 M parameters, 12.1 GFLOPs per call): it must stay within 25% of the parameters and 30% of the FLOPs
(checked by the tests; `python -m benchmarks.cost` prints both side by side). Every preset samples with the
constructor's default solver (one Euler step per ODE block), so none names it.
"""

from __future__ import annotations

from typing import Any

from .unet_continuous_2d import ContinuousUNet2DModel

PRESETS: dict[str, dict[str, Any]] = {
    "cifar10-32": dict(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(64, 128, 256),
        attention_levels=(False, True, False),
        mid_attention=True,
        norm_num_groups=32,
    ),
    "digits-16": dict(
        sample_size=16,
        in_channels=1,
        out_channels=1,
        block_out_channels=(32, 64, 128),
        attention_levels=(False, False, True),
        mid_attention=True,
        norm_num_groups=8,
    ),
}
# Fashion-MNIST's 28x28 padded to 32x32 (training/configs/fashion-mnist.yaml): the digits model, one level more of
# pixels
PRESETS["fashion-32"] = {**PRESETS["digits-16"], "sample_size": 32}


DEFAULT_PRESET = "digits-16"  # the trainer's architecture when none is named


def preset_config(name: str, **overrides: Any) -> dict[str, Any]:
    """The constructor arguments of a named preset, with `overrides` applied."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; expected one of {sorted(PRESETS)}.")
    return {**PRESETS[name], **overrides}


def from_preset(name: str, **overrides: Any) -> ContinuousUNet2DModel:
    """A freshly initialised `ContinuousUNet2DModel` from a named preset, e.g. `from_preset("cifar10-32")`."""
    return ContinuousUNet2DModel(**preset_config(name, **overrides))
