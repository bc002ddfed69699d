"""Image data sets for training: a Hub data set, a local image folder, or the embedded scikit-learn digits.

Everything is a `datasets.Dataset`; images become float tensors in [-1, 1] of one fixed size. Random
augmentations (crop offset, horizontal flip) are drawn from a generator seeded by (seed, epoch, example index),
not from global random state, so a resumed run sees exactly the images an uninterrupted run would have seen.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from training import fashion_mnist

IMAGE_COLUMN_CANDIDATES = ("image", "img", "images", "pixel_values")
INDEX_COLUMN = "_example_index"


def digits_dataset():
    """The 1,797 real 8x8 handwritten digits of scikit-learn as a `datasets.Dataset` (`image`, `label`).

    Ships with scikit-learn, so it needs no network: the project's default data set.
    """
    import datasets
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Pixel values are 0..16 (ink); scale to 0..255 grey levels with white digits on black.
    pixels = (digits.images * (255.0 / 16.0)).round().clip(0, 255).astype(np.uint8)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(i) for i in range(10)])}
    )
    return datasets.Dataset.from_dict(
        {"image": [Image.fromarray(p, mode="L") for p in pixels], "label": digits.target.tolist()},
        features=features,
    )


def load_image_dataset(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_data_dir: str | None = None,
    split: str = "train",
    cache_dir: str | None = None,
    fashion_mnist_dir: str | None = None,
):
    """Load the training images: `train_data_dir` (an `imagefolder`), else `dataset_name`, else the digits.
    `fashion_mnist` is read from local IDX files where they are found (`training.fashion_mnist`), else from the Hub.

    Raises:
        ValueError: if the folder is missing or empty, or the data set cannot be loaded (the message says which).
    """
    import datasets

    if train_data_dir is not None:
        if not os.path.isdir(train_data_dir):
            raise ValueError(f"--train_data_dir {train_data_dir!r} is not a directory.")
        try:
            dataset = datasets.load_dataset("imagefolder", data_dir=train_data_dir, cache_dir=cache_dir, split=split)
        except Exception as error:  # datasets raises several types for an empty or unreadable folder
            raise ValueError(f"Could not read images from --train_data_dir {train_data_dir!r}: {error}") from error
        warn_if_metadata_leaves_out_images(Path(train_data_dir), len(dataset))
    elif (
        dataset_name is not None and looks_local(dataset_name) and not os.path.exists(os.path.expanduser(dataset_name))
    ):
        raise ValueError(
            f"--dataset_name {dataset_name!r} looks like a local path, but there is no such folder "
            "(a folder of images is --train_data_dir; a Hub data set is named like 'org/name')."
        )
    elif dataset_name is None or dataset_name == "digits":
        return digits_dataset()
    elif dataset_name in fashion_mnist.HUB_NAMES and fashion_mnist.local_folder(fashion_mnist_dir) is not None:
        return fashion_mnist.fashion_mnist_dataset(split, fashion_mnist_dir)
    else:
        try:
            dataset = datasets.load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir, split=split)
        except Exception as error:
            raise ValueError(f"Could not load data set {dataset_name!r} (split {split!r}): {error}") from error
    if len(dataset) == 0:
        raise ValueError(f"The data set {dataset_name or train_data_dir!r} has no examples in split {split!r}.")
    return dataset


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def looks_local(name: str) -> bool:
    """Whether a data set name is written as a path (absolute, ./, ../, ~): never a Hub id."""
    return name.startswith(("/", "./", "../", "~")) or os.path.isabs(name)


def warn_if_metadata_leaves_out_images(folder: Path, loaded: int) -> None:
    """datasets' imagefolder keeps only the images a `metadata.csv` lists: say so when that drops some."""
    if not any(folder.rglob("metadata.csv")) and not any(folder.rglob("metadata.jsonl")):
        return
    on_disk = sum(1 for path in folder.rglob("*") if path.suffix.lower() in IMAGE_EXTENSIONS)
    if loaded < on_disk:
        logging.getLogger("diffusers_cunet.train").warning(
            "%s: its metadata file lists %d image(s) but the folder holds %d; the unlisted ones are not trained on.",
            folder,
            loaded,
            on_disk,
        )


def find_image_column(column_names: Sequence[str], requested: str | None = None) -> str:
    """The image column: `requested` if given, else the first of `image`, `img`, ... that exists."""
    if requested is not None:
        if requested not in column_names:
            raise ValueError(f"Image column {requested!r} not found; the data set has columns {list(column_names)}.")
        return requested
    for name in IMAGE_COLUMN_CANDIDATES:
        if name in column_names:
            return name
    raise ValueError(
        f"No image column found among {list(column_names)}; name it with --image_column "
        f"(looked for {list(IMAGE_COLUMN_CANDIDATES)})."
    )


