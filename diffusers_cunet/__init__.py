"""diffusers-cunet: the continuous U-Net (arXiv 2310.20092) as a Hugging Face diffusers model."""

from .preconditioning import EDMPreconditioning, FDMPreconditioning
from .solvers import SolverConfig
from .unet_continuous_2d import ContinuousUNet2DModel, ContinuousUNet2DOutput

__version__ = "0.1.0"
__all__ = [
    "ContinuousUNet2DModel",
    "ContinuousUNet2DOutput",
    "EDMPreconditioning",
    "FDMPreconditioning",
    "SolverConfig",
    "__version__",
]
