"""diffusers-cunet: the continuous U-Net (arXiv 2310.20092) as a Hugging Face diffusers model."""

from . import diffusers_library
from .objectives import DDPMObjective, EDMObjective
from .preconditioned_unet_2d import PreconditionedUNet2DModel
from .preconditioning import EDMPreconditioning, FDMPreconditioning
from .solvers import SolverConfig
from .unet_continuous_2d import ContinuousUNet2DModel, ContinuousUNet2DOutput

__version__ = "0.1.0"
diffusers_library.register()  # pipelines of diffusers save and load our models as they do diffusers' own
__all__ = [
    "ContinuousUNet2DModel",
    "ContinuousUNet2DOutput",
    "DDPMObjective",
    "EDMObjective",
    "EDMPreconditioning",
    "FDMPreconditioning",
    "PreconditionedUNet2DModel",
    "SolverConfig",
    "__version__",
]
