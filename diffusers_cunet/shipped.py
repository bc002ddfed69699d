"""The trained model this repository ships: its folder in a clone (`pretrained/cunet-fashion-mnist/`, written by
`python -m training.release`) and the Hub id it carries everywhere else."""

from __future__ import annotations

from pathlib import Path

HUB_ID = "diffusers-cunet/cunet-fashion-mnist"  # the id its card and the app name (a placeholder: nothing is pushed)
CLONE_FOLDER = Path(__file__).resolve().parents[1] / "pretrained" / "cunet-fashion-mnist"


def shipped_model() -> str:
    """Where to load the shipped model from: the clone's folder where this package runs from a clone that has it,
    else its Hub id (an installed package, or a Space)."""
    return str(CLONE_FOLDER) if (CLONE_FOLDER / "model_index.json").is_file() else HUB_ID
