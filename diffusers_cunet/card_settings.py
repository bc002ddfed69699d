"""The sampling settings a saved pipeline's card recommends, read from the card's Hub metadata.

A card written by `python -m training.release` carries the measured recommended guidance scale and sampler steps in
its front matter, in the Hub's `inference: parameters:` convention. Tools that sample a model (`sample.py`, the app)
start from them, so the recommendation has one source: the measurement the card renders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CARD_FILE = "README.md"


def card_parameters(guidance_scale: float, num_inference_steps: int) -> dict[str, Any]:
    """The card metadata (`ModelCardData` keyword) that records a recommended guidance scale and step count."""
    return {"inference": {"parameters": {"guidance_scale": float(guidance_scale),
                                         "num_inference_steps": int(num_inference_steps)}}}  # fmt: skip


def recommended_settings(source: str | Path) -> dict[str, Any]:
    """`guidance_scale` and `num_inference_steps` as the card of the pipeline at `source` (a folder, or a Hub id
    whose card is reachable or cached) recommends them; an empty dict where there is no card, or it recommends
    nothing. Callers fall back to their own defaults."""
    from huggingface_hub import ModelCard

    folder = Path(source)
    try:
        if folder.is_dir():
            path = folder / CARD_FILE
            card = ModelCard.load(path) if path.is_file() else None
        else:
            card = ModelCard.load(str(source))
    except Exception:  # offline without a cached card, a private id, a broken front matter: no recommendation
        return {}
    inference = (card.data.to_dict().get("inference") if card is not None else None) or {}
    parameters = inference.get("parameters") if isinstance(inference, dict) else None
    if not isinstance(parameters, dict):
        return {}
    return {key: parameters[key] for key in ("guidance_scale", "num_inference_steps") if key in parameters}
