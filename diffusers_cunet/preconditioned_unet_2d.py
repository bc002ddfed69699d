"""diffusers' `UNet2DModel` with `preconditioning`, `null_class_label` and `id2label` entries in its config: the
baseline trained with EDM, or with a null class for classifier-free guidance.

A cUNet records the EDM / EDM-FDM preconditioning its weights were trained with in its config, and the pipelines,
objectives and schedulers read it from `model.preconditioning`. This subclass gives the `UNet2DModel` the same
entry and nothing else (forward, blocks and weights are diffusers'), so a cUNet-vs-UNet2DModel pair can share its
objective; `null_class_label` records, as a cUNet's config does, the class that means "no class" (see
`diffusers_cunet.guidance`), and `id2label` its class names. Its constructor takes every `UNet2DModel` argument of
the installed diffusers, plus those three.
"""

from __future__ import annotations

import inspect
from typing import Any

from diffusers import UNet2DModel
from diffusers.configuration_utils import register_to_config

from .class_names import checked_id2label
from .guidance import check_null_class
from .preconditioning import EDMPreconditioning, preconditioning_from_config

__all__ = ["PreconditionedUNet2DModel"]


def _init(
    self,
    *args: Any,
    preconditioning: dict[str, Any] | None = None,
    null_class_label: int | None = None,
    id2label: dict[str, str] | None = None,
    **unet_arguments: Any,
) -> None:
    built = preconditioning_from_config(preconditioning)  # checked before any weight is allocated
    check_null_class(null_class_label, unet_arguments.get("num_class_embeds"))
    names = checked_id2label(id2label, unet_arguments.get("num_class_embeds"), null_class_label)
    UNet2DModel.__init__(self, *args, **unet_arguments)
    self._preconditioning = built
    # the normalised form (every field spelled out), as ContinuousUNet2DModel records it
    self.register_to_config(preconditioning=None if built is None else built.to_config())
    if names is not None:
        self.register_to_config(id2label=names)


# The config *is* the constructor signature (diffusers reads it to save and load): UNet2DModel's, plus three arguments.
_base = inspect.signature(UNet2DModel.__init__)
_init.__signature__ = _base.replace(
    parameters=[
        *_base.parameters.values(),
        inspect.Parameter("preconditioning", inspect.Parameter.KEYWORD_ONLY, default=None),
        inspect.Parameter("null_class_label", inspect.Parameter.KEYWORD_ONLY, default=None),
        inspect.Parameter("id2label", inspect.Parameter.KEYWORD_ONLY, default=None),
    ]
)


class PreconditionedUNet2DModel(UNet2DModel):
    """A `UNet2DModel` whose config records the EDM-style preconditioning its weights were trained with and its
    null class, if any.

    Args:
        preconditioning (`dict`, *optional*): e.g. `{"type": "edm", "sigma_data": 0.5}` (see
            `diffusers_cunet.preconditioning`); `None` gives a plain DDPM-style `UNet2DModel`.
        null_class_label (`int`, *optional*): the last class embedding, trained as "no class" (classifier-free
            guidance).
        id2label (`dict`, *optional*): the class names, by class index (the null class aside).
        **unet_arguments: the arguments of diffusers' `UNet2DModel`.
    """

    __init__ = register_to_config(_init)

    @property
    def preconditioning(self) -> EDMPreconditioning | None:
        """The EDM / EDM-FDM preconditioning recorded in the config, or `None` for a DDPM-style model."""
        return self._preconditioning
