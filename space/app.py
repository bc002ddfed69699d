"""Try a continuous U-Net in the browser: a Gradio app in the Hugging Face Spaces convention (this folder, with its
README.md front matter and requirements.txt, is the Space).

    make app                                  # from a clone: set-up, then http://127.0.0.1:7860
    python space/app.py --port 7861           # the same, another port
    python space/app.py --pipeline DIR_OR_ID --compare UNET2D_DIR   # another model, a UNet2DModel beside it

It samples a saved pipeline (default: the model this package ships) with the classes, guidance scale, scheduler
(those the support table allows for the model), steps, seed and count asked for, and shows the images with the
seconds and network evaluations per image; a UNet2DModel pipeline of the same recipe can run beside it. Bad values
are answered with a message in the page. Requests are queued, two served at once.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home: these machines reach no such server

import gradio as gr  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from diffusers_cunet.card_settings import recommended_settings  # noqa: E402
from diffusers_cunet.pipelines import ContinuousUNetPipeline  # noqa: E402
from diffusers_cunet.pipelines.scheduler_support import scheduler_for, supported_schedulers  # noqa: E402
from diffusers_cunet.shipped import shipped_model  # noqa: E402

MAX_STEPS = 200  # beyond this a request holds the queue for minutes and buys no quality
MAX_PER_CLASS = 8
MAX_SCALE = 20.0
DEFAULT_STEPS = 20
SHOWN_SIZE = 128  # pixels a side in the gallery (the models are 32x32; nearest-neighbour, so no pixel is invented)
CONCURRENT_REQUESTS = 2


class RequestError(ValueError):
    """A value the page asked for that cannot be served; its message is shown in the page."""


_pipelines: dict[str, ContinuousUNetPipeline] = {}
_loading = threading.Lock()


def load(source: str) -> ContinuousUNetPipeline:
    """The pipeline saved at `source` (a folder or Hub id), loaded once and kept."""
    source = source.strip()
    if not source:
        raise RequestError("Name a saved pipeline: a folder or a Hub id.")
    with _loading:
        if source not in _pipelines:
            try:
                pipeline = ContinuousUNetPipeline.from_pretrained(source)
            except (OSError, ValueError, TypeError, KeyError) as error:
                raise RequestError(f"{source} is not a pipeline this app can load: {error}") from None
            pipeline.set_progress_bar_config(disable=True)
            _pipelines[source] = pipeline
        return _pipelines[source]


def schedulers(pipeline: ContinuousUNetPipeline) -> dict[str, type]:
    """The scheduler classes the support table allows for this model, by name, the one it was saved with first."""
    prediction = pipeline.scheduler.config.get("prediction_type", "epsilon")
    allowed = {cls.__name__: cls for cls in supported_schedulers(pipeline.unet, prediction)}
    own = type(pipeline.scheduler).__name__
    return {own: allowed.pop(own), **allowed} if own in allowed else allowed


def class_names(pipeline: ContinuousUNetPipeline) -> list[str]:
    """The model's class names in label order (none for an unconditional model)."""
    return [pipeline.labels[label] for label in sorted(pipeline.labels)] if pipeline.labels else []


@dataclass
class Result:
    """What one model gave for a request."""

    images: list[tuple[Image.Image, str]]  # (image, caption)
    seconds_per_image: float
    network_evaluations_per_image: int
    ode_evaluations_per_image: int | None

    def summary(self, name: str) -> str:
        ode = (f", {self.ode_evaluations_per_image} ODE function evaluations per image"
               if self.ode_evaluations_per_image is not None else "")  # fmt: skip
        return (f"**{name}**: {self.seconds_per_image:.3f} s per image, {self.network_evaluations_per_image} network "
                f"evaluations per image{ode}")  # fmt: skip


