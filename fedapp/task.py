"""Models and the local train / test loops.

Models use no BatchNorm (it keeps per-batch statistics that neither Opacus nor
robust aggregation of updates handle well); GroupNorm where normalisation helps.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedapp.data.specs import DatasetSpec, Split
from fedapp.device import device_of


class MLP(nn.Module):
    """Two hidden layers for tabular (or flattened image) features."""

    def __init__(self, num_features: int, num_classes: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(num_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """Two 3x3 conv blocks (GroupNorm, ReLU, 2x2 max-pool) and a linear head.

    Sized for small images such as 8x8 digits: the feature map after the two
    pools is ``(channels, H/4, W/4)``.
    """

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int,
                 width: int = 16) -> None:
        super().__init__()
        c, h, w = image_shape
        self.image_shape = image_shape
        self.features = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1),
            nn.GroupNorm(4, width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.GroupNorm(4, 2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(2 * width * (h // 4) * (w // 4), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(x.shape[0], *self.image_shape)
        return self.head(self.features(x).flatten(1))


def build_model(kind: str, spec: DatasetSpec, hidden: int = 64) -> nn.Module:
    """``auto`` picks the CNN for image datasets and the MLP otherwise."""
    if kind == "auto":
        kind = "cnn" if spec.image_shape is not None else "mlp"
    if kind == "cnn":
        if spec.image_shape is None:
            raise ValueError(f"model='cnn' needs an image dataset; {spec.name!r} is tabular")
        return SmallCNN(spec.image_shape, spec.num_classes)
    if kind == "mlp":
        return MLP(spec.num_features, spec.num_classes, hidden)
    raise ValueError(f"model={kind!r} is not one of: auto, mlp, cnn")


def set_seed(seed: int) -> torch.Generator:
    """Seed torch's global RNG (weight init, dropout) and return a generator for shuffling."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _tensors(split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(np.ascontiguousarray(split.x)), torch.from_numpy(split.y)


def train(model: nn.Module, data: Split, epochs: int, batch_size: int, lr: float,
          seed: int, device: torch.device | str = "cpu") -> tuple[float, float]:
    """Local SGD with momentum 0.9 and cross-entropy over seeded shuffles; returns mean
    (loss, accuracy) over all examples seen in the last epoch.

    The step is written out rather than taken from ``torch.optim.SGD``: every
    ``torch.optim`` optimizer imports ``torch._dynamo`` (sympy included) on first use,
    1-4 s that each fresh deployment ClientApp process would pay. The arithmetic is
    ``torch.optim.SGD``'s (momentum buffer ``b = g`` on the first step, then
    ``b = 0.9 b + g``; ``p -= lr * b``), and a test checks the weights equal it bit for bit.

    It runs on ``device`` (``fedapp.device.resolve_device``); the shuffles are drawn on the
    CPU, so a device sees the same batches, and ``model`` is moved back where it came from.
    On the CPU the computation is the same as before ``device`` existed, bit for bit.
    """
    home, device = device_of(model), torch.device(device)
    model.to(device)
    try:
        return _sgd_epochs(model, data, epochs, batch_size, lr, seed, device)
    finally:
        model.to(home)


def _sgd_epochs(model: nn.Module, data: Split, epochs: int, batch_size: int, lr: float,
                seed: int, device: torch.device) -> tuple[float, float]:
    momentum = 0.9
    x, y = (t.to(device) for t in _tensors(data))
    gen = set_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    buffers: list[torch.Tensor | None] = [None] * len(params)
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    model.train()
    total_loss, correct = 0.0, 0
    for _ in range(epochs):
        total_loss, correct = 0.0, 0
        for batch in torch.randperm(len(y), generator=gen).split(batch_size):
            idx = batch.to(device)
            for p in params:
                p.grad = None
            out = model(x[idx])
            loss = loss_fn(out, y[idx])
            (loss / len(idx)).backward()
            with torch.no_grad():
                for i, p in enumerate(params):
                    if p.grad is None:
                        continue
                    buf = buffers[i]
                    if buf is None:
                        buf = buffers[i] = p.grad.detach().clone()
                    else:
                        buf.mul_(momentum).add_(p.grad)
                    p.add_(buf, alpha=-lr)
            total_loss += loss.item()
            correct += int((out.argmax(1) == y[idx]).sum())
    return total_loss / len(y), correct / len(y)


@torch.no_grad()
def evaluate(model: nn.Module, data: Split, batch_size: int = 512,
             device: torch.device | str = "cpu") -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy on ``data`` (``(nan, nan)`` when empty), computed
    on ``device``; ``model`` is moved back where it came from."""
    if len(data) == 0:
        return float("nan"), float("nan")
    home, device = device_of(model), torch.device(device)
    x, y = (t.to(device) for t in _tensors(data))
    model.to(device)
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    total_loss, correct = 0.0, 0
    try:
        for start in range(0, len(y), batch_size):
            out = model(x[start:start + batch_size])
            total_loss += float(loss_fn(out, y[start:start + batch_size]))
            correct += int((out.argmax(1) == y[start:start + batch_size]).sum())
    finally:
        model.to(home)
    return total_loss / len(y), correct / len(y)
