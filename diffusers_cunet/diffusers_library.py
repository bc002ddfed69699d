"""This package as a library diffusers' pipelines load components from, as they load from `diffusers` itself.

A saved pipeline's `model_index.json` names each component's library and class. For a component of a library that
diffusers does not know, its loader looks for a code file of that name in the folder (and then wants
`trust_remote_code=True`), and by Hub id refuses a name that is neither such a file nor a library in its table of
loadable libraries (`LOADABLE_CLASSES`). Entering `diffusers_cunet` in that table, with the classes diffusers may
save and load through it, is what makes a cUNet in `DDPMPipeline`/`DDIMPipeline` save as
`["diffusers_cunet", "ContinuousUNet2DModel"]` and reload by `from_pretrained(folder or Hub id)` with no flag
wherever this package is imported, exactly as `["diffusers", "UNet2DModel"]` does. (Folders laid out to load
without the package name the shipped code file instead: see `hub_code`.) Done once, on import of the package.
"""

from __future__ import annotations

import logging

LIBRARY = "diffusers_cunet"
SAVE_LOAD_METHODS = ["save_pretrained", "from_pretrained"]


class _UNetContractFilter(logging.Filter):
    """Drops diffusers' "Expected types for unet: UNet2DModel, got ContinuousUNet2DModel" warning: a pipeline's
    type hint names `UNet2DModel`, whose call contract the cUNet keeps (the reason it is a drop-in)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Expected types for unet:") and "UNet2DModel" in message
                    and "ContinuousUNet2DModel" in message)  # fmt: skip


def register() -> None:
    """Enter this package in diffusers' table of loadable libraries (idempotent)."""
    from diffusers.pipelines import pipeline_loading_utils

    # base classes diffusers looks up by name on the library: our models derive from these
    classes = {"ContinuousUNet2DModel": SAVE_LOAD_METHODS, "PreconditionedUNet2DModel": SAVE_LOAD_METHODS}
    pipeline_loading_utils.LOADABLE_CLASSES.setdefault(LIBRARY, classes)
    # the table a pipeline's loader matches every component's class against (built by diffusers from the first)
    pipeline_loading_utils.ALL_IMPORTABLE_CLASSES.update(classes)
    logger = logging.getLogger("diffusers.pipelines.pipeline_utils")
    if not any(isinstance(existing, _UNetContractFilter) for existing in logger.filters):
        logger.addFilter(_UNetContractFilter())