def check_request(steps: Any, count: Any, guidance_scale: Any, seed: Any) -> tuple[int, int, float, int]:
    """The numeric settings as the types they must have, or a `RequestError` saying what is wrong."""
    try:
        steps, count, seed, guidance_scale = int(steps), int(count), int(seed), float(guidance_scale)
    except (TypeError, ValueError):
        raise RequestError("Steps, count, seed and guidance scale must be numbers.") from None
    if not 1 <= steps <= MAX_STEPS:
        raise RequestError(f"Steps must be between 1 and {MAX_STEPS} (got {steps}).")
    if not 1 <= count <= MAX_PER_CLASS:
        raise RequestError(f"Images per class must be between 1 and {MAX_PER_CLASS} (got {count}).")
    if not 0 <= guidance_scale <= MAX_SCALE:
        raise RequestError(f"The guidance scale must be between 0 and {MAX_SCALE:g} (got {guidance_scale:g}).")
    return steps, count, guidance_scale, seed


def sample(pipeline: ContinuousUNetPipeline, classes: list[str], guidance_scale: float, scheduler_name: str,
           steps: int, seed: int, count: int) -> Result:  # fmt: skip
    """`count` images of each class (or `count` unconditional ones) from `pipeline` with the scheduler named."""
    allowed = schedulers(pipeline)
    if scheduler_name not in allowed:
        raise RequestError(f"{scheduler_name} cannot sample this model; these can: {', '.join(allowed)}.")
    # a pipeline of its own for this request: schedulers keep per-call state, and two requests run at once
    scheduler = scheduler_for(allowed[scheduler_name], pipeline.unet, pipeline.scheduler)
    request = ContinuousUNetPipeline(unet=pipeline.unet, scheduler=scheduler)
    request.model_schedule = pipeline.model_schedule
    request.set_progress_bar_config(disable=True)
    names = classes or class_names(pipeline)
    labels = [name for name in names for _ in range(count)] if names else None
    batch = len(labels) if labels else count
    start = time.perf_counter()
    try:
        out = request(batch_size=batch, class_labels=labels, guidance_scale=guidance_scale, num_inference_steps=steps,
                      generator=torch.Generator().manual_seed(seed))  # fmt: skip
    except ValueError as error:
        raise RequestError(str(error)) from None
    seconds = (time.perf_counter() - start) / batch
    guided = 2 if guidance_scale != 1 else 1  # a guided step asks the network twice (one call of twice the batch)
    captions = labels or [f"sample {k + 1}" for k in range(batch)]
    images = [(image.resize((SHOWN_SIZE, SHOWN_SIZE), Image.NEAREST), caption)
              for image, caption in zip(out.images, captions)]  # fmt: skip
    return Result(images, seconds, len(request.scheduler.timesteps) * guided, getattr(out, "ode_evaluations", None))


def generate(source: str, classes: list[str], guidance_scale: float, scheduler_name: str, steps: float, seed: float,
             count: float, compare: str = "") -> tuple[list, str, list, str]:  # fmt: skip
    """The app's one action: (images, their timing line, the compared model's images, its line), or a message in
    place of the timing line where the request cannot be served."""
    try:
        steps, count, guidance_scale, seed = check_request(steps, count, guidance_scale, seed)
        pipeline = load(source)
        result = sample(pipeline, classes, guidance_scale, scheduler_name, steps, seed, count)
        lines = [result.summary(source.strip())]
        compared: list = []
        if compare and compare.strip():
            other = load(compare)
            other_scheduler = scheduler_name if scheduler_name in schedulers(other) else next(iter(schedulers(other)))
            beside = sample(other, classes, guidance_scale, other_scheduler, steps, seed, count)
            compared = beside.images
            lines.append(beside.summary(compare.strip()) + f" ({other_scheduler})")
            ratio = result.seconds_per_image / beside.seconds_per_image
            lines.append(f"Time per image, first / second: **{ratio:.2f}x**")
        return result.images, "\n\n".join(lines), compared, ""
    except RequestError as error:
        return [], "", [], f"**Cannot do that:** {error}"


