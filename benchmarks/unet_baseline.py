"""A small U-Net trained from scratch for a fixed wall time: what a user would train instead of adapting SAM.

Used by ``adapt.py`` as a baseline, not product code. Five levels (16, 32, 64, 128, 256 channels, two 3×3
convolutions with batch norm and ReLU each, four 2× poolings, transposed-convolution upsampling): about 1.9 M
parameters, the size of the bundled SAM model; narrow at full resolution, so a CPU step is cheap. Trained with
cross-entropy + soft Dice on random 128² crops (flips and 90° rotations), AdamW with a cosine learning rate over the
time budget, on every pixel class of the label images (0 = background).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SmallUNet(nn.Module):
    """``(B, in_channels, H, W)`` (H, W multiples of 2 ** (levels − 1)) → ``(B, n_classes, H, W)`` logits."""

    def __init__(self, in_channels: int, n_classes: int, widths: tuple[int, ...] = (16, 32, 64, 128, 256)) -> None:
        super().__init__()
        self.down = nn.ModuleList()
        c = in_channels
        for w in widths:
            self.down.append(_block(c, w))
            c = w
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.up.append(nn.ConvTranspose2d(c, w, 2, stride=2))
            self.merge.append(_block(2 * w, w))
            c = w
        self.head = nn.Conv2d(c, n_classes, 1)
        self.levels = len(widths) - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < self.levels:
                skips.append(x)
                x = F.max_pool2d(x, 2)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips)):
            x = merge(torch.cat([up(x), skip], 1))
        return self.head(x)


def n_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def standardise(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` or ``(H, W, 3)`` → ``(C, H, W)`` float32, each channel to zero mean and unit variance."""
    x = image.astype(np.float32)
    x = x[None] if x.ndim == 2 else np.moveaxis(x, -1, 0)
    mean = x.mean(axis=(1, 2), keepdims=True)
    std = x.std(axis=(1, 2), keepdims=True)
    return (x - mean) / np.maximum(std, 1e-6)


def _crop_batch(
    images: list[np.ndarray], labels: list[np.ndarray], size: int, batch: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for _ in range(batch):
        i = int(rng.integers(len(images)))
        x, y = images[i], labels[i]
        h, w = y.shape
        r = int(rng.integers(h - size + 1)) if h > size else 0
        c = int(rng.integers(w - size + 1)) if w > size else 0
        x, y = x[:, r : r + size, c : c + size], y[r : r + size, c : c + size]
        if y.shape != (size, size):  # images smaller than the crop are zero-padded (label 0)
            pad = ((0, size - y.shape[0]), (0, size - y.shape[1]))
            x, y = np.pad(x, ((0, 0), *pad)), np.pad(y, pad)
        k = int(rng.integers(4))
        x, y = np.rot90(x, k, axes=(1, 2)), np.rot90(y, k)
        if rng.random() < 0.5:
            x, y = x[:, :, ::-1], y[:, ::-1]
        xs.append(np.ascontiguousarray(x))
        ys.append(np.ascontiguousarray(y))
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys)).long()


def train_unet(
    images: list[np.ndarray],
    labels: list[np.ndarray],
    n_classes: int,
    seconds: float,
    *,
    crop: int = 128,
    batch: int = 4,
    lr: float = 1e-3,
    seed: int = 0,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[SmallUNet, dict]:
    """Train a ``SmallUNet`` from scratch on ``images`` (2D grey or RGB) and ``labels`` (class index per pixel, in
    ``[0, n_classes)``) for ``seconds`` of ``clock`` (wall time by default); returns the model (eval mode) and
    {steps, seconds, loss}."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    xs = [standardise(im) for im in images]
    model = SmallUNet(xs[0].shape[0], n_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    model.train()
    start, steps, loss_value = clock(), 0, math.nan
    while (elapsed := clock() - start) < seconds:
        for group in optimizer.param_groups:
            group["lr"] = lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * elapsed / seconds)))
        x, y = _crop_batch(xs, labels, crop, batch, rng)
        logits = model(x)
        prob = torch.softmax(logits, 1)
        onehot = F.one_hot(y, n_classes).permute(0, 3, 1, 2).float()
        dice = 1 - (2 * (prob * onehot).sum((0, 2, 3)) + 1) / (prob.sum((0, 2, 3)) + onehot.sum((0, 2, 3)) + 1)
        loss = F.cross_entropy(logits, y) + dice.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
        loss_value = float(loss.detach())
    model.eval()
    return model, {"steps": steps, "seconds": clock() - start, "loss": loss_value}


@torch.inference_mode()
def predict_unet(model: SmallUNet, image: np.ndarray) -> np.ndarray:
    """Class index per pixel ``(H, W)`` int64 for a whole image (reflect-padded to a multiple of 16)."""
    x = torch.from_numpy(standardise(image))[None]
    h, w = x.shape[-2:]
    m = 2**model.levels
    x = F.pad(x, (0, -w % m, 0, -h % m), mode="reflect")
    return model(x)[0, :, :h, :w].argmax(0).numpy()
