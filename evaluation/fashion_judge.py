"""The Fashion-MNIST judge: a small CNN classifier, trained once (seeded) and committed as safetensors, whose
128-d penultimate layer is the feature space of FID, KID, precision and recall on Fashion-MNIST, so the scores are
the same on every machine and need no Inception download.

    python -m evaluation.fashion_judge        # retrain it (a few minutes on 2 CPU cores) and rewrite the weights

It takes images in [0, 1] of 28x28 or 32x32 (Fashion-MNIST padded by 2 black pixels, as `--image_fit pad` trains).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS = Path(__file__).with_name("fashion_judge.safetensors")
RESOLUTION = 32


class FashionJudge(nn.Module):
    """Conv-BN-SiLU stages at 32, 16 and 8 pixels, global pooling, a 128-d feature layer and a 10-way head.

    `forward` returns the features (what torchmetrics' FID/KID call); `logits` the class scores."""

    num_features = 128

    def __init__(self):
        super().__init__()

        def stage(inputs: int, outputs: int) -> list[nn.Module]:
            return [nn.Conv2d(inputs, outputs, 3, padding=1, bias=False), nn.BatchNorm2d(outputs), nn.SiLU()]

        self.body = nn.Sequential(
            *stage(1, 32), *stage(32, 32), nn.MaxPool2d(2),
            *stage(32, 64), *stage(64, 64), nn.MaxPool2d(2),
            *stage(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(128, self.num_features), nn.SiLU(),
        )  # fmt: skip
        self.head = nn.Linear(self.num_features, 10)

    @staticmethod
    def prepare(images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1], `(N, 1 or 3, 28 or 32, same)`, as the network takes them: grey, 32x32, in [-1, 1]."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"The judge takes (N, 1 or 3, H, W) images, got shape {tuple(images.shape)}.")
        images = images.float()
        if images.shape[1] == 3:
            images = images.mean(dim=1, keepdim=True)
        if images.shape[-2:] == (28, 28):
            images = F.pad(images, (2, 2, 2, 2))
        if images.shape[-2:] != (RESOLUTION, RESOLUTION):
            raise ValueError(f"The judge takes 28x28 or 32x32 images, got {tuple(images.shape[-2:])}.")
        return images * 2 - 1

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(self.prepare(images))

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward(images))

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
        """Each image's most probable class and its probability."""
        probabilities = torch.cat([self.logits(images[i : i + batch_size]).softmax(1)
                                   for i in range(0, len(images), batch_size)])  # fmt: skip
        confidence, best = probabilities.max(dim=1)
        return best, confidence


def load_judge(path: Path = WEIGHTS) -> FashionJudge:
    """The committed judge, in eval mode.

    Raises:
        ValueError: naming the file, if it is missing, damaged or holds other weights.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise ValueError(
            f"The Fashion-MNIST judge's weights {path} are missing: `python -m evaluation.fashion_judge`."
        )
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise ValueError(f"The Fashion-MNIST judge's weights {path} cannot be read: {error}") from error
    judge = FashionJudge()
    try:
        judge.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"{path} does not hold the FashionJudge's weights: {str(error).splitlines()[0]}") from error
    return judge.eval()


def judge_metadata(path: Path = WEIGHTS) -> dict:
    """What the weights file says of its training: seed, epochs, test accuracy."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as file:
        return json.loads(file.metadata()["training"])


def train_judge(train_images: torch.Tensor, train_labels: torch.Tensor, epochs: int = 4, seed: int = 0,
                batch_size: int = 128, learning_rate: float = 2e-3) -> FashionJudge:  # fmt: skip
    """A `FashionJudge` fitted on `train_images` (in [0, 1]) with AdamW and a one-cycle schedule, seeded: the same
    weights for the same seed on the same machine."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    judge = FashionJudge()
    optimizer = torch.optim.AdamW(judge.parameters(), lr=learning_rate, weight_decay=1e-4)
    steps = epochs * (len(train_images) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, learning_rate, total_steps=steps)
    bar = tqdm(total=steps, desc="training the judge", unit="step")
    for _ in range(epochs):
        order = torch.randperm(len(train_images), generator=generator)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            batch = order[start : start + batch_size]
            images = train_images[batch]
            flip = torch.rand(len(batch), generator=generator) < 0.5  # garments are left-right symmetric
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
            loss = F.cross_entropy(judge.logits(images), train_labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return judge.eval()


def main(argv: list[str] | None = None) -> None:
    from safetensors.torch import save_file

    from training.fashion_mnist import split_tensors

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=WEIGHTS)
    args = parser.parse_args(argv)
    train_images, train_labels = split_tensors("train")
    test_images, test_labels = split_tensors("test")
    start = time.perf_counter()
    judge = train_judge(train_images, train_labels, args.epochs, args.seed)
    best, _ = judge.predict(test_images)
    accuracy = float((best == test_labels).float().mean())
    record = {"seed": args.seed, "epochs": args.epochs, "test_accuracy": round(accuracy, 4),
              "train_seconds": round(time.perf_counter() - start), "torch": torch.__version__}  # fmt: skip
    state = {name: tensor.contiguous() for name, tensor in judge.state_dict().items()}
    save_file(state, str(args.output), metadata={"training": json.dumps(record)})
    print(f"Test accuracy {accuracy:.2%}; wrote {args.output} ({args.output.stat().st_size / 1e6:.2f} MB): {record}")


if __name__ == "__main__":
    main()