MAX_NAMED_FILES = 20


def find_unreadable_images(dataset, image_column: str, progress: bool = True) -> list[tuple[int, str, str]]:
    """Decode every image of `image_column` once and return `(index, file or example, error)` for each that fails.

    Reads the undecoded column (file path or bytes), so one bad file does not stop the scan. A column that is not
    a `datasets.Image` feature is left to the transform."""
    import datasets

    feature = dataset.features.get(image_column)
    if not isinstance(feature, datasets.Image):
        return []
    raw = dataset.select_columns([image_column]).cast_column(image_column, datasets.Image(decode=False))
    bad = []
    rows = tqdm(raw, total=len(raw), desc="checking images", unit="img", disable=not progress or len(raw) < 2000)
    for index, row in enumerate(rows):
        item = row[image_column]
        path, data = item.get("path"), item.get("bytes")
        try:
            with Image.open(io.BytesIO(data) if data is not None else path) as image:
                image.load()  # decodes the pixels: a truncated file fails here, not in Image.open
        except Exception as error:  # PIL raises OSError, UnidentifiedImageError, DecompressionBombError, ...
            bad.append((index, path or f"example {index}", f"{type(error).__name__}: {error}"))
    return bad


def drop_unreadable_images(dataset, image_column: str, skip: bool, source: str, warn=None):
    """`dataset` without its unreadable images if `skip`, else a `ValueError` naming every one of them."""
    bad = find_unreadable_images(dataset, image_column)
    if not bad:
        return dataset
    named = "\n".join(f"  {name}: {error}" for _, name, error in bad[:MAX_NAMED_FILES])
    more = f"\n  ... and {len(bad) - MAX_NAMED_FILES} more" if len(bad) > MAX_NAMED_FILES else ""
    if not skip:
        raise ValueError(
            f"{len(bad)} of {len(dataset)} images in {source} cannot be read:\n{named}{more}\n"
            "Fix or remove them, or pass --skip_bad_images to train without them."
        )
    if len(bad) == len(dataset):
        raise ValueError(f"None of the {len(dataset)} images in {source} can be read:\n{named}{more}")
    if warn is not None:
        warn(f"Leaving out {len(bad)} unreadable image(s) of {source} (--skip_bad_images):\n{named}{more}")
    dropped = {index for index, _, _ in bad}
    return dataset.select([i for i in range(len(dataset)) if i not in dropped])


GREYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "F")


def infer_channels(dataset, image_column: str, probe: int = 64) -> int:
    """3 if any of the first `probe` images has colour (RGB, RGBA, a palette, CMYK, ...), else 1.

    A palette image may hold grey colours only; it still counts as colour, so nothing is ever thrown away."""
    count = min(probe, len(dataset))
    modes = {dataset[i][image_column].mode for i in range(count)}
    return 1 if modes and modes <= set(GREYSCALE_MODES) else 3


def image_size(dataset, image_column: str) -> int:
    """The short side of the data's first image (what `--image_fit resize` scales to the model's size)."""
    return min(dataset[0][image_column].size)


