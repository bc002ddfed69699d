"""Fashion-MNIST (Zalando, 70,000 28x28 grey garments in 10 classes) from local IDX files, as the Hub's data set.

`--dataset_name fashion_mnist` reads the four IDX files where they are on disk (Debian's `dataset-fashion-mnist`
puts them under `/usr/share/datasets/fashion-mnist/`; elsewhere, e.g. on a machine without apt, name a folder with
`--fashion_mnist_dir` or `FASHION_MNIST_DIR`) into a `datasets.Dataset` with the Hub's columns (`image`, `label`),
and loads `fashion_mnist` from the Hub like any other name when they are not.
"""

from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path

import numpy as np

HUB_NAMES = ("fashion_mnist", "zalando-datasets/fashion_mnist")
DEBIAN_FOLDER = Path("/usr/share/datasets/fashion-mnist")
FOLDER_VARIABLE = "FASHION_MNIST_DIR"
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FILES = {  # split -> (images, labels), as Zalando names them
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IDX_MAGIC = {3: 0x00000803, 1: 0x00000801}  # unsigned bytes, 3 or 1 dimensions


def local_folder(folder: str | os.PathLike | None = None) -> Path | None:
    """The folder that holds the four IDX files: `folder`, else `$FASHION_MNIST_DIR`, else Debian's; None if the
    chosen one lacks them. A folder named explicitly that lacks them is an error, not a silent trip to the Hub."""
    named = folder if folder is not None else os.environ.get(FOLDER_VARIABLE)
    candidate = Path(named) if named else DEBIAN_FOLDER
    missing = [name for pair in FILES.values() for name in pair if not (candidate / name).is_file()]
    if not missing:
        return candidate
    if named:
        source = "--fashion_mnist_dir" if folder is not None else f"${FOLDER_VARIABLE}"
        raise ValueError(f"{source} {str(candidate)!r} lacks the Fashion-MNIST file(s) {missing}.")
    return None


def required_folder(folder: str | os.PathLike | None = None) -> Path:
    """`local_folder`, or a `ValueError` saying how to get the files when none has them."""
    found = local_folder(folder)
    if found is None:
        raise ValueError(f"No Fashion-MNIST files in {DEBIAN_FOLDER} (apt-get install dataset-fashion-mnist).")
    return found


def read_idx(path: Path, dimensions: int) -> np.ndarray:
    """The uint8 array of a (gzipped) IDX file: a big-endian magic number, one size per dimension, then the bytes.

    Raises:
        ValueError: naming the file, if it is not an IDX file of `dimensions` dimensions or is cut short.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as file:
            data = file.read()
    except (OSError, EOFError) as error:
        raise ValueError(f"{path} cannot be read as an IDX file: {error}") from error
    header = 4 * (1 + dimensions)
    if len(data) < header or int.from_bytes(data[:4], "big") != IDX_MAGIC[dimensions]:
        raise ValueError(f"{path} is not a {dimensions}-dimensional IDX file of unsigned bytes.")
    shape = tuple(int.from_bytes(data[4 * (1 + k) : 4 * (2 + k)], "big") for k in range(dimensions))
    if len(data) - header != int(np.prod(shape)):
        raise ValueError(f"{path} holds {len(data) - header} bytes of data where its header announces {shape}.")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def read_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images `(N, 28, 28)` and labels `(N,)` of `split` ("train" or "test") from `folder`."""
    if split not in FILES:
        raise ValueError(f"Fashion-MNIST has the splits {sorted(FILES)}, not {split!r}.")
    image_file, label_file = FILES[split]
    images, labels = read_idx(folder / image_file, 3), read_idx(folder / label_file, 1)
    if len(images) != len(labels):
        raise ValueError(f"{folder}: {len(images)} {split} images but {len(labels)} labels.")
    return images, labels


def fashion_mnist_dataset(split: str = "train", folder: str | os.PathLike | None = None):
    """Fashion-MNIST's `split` as a `datasets.Dataset` with the Hub's features (`image`: 28x28 `L` images,
    `label`: a `ClassLabel` of the ten garment names), read from the local IDX files (see `local_folder`).

    Raises:
        ValueError: if no folder with the files is found, or a file is damaged (the message names it).
    """
    found = required_folder(folder)
    return _cached_dataset(found.resolve(), split)


@functools.lru_cache(maxsize=4)
def _cached_dataset(folder: Path, split: str):
    """Built once per process (4 s for the training split): a benchmark trains ten models on it. A `Dataset` is
    immutable (`select`, `with_transform` return new objects), so sharing it is safe."""
    import datasets

    images, labels = read_split(folder, split)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(CLASS_NAMES))})
    # PNG bytes, as the Hub stores them: building PIL images first would encode the same way, several times slower
    return datasets.Dataset.from_dict(
        {"image": [{"bytes": png_bytes(image), "path": None} for image in images], "label": labels.tolist()},
        features=features,
    )


def png_bytes(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def split_tensors(split: str = "train", folder: str | os.PathLike | None = None, resolution: int = 32):
    """`split`'s images as a float tensor `(N, 1, resolution, resolution)` in [0, 1] (padded with black, the
    data's own background, as `--image_fit pad` trains them) and labels `(N,)`: what judges and benchmarks read,
    without a round trip through PNG."""
    import torch

    found = required_folder(folder)
    images, labels = read_split(found, split)
    pixels = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]
    return pad_to(pixels, resolution), torch.from_numpy(labels.astype(np.int64))


def pad_to(images, resolution: int):
    """`images` `(N, C, H, W)` centred on a black `resolution` x `resolution` canvas (no resampling)."""
    import torch.nn.functional as F

    height, width = images.shape[-2:]
    if height > resolution or width > resolution:
        raise ValueError(f"Cannot pad {height}x{width} images to {resolution}x{resolution}: they are larger.")
    top, left = (resolution - height) // 2, (resolution - width) // 2
    return F.pad(images, (left, resolution - width - left, top, resolution - height - top))
