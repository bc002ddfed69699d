"""A grid of garments from the model this package ships (`pretrained/cunet-fashion-mnist/`): one row per class, no
training. `make sample` runs it with the defaults.

    python sample.py                                   # every class, the recommended guidance scale
    python sample.py --classes Trouser Bag --guidance_scale 3 --steps 30 --seed 1 --output outputs/mine.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))  # `training` is a folder of the repository, not an installed package

from training.release import GRID_COLUMNS, RESULTS, SAMPLING_STEPS, SHIPPED, class_grid  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    recommended = json.loads(RESULTS.read_text())["recommended_guidance_scale"] if RESULTS.is_file() else 1.0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", default=str(SHIPPED), help="a saved pipeline folder or Hub id")
    parser.add_argument("--classes", nargs="+", default=None, help="class names (default: every class)")
    parser.add_argument("--guidance_scale", type=float, default=recommended,
                        help=f"classifier-free guidance (default {recommended:g}: the recommended scale)")  # fmt: skip
    parser.add_argument("--steps", type=int, default=SAMPLING_STEPS, help="sampler steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--columns", type=int, default=GRID_COLUMNS, help="samples per class")
    parser.add_argument("--output", type=Path, default=ROOT / "outputs" / "samples.png")
    return parser.parse_args(argv)


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