def resize_short_side(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    scale = size / min(width, height)
    new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
    if new_size == image.size:
        return image
    return image.resize(new_size, resample=Image.Resampling.BICUBIC)


IMAGE_FITS = ("resize", "pad")


def pad_to_fit(image: Image.Image, size: int) -> Image.Image:
    """`image` centred on a black canvas at least `size` wide and high (unchanged if it is already)."""
    width, height = image.size
    if width >= size and height >= size:
        return image
    canvas = Image.new(image.mode, (max(width, size), max(height, size)))
    canvas.paste(image, ((canvas.width - width) // 2, (canvas.height - height) // 2))
    return canvas


class ImageTransform:
    """Resize, crop, flip and normalise a batch of PIL images to a `(batch, channels, size, size)` tensor.

    Args:
        resolution (`int`): output height and width.
        channels (`int`): 1 (images converted to `L`) or 3 (converted to `RGB`); mixed modes are converted.
        image_column (`str`): column holding the images.
        center_crop (`bool`): crop the centre; otherwise a random crop.
        random_flip (`bool`): flip horizontally with probability 1/2.
        class_column (`str`, *optional*): column of integer class labels to pass through as `class_labels`.
        seed (`int`): seed of the augmentations; see the module docstring.
        fit (`str`): how an image of another size comes to `resolution`: "resize" (short side, bicubic) or "pad"
            (a smaller image is centred on a black canvas, a larger one cropped: no resampling, every pixel kept).
    """

    def __init__(
        self,
        resolution: int,
        channels: int,
        image_column: str,
        center_crop: bool = True,
        random_flip: bool = False,
        class_column: str | None = None,
        seed: int = 0,
        fit: str = "resize",
    ):
        if channels not in (1, 3):
            raise ValueError(f"Images must have 1 or 3 channels, got {channels}.")
        if fit not in IMAGE_FITS:
            raise ValueError(f"fit must be one of {IMAGE_FITS}, got {fit!r}.")
        self.fit = fit
        self.resolution = resolution
        self.mode = "L" if channels == 1 else "RGB"
        self.image_column = image_column
        self.center_crop = center_crop
        self.random_flip = random_flip
        self.class_column = class_column
        self.seed = seed
        self.epoch = 0  # set by the training loop before each epoch

    def _generator(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    def image_to_tensor(self, image: Image.Image, index: int) -> torch.Tensor:
        image = image.convert(self.mode)
        image = pad_to_fit(image, self.resolution) if self.fit == "pad" else resize_short_side(image, self.resolution)
        width, height = image.size
        rng = self._generator(index) if (not self.center_crop or self.random_flip) else None
        if self.center_crop:
            left, top = (width - self.resolution) // 2, (height - self.resolution) // 2
        else:
            left, top = (
                int(rng.integers(0, width - self.resolution + 1)),
                int(rng.integers(0, height - self.resolution + 1)),
            )
        image = image.crop((left, top, left + self.resolution, top + self.resolution))
        array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
        array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
        if self.random_flip and rng.random() < 0.5:
            array = array[:, :, ::-1]
        return torch.from_numpy(np.ascontiguousarray(array))

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, Any]:
        indices = batch[INDEX_COLUMN]
        pixels = [self.image_to_tensor(image, i) for image, i in zip(batch[self.image_column], indices)]
        out: dict[str, Any] = {"pixel_values": pixels, "index": list(indices)}
        if self.class_column is not None:
            out["class_labels"] = [int(label) for label in batch[self.class_column]]
        return out


def collate(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    batch = {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
        "index": torch.tensor([e["index"] for e in examples]),
    }
    if "class_labels" in examples[0]:
        batch["class_labels"] = torch.tensor([e["class_labels"] for e in examples])
    return batch


def prepare_dataset(dataset, transform: ImageTransform):
    """Attach the example index (for seeded augmentation) and the transform to `dataset`."""
    if INDEX_COLUMN not in dataset.column_names:
        dataset = dataset.add_column(INDEX_COLUMN, list(range(len(dataset))))
    columns = [transform.image_column, INDEX_COLUMN] + ([transform.class_column] if transform.class_column else [])
    return dataset.with_transform(transform, columns=columns)


def num_classes(dataset, class_column: str) -> int:
    """Number of classes of `class_column`: from its `ClassLabel` feature, else the largest label + 1."""
    if class_column not in dataset.column_names:
        raise ValueError(f"Class column {class_column!r} not found; the data set has columns {dataset.column_names}.")
    feature = dataset.features[class_column]
    if hasattr(feature, "num_classes"):
        return int(feature.num_classes)
    labels = dataset[class_column]
    if not all(isinstance(label, (int, np.integer)) and label >= 0 for label in labels):
        raise ValueError(f"Class column {class_column!r} must hold non-negative integer labels.")
    return int(max(labels)) + 1


def class_names(dataset, class_column: str) -> list[str] | None:
    """The names of `class_column`'s classes, by label: a `ClassLabel`'s names (an image folder's subfolders), or
    `None` for a column of bare integers."""
    names = getattr(dataset.features[class_column], "names", None)
    return list(names) if names else None


def encode_class_names(dataset, class_column: str, names: list[str] | None = None):
    """A column of class names (strings) as a `ClassLabel` of the given `names` (default: the column's names,
    sorted), so names become labels 0, 1, ...; any other column as it is."""
    import datasets

    if class_column not in dataset.column_names:
        raise ValueError(f"Class column {class_column!r} not found; the data set has columns {dataset.column_names}.")
    feature = dataset.features[class_column]
    if not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
        return dataset
    names = names or sorted(set(dataset[class_column]))
    unknown = sorted(set(dataset[class_column]) - set(names))
    if unknown:
        raise ValueError(f"Class column {class_column!r} holds names {unknown} not among the training data's {names}.")
    return dataset.cast_column(class_column, datasets.ClassLabel(names=names))


class EpochShuffleSampler(torch.utils.data.Sampler[int]):
    """A random permutation per epoch from `seed + epoch`: the data order is a pure function of the epoch."""

    def __init__(self, length: int, seed: int):
        self.length = length
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.length, generator=generator).tolist())

    def __len__(self) -> int:
        return self.length


def digits_images(resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as a tensor of images in [0, 1] at `resolution`, and their labels (for metrics)."""
    dataset = digits_dataset()
    images, _ = image_tensors(dataset, ImageTransform(resolution, 1, "image"))
    return (images + 1) / 2, torch.tensor(dataset["label"])


def check_data_folder(data_dir: Path, output_dir: Path) -> None:
    """Refuse a data folder that holds a training output (its sample grids would become training images) or that
    would receive this run's output."""
    if data_dir.is_dir():
        outputs = sorted(path.parent for path in data_dir.rglob("model_index.json"))
        if outputs:
            raise ValueError(
                f"--train_data_dir {str(data_dir)!r} contains a saved pipeline ({outputs[0]}): its sample grids would "
                "be trained on as images. Move training outputs out of the data folder."
            )
    if output_dir.resolve().is_relative_to(data_dir.resolve()):
        raise ValueError(
            f"--output_dir {str(output_dir)!r} lies inside --train_data_dir {str(data_dir)!r}: the run's sample grids "
            "would become training images of the next run. Choose an output folder outside the data."
        )


@dataclass
class TrainingImages:
    """The checked training data: every image readable, the image column and the number of classes known."""

    dataset: Any
    image_column: str
    num_classes: int | None
    source: str
    held_out: Any = None  # the examples kept out of training (--held_out_samples), or None
    class_names: list[str] | None = None  # by label, where the data names its classes


def load_training_images(args, warn: Callable[[str], None] | None = None) -> TrainingImages:
    """The data the options name, checked before any compute: it loads, has the columns asked for, and every image
    decodes (or the unreadable ones are left out under `--skip_bad_images`)."""

    def load_split(split: str):
        return load_image_dataset(None if args.train_data_dir else args.dataset_name, args.dataset_config_name,
                                  args.train_data_dir, split, args.cache_dir, args.fashion_mnist_dir)  # fmt: skip

    dataset = load_split(args.split)
    image_column = find_image_column(dataset.column_names, args.image_column)
    names = None
    if args.class_column:
        dataset = encode_class_names(dataset, args.class_column)
        names = class_names(dataset, args.class_column)
    n_classes = num_classes(dataset, args.class_column) if args.class_column else None
    if args.max_train_samples is not None:
        dataset = dataset.select(range(min(args.max_train_samples, len(dataset))))
    source = args.train_data_dir or args.dataset_name
    dataset = drop_unreadable_images(dataset, image_column, args.skip_bad_images, source, warn=warn)
    held_out = None
    if args.held_out_samples and args.held_out_split:  # the first N of another split, e.g. the test images
        other = load_split(args.held_out_split)
        if args.held_out_samples > len(other):
            raise ValueError(
                f"--held_out_samples {args.held_out_samples}: split {args.held_out_split!r} of {source} "
                f"has only {len(other)} examples."
            )
        held_out = other.select(range(args.held_out_samples))
        if args.class_column:
            held_out = encode_class_names(held_out, args.class_column, names)
    elif args.held_out_samples:
        if args.held_out_samples >= len(dataset):
            raise ValueError(
                f"--held_out_samples {args.held_out_samples} leaves nothing to train on: {source} has "
                f"{len(dataset)} usable examples."
            )
        split = len(dataset) - args.held_out_samples
        held_out, dataset = dataset.select(range(split, len(dataset))), dataset.select(range(split))
    return TrainingImages(dataset, image_column, n_classes, source, held_out, names)


def image_tensors(dataset, transform: ImageTransform) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Every example of `dataset` through `transform`: images `(N, C, H, W)` in [-1, 1] and class labels (or None)."""
    data = prepare_dataset(dataset, transform)
    examples = [data[i] for i in range(len(data))]
    images = torch.stack([example["pixel_values"] for example in examples])
    labels = torch.tensor([e["class_labels"] for e in examples]) if transform.class_column else None
    return images, labels


def make_dataloader(images: TrainingImages, resolution: int, channels: int, args) -> tuple[Any, ImageTransform]:
    """The shuffled, transformed loader of `images` (and its transform, whose epoch the loop sets)."""
    transform = ImageTransform(
        resolution,
        channels,
        images.image_column,
        args.center_crop,
        args.random_flip,
        args.class_column,
        seed=args.seed,
        fit=args.image_fit,
    )
    train_data = prepare_dataset(images.dataset, transform)
    loader = torch.utils.data.DataLoader(
        train_data,
        batch_size=args.train_batch_size,
        sampler=EpochShuffleSampler(len(train_data), seed=args.seed),
        collate_fn=collate,
        num_workers=args.dataloader_num_workers,
        drop_last=len(train_data) >= args.train_batch_size,
    )
    return loader, transform
