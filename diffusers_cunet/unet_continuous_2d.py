"""`ContinuousUNet2DModel`: the continuous U-Net (cUNet) of "The Missing U for Efficient Diffusion Models".

Folders saved by early versions name the module path `diffusers_cunet.unet_continuous_2d` in their
`model_index.json` (today's name the shipped code file, see `hub_code`), so it is a saved format: keep it.
diffusers also looks the base class `ModelMixin` up by name in this module when it loads a pipeline, which is why
it is imported here at module level.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_processor import Attention
from diffusers.models.downsampling import Downsample2D
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.upsampling import Upsample2D
from diffusers.utils import BaseOutput
from torch import nn

from .class_names import checked_id2label
from .feature_cache import DeepFeatureCache
from .guidance import check_null_class
from .hub_code import MODEL_CODE_MODULE, write_model_code
from .model_loading import check_config_file, errors_naming_the_weights
from .ode_blocks import NORM_TYPES, ODE_ORDERS, ODEBlock, make_norm
from .preconditioning import EDMPreconditioning, preconditioning_from_config
from .solvers import SolverConfig

__all__ = ["ContinuousUNet2DModel", "ContinuousUNet2DOutput", "ModelMixin"]


@dataclass
class ContinuousUNet2DOutput(BaseOutput):
    """
    Args:
        sample (`torch.Tensor` of shape `(batch_size, out_channels, height, width)`):
            The model's prediction (noise, velocity or clean sample, as it was trained).
    """

    sample: torch.Tensor


class ContinuousUNet2DModel(ModelMixin, ConfigMixin):
    r"""
    A U-Net whose levels are neural-ODE blocks (arXiv 2310.20092), with the call signature of diffusers'
    `UNet2DModel`, so `DDPMPipeline` and the diffusers schedulers drive it unchanged.

    Layout: `conv_in` -> for each level an ODE block (kept as a skip) and, except at the last level, a strided
    conv down to the next width -> a bottleneck ODE block (optionally with attention) -> for each level in reverse
    an upsampling conv, concatenation with the skip, a 1x1 merge conv and an ODE block -> norm, SiLU, `conv_out`.

    Args:
        sample_size (`int`): height and width of the images the model was built for (pipelines read it).
        in_channels (`int`): channels of the input sample.
        out_channels (`int`): channels of the prediction.
        block_out_channels (`tuple[int]`): feature channels of each level; the image is halved between levels.
        mid_channels (`int`, *optional*): channels of the bottleneck; `None` keeps the last level's width.
        attention_levels (`tuple[bool]`): per level, whether self-attention follows its ODE blocks.
        mid_attention (`bool`): self-attention in the bottleneck.
        attention_head_dim (`int`): channels per attention head.
        norm_type (`str`): `"group"`, `"instance"` or `"none"` normalisation inside the ODE blocks.
        norm_num_groups (`int`): groups of the GroupNorm layers.
        norm_eps (`float`): epsilon of the normalisation layers.
        ode_order (`str`): `"first"` (dz/ds = f) or `"second"` (d[z, v]/ds = [v, f], with an initial-velocity net).
        ode_residual (`bool`): add the state to the vector field (the released code's `out + x`).
        dropout (`float`): dropout inside the vector fields.
        solver_method (`str`): torchdiffeq method of every ODE block (see `diffusers_cunet.solvers`).
        solver_steps (`int`): equal steps on [0, 1] for fixed-grid methods.
        solver_rtol (`float`), solver_atol (`float`): tolerances of adaptive methods.
        solver_adjoint (`bool`): back-propagate through the solves with the adjoint method.
        time_embedding_dim (`int`, *optional*): width of the time embedding; `4 * block_out_channels[0]` if `None`.
        flip_sin_to_cos (`bool`), freq_shift (`int`): sinusoidal timestep features, as in `UNet2DModel`.
        num_class_embeds (`int`, *optional*): number of classes for class-conditional generation.
        null_class_label (`int`, *optional*): the class that means "no class" (the last embedding), learned by
            training with label dropout; a model that has one can be sampled with classifier-free guidance
            (`diffusers_cunet.guidance`).
        preconditioning (`dict`, *optional*): the EDM-style preconditioning the weights were trained with, e.g.
            `{"type": "edm-fdm", "sigma_data": 0.5, "momentum": 1.0}` (see `diffusers_cunet.preconditioning`);
            `None` for a DDPM-style model that predicts noise / velocity / the clean sample at integer timesteps.
            It does not change `forward`, which stays the raw network F; samplers and the training loss read it.
        id2label (`dict`, *optional*): the class names of a class-conditional model, by class index (the null
            class aside); the pipelines then take `class_labels` as names too.
    """

    _supports_gradient_checkpointing = True
    _skip_layerwise_casting_patterns = ["norm"]

    @register_to_config
    def __init__(
        self,
        sample_size: int = 32,
        in_channels: int = 3,
        out_channels: int = 3,
        block_out_channels: tuple[int, ...] = (64, 128, 256),
        mid_channels: int | None = None,
        attention_levels: tuple[bool, ...] = (False, True, False),
        mid_attention: bool = True,
        attention_head_dim: int = 32,
        norm_type: str = "group",
        norm_num_groups: int = 32,
        norm_eps: float = 1e-6,
        ode_order: str = "first",
        ode_residual: bool = False,
        dropout: float = 0.0,
        solver_method: str = "euler",
        solver_steps: int = 1,
        solver_rtol: float = 1e-3,
        solver_atol: float = 1e-4,
        solver_adjoint: bool = False,
        time_embedding_dim: int | None = None,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        num_class_embeds: int | None = None,
        null_class_label: int | None = None,
        preconditioning: dict[str, Any] | None = None,
        id2label: dict[str, str] | None = None,
    ):
        super().__init__()
        # A pipeline records `instance.__module__` as this component's library in model_index.json. The package's
        # class is recorded as the library `diffusers_cunet` (entered in diffusers' table of libraries on import);
        # the class of the shipped code file names that file, so a folder re-saved from it loads as it was loaded
        # (see diffusers_cunet.hub_code).
        if not __name__.startswith("diffusers_cunet."):
            self.__module__ = MODEL_CODE_MODULE
        self._solver = self._validate_arguments(locals())  # locals(): every constructor argument, by name
        # Built once (forward checks timesteps against it); every setting, defaults included, goes to the config.
        self._preconditioning = preconditioning_from_config(preconditioning)
        self._warned_edm_timesteps = False  # a DDPM-style model warns once about an EDM scheduler's timesteps
        if self._preconditioning is not None:
            self.register_to_config(preconditioning=self._preconditioning.to_config())
        if id2label is not None:  # string keys, as a saved and reloaded config has them
            self.register_to_config(id2label=checked_id2label(id2label, num_class_embeds, null_class_label))
        block_out_channels = tuple(block_out_channels)
        attention_levels = tuple(attention_levels)
        mid_channels = mid_channels or block_out_channels[-1]

        # time (and class) embedding
        base = block_out_channels[0]
        temb_dim = time_embedding_dim or 4 * base
        self.time_proj = Timesteps(base, flip_sin_to_cos=flip_sin_to_cos, downscale_freq_shift=freq_shift)
        self.time_embedding = TimestepEmbedding(base, temb_dim)
        self.class_embedding = nn.Embedding(num_class_embeds, temb_dim) if num_class_embeds else None

        def ode_block(channels: int) -> ODEBlock:
            return ODEBlock(channels, temb_dim, ode_order, norm_type=norm_type, norm_num_groups=norm_num_groups,
                            norm_eps=norm_eps, residual=ode_residual, dropout=dropout)  # fmt: skip

        def attention(channels: int) -> Attention:
            return self._attention(channels, attention_head_dim, norm_eps, norm_num_groups)

        self.conv_in = nn.Conv2d(in_channels, base, kernel_size=3, padding=1)
        widths_below = block_out_channels[1:] + (mid_channels,)
        self._build_encoder(block_out_channels, widths_below, attention_levels, ode_block, attention)
        # bottleneck
        self.mid_block = ode_block(mid_channels)
        self.mid_attn = attention(mid_channels) if mid_attention else nn.Identity()
        self._build_decoder(block_out_channels, widths_below, attention_levels, ode_block, attention)
        self.conv_norm_out = make_norm("group" if norm_type == "none" else norm_type, base, norm_num_groups, norm_eps)
        self.conv_out = nn.Conv2d(base, out_channels, kernel_size=3, padding=1)
        # The ODE blocks by module name, in the order a forward call runs them (up_blocks.0 is the deepest level).
        levels = len(block_out_channels)
        self.ode_block_names: tuple[str, ...] = (
            *(f"down_blocks.{i}" for i in range(levels)),
            "mid_block",
            *(f"up_blocks.{i}" for i in range(levels)),
        )

    @staticmethod
    def _attention(channels: int, head_dim: int, eps: float, groups: int) -> Attention:
        """diffusers' self-attention block as `UNet2DModel`'s attention levels use it."""
        return Attention(channels, heads=channels // head_dim, dim_head=head_dim, eps=eps, norm_num_groups=groups,
                         residual_connection=True, bias=True, upcast_softmax=True,
                         _from_deprecated_attn_block=True)  # fmt: skip

    def _build_encoder(self, block_out_channels, widths_below, attention_levels, ode_block, attention) -> None:
        """The encoder: an ODE block (+ attention) per level, a strided conv between levels (a 1x1 conv into the
        bottleneck's width after the last)."""
        levels = len(block_out_channels)
        self.down_blocks = nn.ModuleList(ode_block(c) for c in block_out_channels)
        self.down_attentions = nn.ModuleList(
            attention(c) if use else nn.Identity() for c, use in zip(block_out_channels, attention_levels)
        )
        self.downsamplers = nn.ModuleList(
            Downsample2D(c, use_conv=True, out_channels=c_next, padding=1, name="op")
            if i < levels - 1
            else nn.Conv2d(c, c_next, kernel_size=1)
            for i, (c, c_next) in enumerate(zip(block_out_channels, widths_below))
        )

    def _build_decoder(self, block_out_channels, widths_below, attention_levels, ode_block, attention) -> None:
        """The decoder, deepest level first: upsample (except into the deepest level), concatenate the skip, 1x1
        merge, ODE block (+ attention)."""
        self.upsamplers = nn.ModuleList()
        self.skip_merges = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        self.up_attentions = nn.ModuleList()
        levels = len(block_out_channels)
        for i in reversed(range(levels)):
            c, c_below = block_out_channels[i], widths_below[i]
            if i < levels - 1:
                self.upsamplers.append(Upsample2D(c_below, use_conv=True, out_channels=c))
            else:
                self.upsamplers.append(nn.Conv2d(c_below, c, kernel_size=1))
            self.skip_merges.append(nn.Conv2d(2 * c, c, kernel_size=1))
            self.up_blocks.append(ode_block(c))
            self.up_attentions.append(attention(c) if attention_levels[i] else nn.Identity())

    @classmethod
    def _validate_arguments(cls, arguments: Mapping[str, Any]) -> SolverConfig:
        """Check constructor arguments (as passed, or as read from a config) and return their solver settings."""
        preconditioning_from_config(arguments.get("preconditioning"))
        check_null_class(arguments.get("null_class_label"), arguments.get("num_class_embeds"))
        channels = tuple(arguments["block_out_channels"])
        cls._validate_architecture(
            channels,
            arguments["mid_channels"] or channels[-1],
            tuple(arguments["attention_levels"]),
            arguments["attention_head_dim"],
            arguments["norm_type"],
            arguments["norm_num_groups"],
            arguments["ode_order"],
        )
        return SolverConfig(
            arguments["solver_method"],
            arguments["solver_steps"],
            arguments["solver_rtol"],
            arguments["solver_atol"],
            arguments["solver_adjoint"],
        )

    @staticmethod
    def _validate_architecture(
        block_out_channels, mid_channels, attention_levels, attention_head_dim, norm_type, norm_num_groups, ode_order
    ) -> None:
        if not block_out_channels or any(not isinstance(c, int) or c < 1 for c in block_out_channels):
            raise ValueError(f"block_out_channels must be positive integers, got {block_out_channels!r}.")
        if len(attention_levels) != len(block_out_channels):
            raise ValueError(
                f"attention_levels has {len(attention_levels)} entries but block_out_channels has "
                f"{len(block_out_channels)} levels."
            )
        if norm_type not in NORM_TYPES:
            raise ValueError(f"Unknown norm_type {norm_type!r}; expected one of {list(NORM_TYPES)}.")
        if ode_order not in ODE_ORDERS:
            raise ValueError(f"Unknown ode_order {ode_order!r}; expected one of {list(ODE_ORDERS)}.")
        widths = list(block_out_channels) + [mid_channels]
        if norm_type == "group" or norm_type == "none":
            bad = [c for c in widths if c % norm_num_groups]
            if bad:
                raise ValueError(f"Channel counts {bad} are not divisible by norm_num_groups={norm_num_groups}.")
        attended = [c for c, use in zip(block_out_channels, attention_levels) if use] + [mid_channels]
        bad = [c for c in attended if c % attention_head_dim]
        if bad:
            raise ValueError(f"Channel counts {bad} are not divisible by attention_head_dim={attention_head_dim}.")

    @property
    def preconditioning(self) -> EDMPreconditioning | None:
        """The EDM / EDM-FDM preconditioning recorded in the config, or `None` for a DDPM-style model."""
        return self._preconditioning

    # ------------------------------------------------------------------ solver settings
    @property
    def solver(self) -> SolverConfig:
        """The ODE solver settings every block uses when `forward` is given none."""
        return self._solver

    def set_solver(self, **options: Any) -> SolverConfig:
        """Change the ODE solver without rebuilding the model, e.g. `model.set_solver(method="rk4", steps=1)`.

        The new settings are also written to the config, so `save_pretrained` keeps them.

        Args:
            **options: any of `method`, `steps`, `rtol`, `atol`, `adjoint`.

        Raises:
            ValueError: for an unknown option or an invalid value.
        """
        self._solver = SolverConfig.from_options(options, base=self._solver)
        self.register_to_config(**{f"solver_{name}": value for name, value in vars(self._solver).items()})
        return self._solver

    @property
    def num_ode_blocks(self) -> int:
        return len(self.ode_block_names)

    def split_effort(self, effort: Mapping[str, Any] | SolverConfig | None) -> tuple[SolverConfig, frozenset[str]]:
        """A call's `solver` argument as (solver settings, names of the ODE blocks it skips).

        Besides the solver options, the mapping may hold `skip`: ODE blocks (names from `ode_block_names`) that
        this call integrates over zero time, i.e. leaves out (the block is the identity there), e.g.
        `{"steps": 1, "skip": ["mid_block", "up_blocks.0"]}`.

        Raises:
            ValueError: for an unknown solver option or block name.
        """
        if effort is None:
            return self._solver, frozenset()
        if isinstance(effort, SolverConfig) or "skip" not in effort:
            return SolverConfig.from_options(effort, base=self._solver), frozenset()
        options = {name: value for name, value in effort.items() if name != "skip"}
        skip = effort["skip"]
        if isinstance(skip, str) or not isinstance(skip, Collection):
            raise ValueError(f"skip must be a list of ODE block names, got {skip!r}.")
        unknown = sorted(set(skip) - set(self.ode_block_names))
        if unknown:
            raise ValueError(f"Unknown ODE block(s) {unknown} in skip; this model has {list(self.ode_block_names)}.")
        return SolverConfig.from_options(options, base=self._solver), frozenset(skip)

    def active_ode_blocks(self, skip: Collection[str] = (), top_levels: int | None = None) -> tuple[str, ...]:
        """The ODE blocks a call runs: all but those in `skip`, and with `top_levels` (a call that reuses cached deep
        features) only those of the top levels of the encoder and decoder."""
        names = self.ode_block_names
        if top_levels is not None:
            names = (*names[:top_levels], *names[len(names) - top_levels :])
        return tuple(name for name in names if name not in skip)

    def evaluations_per_call(
        self, solver: Mapping[str, Any] | SolverConfig | None = None, top_levels: int | None = None
    ) -> int | None:
        """ODE function evaluations of one forward call with `solver` (or the current settings), skipped blocks
        left out, only the top levels' blocks when `top_levels` is given (a cached call); `None` if adaptive."""
        settings, skip = self.split_effort(solver)
        per_block = settings.evaluations_per_solve
        return None if per_block is None else per_block * len(self.active_ode_blocks(skip, top_levels))

    def ode_function_evaluations(self, reset: bool = False) -> int:
        """ODE function evaluations counted since the last reset (outside `torch.compile`d code)."""
        total = sum(m.nfe for m in self.modules() if hasattr(m, "nfe"))
        if reset:
            for m in self.modules():
                if hasattr(m, "nfe"):
                    m.nfe = 0
        return total

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        class_labels: torch.Tensor | None = None,
        return_dict: bool = True,
        solver: Mapping[str, Any] | SolverConfig | None = None,
        feature_cache: DeepFeatureCache | None = None,
    ) -> ContinuousUNet2DOutput | tuple[torch.Tensor]:
        r"""
        Args:
            sample (`torch.Tensor`): noisy input of shape `(batch, in_channels, height, width)`; height and width
                must be divisible by `2 ** (len(block_out_channels) - 1)`.
            timestep (`torch.Tensor`, `float` or `int`): diffusion timestep, a number, a 0-d tensor or one per
                sample (shape `(batch,)`).
            class_labels (`torch.Tensor`, *optional*): class indices of shape `(batch,)`; required when the model
                was built with `num_class_embeds`.
            return_dict (`bool`): return a `ContinuousUNet2DOutput` instead of a tuple.
            solver (`dict` or `SolverConfig`, *optional*): solver settings for this call only, e.g.
                `{"steps": 1}`, and the ODE blocks it skips (`{"steps": 1, "skip": ["mid_block"]}`, see
                `split_effort`); the model's settings are left unchanged.
            feature_cache (`DeepFeatureCache`, *optional*): reuse of deep decoder features across calls: a call
                with `feature_cache.refresh` runs whole and stores them; any other call runs only the top
                `feature_cache.levels` levels (see `diffusers_cunet.feature_cache`).

        Returns:
            `ContinuousUNet2DOutput` or `tuple`: the prediction, shaped as `sample` with `out_channels` channels.
        """
        solver, skip = self.split_effort(solver)
        timesteps = self._check_inputs(sample, timestep, class_labels)
        levels = len(self.down_blocks)
        reuse = feature_cache is not None and self._check_cache(feature_cache, sample)
        kept_from = levels - feature_cache.levels if feature_cache is not None else None  # first up level recomputed

        def run_block(name: str, block: ODEBlock, hidden: torch.Tensor) -> torch.Tensor:
            return hidden if name in skip else block(hidden, emb, solver)  # zero ODE time: the identity

        # 1. time (and class) embedding
        t_emb = self.time_proj(timesteps).to(dtype=self.dtype)
        emb = self.time_embedding(t_emb)
        if self.class_embedding is not None:
            emb = emb + self.class_embedding(class_labels).to(dtype=emb.dtype)

        # 2. pre-process
        hidden = self.conv_in(sample)

        # 3. down (a cached call stops after the levels it recomputes)
        skips = []
        for i, (block, attention, downsample) in enumerate(
            zip(self.down_blocks, self.down_attentions, self.downsamplers)
        ):
            hidden = attention(run_block(f"down_blocks.{i}", block, hidden))
            skips.append(hidden)
            if reuse and i == feature_cache.levels - 1:
                break
            hidden = downsample(hidden)

        # 4. mid
        if not reuse:
            hidden = self.mid_attn(run_block("mid_block", self.mid_block, hidden))

        # 5. up (a cached call starts from the stored features; a refresh call stores them)
        for k, (upsample, merge, block, attention) in enumerate(
            zip(self.upsamplers, self.skip_merges, self.up_blocks, self.up_attentions)
        ):
            if k == kept_from:
                if reuse:
                    hidden = feature_cache.features
                else:
                    feature_cache.features = hidden
            elif reuse and k < kept_from:
                continue
            hidden = merge(torch.cat([upsample(hidden), skips.pop()], dim=1))
            hidden = attention(run_block(f"up_blocks.{k}", block, hidden))

        # 6. post-process
        hidden = self.conv_out(F.silu(self.conv_norm_out(hidden)))
        if not return_dict:
            return (hidden,)
        return ContinuousUNet2DOutput(sample=hidden)

    def _check_cache(self, cache: DeepFeatureCache, sample: torch.Tensor) -> bool:
        """Validate a feature cache against the model and the batch; returns whether this call reuses it."""
        cache.check_fits(len(self.down_blocks))
        if not cache.reusing:
            return False
        if cache.features is None:
            raise ValueError("The feature cache holds no features yet: its first call must refresh it (refresh=True).")
        if cache.features.shape[0] != sample.shape[0]:
            raise ValueError(
                f"The feature cache holds features of a batch of {cache.features.shape[0]}, this call has "
                f"{sample.shape[0]} samples: refresh it for a new batch."
            )
        return True

    def _check_inputs(self, sample: torch.Tensor, timestep, class_labels) -> torch.Tensor:
        """Validate the inputs and return the timesteps as a `(batch,)` tensor on the sample's device."""
        if not isinstance(sample, torch.Tensor) or sample.ndim != 4:
            shape = tuple(sample.shape) if isinstance(sample, torch.Tensor) else type(sample).__name__
            raise ValueError(f"sample must be a 4-d tensor (batch, channels, height, width), got {shape}.")
        batch, channels, height, width = sample.shape
        if batch == 0:
            raise ValueError("sample holds no images (a batch of 0): ask for at least one.")
        if channels != self.config.in_channels:
            raise ValueError(
                f"sample has {channels} channels but the model expects in_channels={self.config.in_channels}."
            )
        factor = 2 ** (len(self.config.block_out_channels) - 1)
        if height % factor or width % factor:
            raise ValueError(
                f"sample size {height}x{width} is not divisible by {factor}, the total down-sampling of "
                f"{len(self.config.block_out_channels)} levels."
            )
        if not torch.is_tensor(timestep):
            if isinstance(timestep, bool) or not isinstance(timestep, (int, float)):
                raise ValueError(f"timestep must be a number or a tensor, got {type(timestep).__name__}.")
            if not math.isfinite(timestep):
                raise ValueError(f"timestep must be finite, got {timestep}.")
            dtype = torch.float32 if isinstance(timestep, float) else torch.int64
            timestep = torch.tensor([timestep], dtype=dtype)
        if timestep.ndim > 1 or (timestep.ndim == 1 and timestep.shape[0] not in (1, batch)):
            raise ValueError(
                f"timestep must be a scalar or have shape ({batch},) to match the batch, got {tuple(timestep.shape)}."
            )
        timestep = timestep.reshape(-1)
        # Value checks read tensor values on the host: they run for tensors already on the CPU (the scheduler's
        # timesteps in diffusers' pipelines, CPU samples), never for accelerator tensors, where each would stall
        # the device once per call, nor inside compiled code.
        if not torch.compiler.is_compiling():
            if timestep.device.type == "cpu":
                if timestep.is_floating_point() and not torch.isfinite(timestep).all():
                    raise ValueError(f"timestep must be finite, got {timestep.tolist()}.")
                self._check_edm_timestep(timestep)
            if sample.device.type == "cpu" and not torch.isfinite(sample).all():
                raise ValueError("sample contains NaN or infinite values.")
        timestep = timestep.to(sample.device)
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("class_labels are required: the model was built with num_class_embeds.")
            if class_labels.shape != (batch,):
                raise ValueError(f"class_labels must have shape ({batch},), got {tuple(class_labels.shape)}.")
        return timestep.expand(batch)

    def _check_edm_timestep(self, timestep: torch.Tensor) -> None:
        """A preconditioned model's timestep is c_noise = log(sigma) / 4; the integer timesteps of a DDPM-style
        sampler (e.g. `DDPMPipeline`, which never scales its inputs) would silently give wrong images."""
        preconditioning = self.preconditioning
        if preconditioning is None:
            # no VP timestep is negative; c_noise = log(sigma) / 4 is, below sigma = 1, at the end of every EDM run
            if timestep.is_floating_point() and bool((timestep < 0).any()) and not self._warned_edm_timesteps:
                self._warned_edm_timesteps = True
                warnings.warn(
                    f"This DDPM-style model got negative timesteps ({timestep.tolist()[:4]}): an EDM scheduler's "
                    "c_noise. Its pipeline must convert them (diffusers' DDPMPipeline cannot): sample with "
                    "diffusers_cunet.pipelines.ContinuousUNetPipeline, which drives it with EDM schedulers too.",
                    stacklevel=4,
                )
            return
        low = math.log(preconditioning.sigma_min / 100) / 4
        high = math.log(preconditioning.sigma_max * 100) / 4
        if timestep.min() < low or timestep.max() > high:
            raise ValueError(
                f"This model was trained with {preconditioning.type!r} preconditioning: its timestep is "
                f"c_noise = log(sigma) / 4 (between {low:.2f} and {high:.2f}), got {timestep.tolist()[:4]}. Sample "
                "it with diffusers_cunet.pipelines.ContinuousUNetPipeline and an EDM scheduler "
                "(diffusers_cunet.preconditioning.edm_scheduler(model)), not DDPMPipeline."
            )

    # ------------------------------------------------------------------ loading
    @classmethod
    def extract_init_dict(cls, config_dict, **kwargs):
        # `auto_map` says where the remote code lives (`save_pretrained` writes it); it is no constructor argument.
        config_dict = {key: value for key, value in config_dict.items() if key != "auto_map"}
        return super().extract_init_dict(config_dict, **kwargs)

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        is_main_process: bool = True,
        save_function: Callable | None = None,
        safe_serialization: bool = True,
        variant: str | None = None,
        max_shard_size: int | str = "10GB",
        push_to_hub: bool = False,
        **kwargs: Any,
    ) -> None:
        """As `ModelMixin.save_pretrained` (same parameters: a pipeline hands each on), plus `modeling_cunet.py`
        (this class as one file) and the `auto_map` entry that let `AutoModel.from_pretrained(folder,
        trust_remote_code=True)` load the folder without this package installed. A `variant` is written beside the
        other weights (`diffusion_pytorch_model.<variant>.safetensors`), never over them.

        Weights are always safetensors: a pickle runs code when it is loaded. `safe_serialization=False` (which
        diffusers' own pipeline tests pass) writes safetensors all the same, with a warning that says so."""
        if not safe_serialization:
            warnings.warn(
                f"safe_serialization=False: {type(self).__name__} writes its weights as safetensors all the same "
                "(never pickle, which runs code when loaded); diffusers loads them either way.",
                stacklevel=2,
            )
        super().save_pretrained(
            save_directory, is_main_process=is_main_process, save_function=save_function, safe_serialization=True,
            variant=variant, max_shard_size=max_shard_size, push_to_hub=push_to_hub, **kwargs,
        )  # fmt: skip
        if is_main_process:
            write_model_code(save_directory)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args, **kwargs):
        """As `ModelMixin.from_pretrained`, but an invalid config or a corrupted or mismatched weights file
        raises a `ValueError` that names the file (`model_loading`). See `ModelMixin.from_pretrained` for the
        arguments."""
        check_config_file(cls, pretrained_model_name_or_path, kwargs.get("subfolder"))
        with errors_naming_the_weights(cls.__name__, pretrained_model_name_or_path, kwargs):
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