def describe(source: str) -> tuple[Any, ...]:
    """The class and scheduler choices, guidance scale and steps of the model at `source` (after the folder box
    changes)."""
    try:
        pipeline = load(source)
    except RequestError as error:
        nothing = gr.update(choices=[], value=[]), gr.update(choices=[], value=None), gr.update(), gr.update()
        return *nothing, f"**Cannot do that:** {error}"
    names = list(schedulers(pipeline))
    scale, steps = recommended(source)
    return (gr.update(choices=class_names(pipeline), value=[]), gr.update(choices=names, value=names[0]),
            gr.update(value=scale), gr.update(value=steps), "")  # fmt: skip


def recommended(source: str) -> tuple[float, int]:
    """The guidance scale and steps the page starts from: what the model's card recommends, else no guidance and
    `DEFAULT_STEPS`."""
    settings = recommended_settings(source)
    return settings.get("guidance_scale", 1.0), settings.get("num_inference_steps", DEFAULT_STEPS)


def build(default_source: str | None = None, compare: str = "") -> gr.Blocks:
    """The page: settings on the left, images and their cost on the right."""
    source = default_source or shipped_model()
    if os.path.isdir(source) and not os.path.relpath(source).startswith(".."):
        source = os.path.relpath(source)  # `pretrained/cunet-fashion-mnist` in the page, not this machine's path
    pipeline = load(source)
    names = list(schedulers(pipeline))
    recommended_scale, recommended_steps = recommended(source)
    with gr.Blocks(title="Continuous U-Net (diffusers-cunet)", analytics_enabled=False) as demo:
        gr.Markdown(
            "# Continuous U-Net\nA diffusion U-Net whose residual stacks are neural-ODE blocks "
            "(diffusers-cunet; arXiv 2310.20092). Pick classes and press Generate."
        )
        with gr.Row():
            with gr.Column(scale=1):
                folder = gr.Textbox(value=source, label="pipeline (folder or Hub id)", elem_id="pipeline")
                classes = gr.CheckboxGroup(choices=class_names(pipeline), label="classes (none ticked: every class)",
                                           elem_id="classes")  # fmt: skip
                scale = gr.Slider(0, MAX_SCALE, value=recommended_scale, step=0.5,
                                  label="guidance scale (1: none)", elem_id="scale")  # fmt: skip
                scheduler = gr.Dropdown(choices=names, value=names[0], label="scheduler",
                                        elem_id="scheduler")  # fmt: skip
                steps = gr.Number(value=recommended_steps, precision=0, label="steps", elem_id="steps")
                seed = gr.Number(value=0, precision=0, label="seed", elem_id="seed")
                count = gr.Number(value=2, precision=0, label="images per class", elem_id="count")
                other = gr.Textbox(
                    value=compare,
                    elem_id="compare",
                    label="beside it: a UNet2DModel pipeline of the same recipe (optional)",
                )
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=2):
                gallery = gr.Gallery(label="samples", columns=4, elem_id="gallery")
                timing = gr.Markdown(elem_id="timing")
                compared = gr.Gallery(label="beside it", columns=4, elem_id="compared")
                message = gr.Markdown(elem_id="message")
        button.click(generate, [folder, classes, scale, scheduler, steps, seed, count, other],
                     [gallery, timing, compared, message], concurrency_limit=CONCURRENT_REQUESTS)  # fmt: skip
        folder.submit(describe, [folder], [classes, scheduler, scale, steps, message])
    return demo.queue(default_concurrency_limit=CONCURRENT_REQUESTS)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--pipeline", default=None, help="a saved pipeline folder or Hub id (default: the shipped one)"
    )
    parser.add_argument("--compare", default="", help="a UNet2DModel pipeline to show beside it")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    args = parser.parse_args(argv)
    demo = build(args.pipeline, args.compare)
    print(f"the app: http://{args.host}:{args.port} (Ctrl-C stops it)", flush=True)
    demo.launch(server_name=args.host, server_port=args.port, ssr_mode=False, show_error=False)


if __name__ == "__main__":
    main()
