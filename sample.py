"""A grid of garments from the model this package ships (`pretrained/cunet-fashion-mnist/`): one row per class, no
training. `make sample` runs it with the defaults.

    python sample.py                                   # every class, the recommended guidance scale
    python sample.py --classes Trouser Bag --guidance_scale 3 --steps 30 --seed 1 --output outputs/mine.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))  # `training` is a folder of the repository, not an installed package

from diffusers_cunet.card_settings import recommended_settings  # noqa: E402
from training.release import GRID_COLUMNS, SAMPLING_STEPS, SHIPPED, class_grid  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", default=str(SHIPPED), help="a saved pipeline folder or Hub id")
    parser.add_argument("--classes", nargs="+", default=None, help="class names (default: every class)")
    parser.add_argument("--guidance_scale", type=float, default=None,
                        help="classifier-free guidance (default: the card's recommended scale, else 1)")  # fmt: skip
    parser.add_argument("--steps", type=int, default=None,
                        help=f"sampler steps (default: the card's recommendation, else {SAMPLING_STEPS})")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--columns", type=int, default=GRID_COLUMNS, help="samples per class")
    parser.add_argument("--output", type=Path, default=ROOT / "outputs" / "samples.png")
    args = parser.parse_args(argv)
    recommended = recommended_settings(args.pipeline)
    if args.guidance_scale is None:
        args.guidance_scale = recommended.get("guidance_scale", 1.0)
    if args.steps is None:
        args.steps = recommended.get("num_inference_steps", SAMPLING_STEPS)
    return args


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    from diffusers_cunet.pipelines import ContinuousUNetPipeline

    pipeline = ContinuousUNetPipeline.from_pretrained(args.pipeline)
    try:
        classes = pipeline.get_label_ids(args.classes) if args.classes else sorted(pipeline.labels)
        if args.steps < 1 or args.columns < 1:
            raise ValueError(f"--steps and --columns must be positive, got {args.steps} and {args.columns}.")
        path = class_grid(pipeline, classes, args.guidance_scale, args.steps, args.seed, args.columns, args.output)
    except ValueError as error:
        raise SystemExit(f"sample.py: error: {error}") from None
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
