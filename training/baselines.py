"""The diffusers `UNet2DModel` baselines we compare against, built from their configs with random weights."""

from __future__ import annotations

from typing import Any

from diffusers import UNet2DModel

# `google/ddpm-cifar10-32`'s unet/config.json (35,746,307 parameters), written out so nothing is downloaded.
DDPM_CIFAR10_CONFIG: dict[str, Any] = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    block_out_channels=(128, 256, 256, 256),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    layers_per_block=2,
    norm_eps=1e-6,
    downsample_padding=0,
    freq_shift=1,
    flip_sin_to_cos=False,
    attention_head_dim=None,
    act_fn="silu",
    norm_num_groups=32,
    center_input_sample=False,
    time_embedding_type="positional",
    mid_block_scale_factor=1,
)


def ddpm_cifar10_unet(**overrides: Any) -> UNet2DModel:
    """A randomly initialised `UNet2DModel` with the architecture of `google/ddpm-cifar10-32`."""
    return UNet2DModel(**{**DDPM_CIFAR10_CONFIG, **overrides})


def unet2d_config(
    sample_size: int,
    in_channels: int,
    block_out_channels: tuple[int, ...],
    layers_per_block: int = 2,
    norm_num_groups: int = 8,
    attention_head_dim: int = 32,
) -> dict[str, Any]:
    """A small `UNet2DModel` laid out like our cUNet presets: attention at the deepest level only."""
    levels = len(block_out_channels)
    down = tuple("AttnDownBlock2D" if i == levels - 1 else "DownBlock2D" for i in range(levels))
    up = tuple("AttnUpBlock2D" if i == 0 else "UpBlock2D" for i in range(levels))
    return dict(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=in_channels,
        block_out_channels=tuple(block_out_channels),
        down_block_types=down,
        up_block_types=up,
        layers_per_block=layers_per_block,
        norm_num_groups=norm_num_groups,
        attention_head_dim=attention_head_dim,
    )


# Baselines "of similar role" to our presets: the same widths, two residual blocks per level.
UNET2D_PRESETS: dict[str, dict[str, Any]] = {
    "digits-16": unet2d_config(16, 1, (32, 64, 128)),
    "fashion-32": unet2d_config(32, 1, (32, 64, 128)),
    "cifar10-32": dict(DDPM_CIFAR10_CONFIG),
}
