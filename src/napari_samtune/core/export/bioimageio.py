"""BioImage.IO model packages of a BLO-adapted model: image in, class probabilities out, without prompts.

The package holds a TorchScript module that does what ``core.automatic.segment_automatic`` does on one plane of the
encoder's input size (``S`` x ``S``, 256 for the bundled model): pixels scaled to [0, 255] → SAM's standardisation →
image encoder → mask decoder with the learned prompt tokens of every class → logits upsampled to the input →
probabilities (softmax against a background logit of 0; sigmoid for one class). The robust intensity scaling of
``core.image`` (1st and 99.8th percentiles of the image → 0 and 1, clipped) is the package's preprocessing, which
BioImage.IO tools run themselves; larger images are tiled by the consumer.

Also in the package: a test image with its expected output (``bioimageio.core``'s model test runs the one and
compares with the other), a README and ``config.samtune`` with the training provenance the adapter records (base model
and its sha256, method, settings, data summary, budget, validation score), and citations of SAM and BLO-SAM.
Needs the optional ``bioimageio.spec`` package (``pip install napari-samtune[bioimageio]``).
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..decoder import decode_tokens, dense_positional_encoding, embed_dense, normalize_pixels
from ..errors import SamtuneError
from ..image import Normalization
from ..io import atomic_write
from ..models.registry import SamModel
from ..synthetic import make_scene
from ..training.adapters import Adapter, apply_adapter

LOW_PERCENTILE, HIGH_PERCENTILE = Normalization().low_percentile, Normalization().high_percentile
SAM_CITATION = ("Kirillov et al. 2023, Segment Anything, ICCV", "10.48550/arXiv.2304.02643")
BLO_CITATION = (
    "Zhang, Liang, Zhang, Javadi, Xie 2024, BLO-SAM: Bi-level Optimization Based Finetuning of the Segment Anything "
    "Model for Overfitting-Preventing Semantic Segmentation, ICML",
    "10.48550/arXiv.2402.16338",
)


class ExportError(SamtuneError, ValueError):
    """A model that cannot be exported as asked; the message says why and what to do."""


@dataclass(frozen=True)
class BioimageioExport:
    """path: the written ``.zip``; size_bytes: its size; input_size: the square input side the model takes;
    classes: the class values of output channels 1… (channel 0 is background)."""

    path: Path
    size_bytes: int
    input_size: int
    classes: tuple[int, ...]


class PromptFreeSegmentation(nn.Module):
    """``(B, C, S, S)`` float32 in [0, 1] (C = 1 grey or 3 RGB; S = the encoder input size) → ``(B, K + 1, S, S)``
    float32 class probabilities, channel 0 background, channel k the k-th class (sums to 1 per pixel).

    The same numbers as ``segment_automatic`` on an ``S`` x ``S`` plane (one tile, no resize).
    """

    def __init__(self, model: SamModel) -> None:
        super().__init__()
        if model.prompt_embeddings is None:
            raise ExportError(
                f"model '{model.name}' has no learned prompts: only a model adapted by BLO prompt learning "
                "segments without prompts; export an adapter made with method 'blo'"
            )
        self.sam = model.sam.eval()
        self.size = model.img_size
        with torch.no_grad():
            self.register_buffer("prompts", model.prompt_embeddings.detach().float().clone())
            self.register_buffer("image_pe", dense_positional_encoding(self.sam).detach().clone())
            self.register_buffer("dense", embed_dense(self.sam, None, 1).detach().clone())

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        b = image.shape[0]
        pixels = (image * 255.0).expand(-1, 3, -1, -1)  # grey → three equal channels, as core.image does
        features = self.sam.image_encoder(normalize_pixels(self.sam, pixels))
        k = self.prompts.shape[0]
        # Every image with every class's prompt tokens in one decoder batch, image-major.
        feats = features.repeat_interleave(k, dim=0)
        tokens = self.prompts.repeat(b, 1, 1)
        low, _ = decode_tokens(self.sam, feats, self.image_pe, tokens, self.dense)
        logits = F.interpolate(low[:, :1], size=(self.size, self.size), mode="bilinear", align_corners=False)
        logits = logits.reshape(b, k, self.size, self.size)
        if k == 1:
            foreground = torch.sigmoid(logits)
            return torch.cat([1 - foreground, foreground], dim=1)
        return torch.softmax(torch.cat([torch.zeros_like(logits[:, :1]), logits], dim=1), dim=1)


def scale_intensities(image: np.ndarray) -> np.ndarray:
    """The package's preprocessing in numpy: ``(B, C, H, W)`` → float32 in [0, 1], the 1st and 99.8th percentiles
    of each sample (over all its channels and pixels, linear interpolation) mapped to 0 and 1, then clipped."""
    data = image.astype(np.float64)
    low, high = np.percentile(data, [LOW_PERCENTILE, HIGH_PERCENTILE], axis=(1, 2, 3), keepdims=True)
    return np.clip((data - low) / (high - low + 1e-6), 0.0, 1.0).astype(np.float32)


def package_test_input(image: np.ndarray | None, size: int, rgb: bool) -> np.ndarray:
    """The package's test image as ``(1, C, size, size)`` float32 raw intensities.

    image: ``(H, W)`` grey or ``(H, W, 3|4)`` RGB(A) with H, W ≥ ``size`` (its centre ``size`` x ``size`` crop is
    used; a grey model averages RGB channels); None: a synthetic nuclei scene.
    """
    if image is None:
        image = make_scene(np.random.default_rng(0), max(size, 32), "nuclei").image[:size, :size]
    image = np.asarray(image)
    colour = image.ndim == 3 and image.shape[-1] in (3, 4)
    if image.ndim != 2 and not colour:
        raise ExportError(f"test image of shape {image.shape}: give a 2D grey (H, W) or an RGB (H, W, 3) image")
    if rgb and not colour:
        raise ExportError(f"an RGB model needs an RGB test image (H, W, 3), got shape {image.shape}")
    h, w = image.shape[:2]
    if min(h, w) < size:
        raise ExportError(f"test image of shape {image.shape} is smaller than the model input {size} x {size}")
    r0, c0 = (h - size) // 2, (w - size) // 2
    crop = image[r0 : r0 + size, c0 : c0 + size].astype(np.float32)
    channels = crop[..., :3] if rgb else (crop[..., :3].mean(-1) if colour else crop)
    return (channels.transpose(2, 0, 1) if rgb else channels[None])[None].astype(np.float32)


def export_bioimageio(
    base: SamModel,
    adapter: Adapter,
    output: str | os.PathLike,
    *,
    test_image: np.ndarray | None = None,
    rgb: bool = False,
    name: str | None = None,
    authors: tuple[str, ...] = ("napari-samtune",),
    license: str = "BSD-3-Clause",
) -> BioimageioExport:
    """Write a BioImage.IO model package (``.zip``, current format) of ``adapter`` applied to ``base``, atomically.

    adapter: made by BLO prompt learning (it holds learned prompts); base: the model it was fine-tuned from.
    test_image: see ``package_test_input``. rgb: the model takes RGB images (3 channels) instead of grey ones.
    Raises ``ExportError`` for an adapter without learned prompts or an unusable test image, ``AdapterError`` for
    a base model that does not match.
    """
    try:
        from bioimageio.spec import save_bioimageio_package_to_stream
    except ImportError as error:
        raise ExportError(
            "BioImage.IO export needs the bioimageio.spec package: pip install 'napari-samtune[bioimageio]'"
        ) from error
    if adapter.prompt_embeddings is None:
        raise ExportError(
            f"this adapter was made by '{adapter.method}' and has no learned prompts; only BLO prompt learning "
            "(method 'blo') makes a model that segments without prompts"
        )
    model = apply_adapter(base, adapter)
    model.sam.to("cpu")
    model.device = torch.device("cpu")
    module = PromptFreeSegmentation(model).eval()
    size = module.size
    raw = package_test_input(test_image, size, rgb)
    output = Path(output)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        example = torch.from_numpy(scale_intensities(raw))
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shapes fixed at S x S: that is intended
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated in torch, still what tools run
            traced = torch.jit.trace(module, example, check_trace=False)
            expected = traced(example).numpy()
        traced.save(str(folder / "weights_torchscript.pt"))
        np.save(folder / "test_input.npy", raw)
        np.save(folder / "test_output.npy", expected)
        descr = _describe(folder, adapter, size, rgb, name, list(authors), license)
        atomic_write(output, lambda handle: save_bioimageio_package_to_stream(descr, output_stream=handle))
    return BioimageioExport(output, output.stat().st_size, size, tuple(adapter.classes))


def _describe(folder: Path, adapter: Adapter, size: int, rgb: bool, name: str | None, authors: list[str], license: str):
    """The ``ModelDescr`` of the files in ``folder``; pydantic's ValidationError if the description is invalid."""
    from bioimageio.spec.model import v0_5 as spec

    classes = [int(c) for c in adapter.classes]
    provenance = _provenance(adapter)
    (folder / "README.md").write_text(_readme(adapter, size, rgb, provenance), encoding="utf-8")
    space = [spec.SpaceInputAxis(id=spec.AxisId(axis), size=size) for axis in ("y", "x")]
    raw = spec.InputTensorDescr(
        id=spec.TensorId("raw"),
        description="image, any intensity range (scaled by the preprocessing); larger images: tile it",
        axes=[
            spec.BatchAxis(),
            spec.ChannelAxis(channel_names=[spec.Identifier(c) for c in (("r", "g", "b") if rgb else ("grey",))]),
            *space,
        ],
        test_tensor=spec.FileDescr(source=folder / "test_input.npy"),
        preprocessing=[
            spec.ScaleRangeDescr(
                kwargs=spec.ScaleRangeKwargs(
                    axes=[spec.AxisId("channel"), spec.AxisId("y"), spec.AxisId("x")],
                    min_percentile=LOW_PERCENTILE,
                    max_percentile=HIGH_PERCENTILE,
                )
            ),
            spec.ClipDescr(kwargs=spec.ClipKwargs(min=0.0, max=1.0)),
        ],
    )
    probabilities = spec.OutputTensorDescr(
        id=spec.TensorId("probabilities"),
        description="class probabilities: channel 0 background, then one channel per class (sum 1 per pixel); "
        "labels: the argmax mapped to " + str([0, *classes]),
        axes=[
            spec.BatchAxis(),
            spec.ChannelAxis(channel_names=[spec.Identifier(f"class_{c}") for c in [0, *classes]]),
            *[spec.SpaceOutputAxis(id=spec.AxisId(axis), size=size) for axis in ("y", "x")],
        ],
        test_tensor=spec.FileDescr(source=folder / "test_output.npy"),
        data=spec.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
    )
    summary = adapter.data_summary
    return spec.ModelDescr(
        name=_name(name or f"samtune {adapter.base_name} prompt-free classes {' '.join(map(str, classes))}"),
        description=(
            f"Prompt-free semantic segmentation by a Segment Anything model ('{adapter.base_name}', weights sha256 "
            f"{adapter.base_sha256}) adapted with BLO prompt learning (method '{adapter.method}') in napari-samtune "
            f"on {summary.get('images', '?')} image(s) ({summary.get('train_items', '?')} training and "
            f"{summary.get('validation_items', '?')} validation items); validation score "
            f"{adapter.metrics.get('best_validation')}. Input {size} x {size}: tile larger images."
        ),
        authors=[spec.Author(name=author) for author in authors],
        cite=[spec.CiteEntry(text=text, doi=spec.Doi(doi)) for text, doi in (SAM_CITATION, BLO_CITATION)],
        license=spec.LicenseId(license),
        documentation=spec.FileDescr(source=folder / "README.md"),
        tags=["segment-anything", "sam", "blo-sam", "prompt-learning", "semantic-segmentation", "napari-samtune"],
        inputs=[raw],
        outputs=[probabilities],
        weights=spec.WeightsDescr(
            torchscript=spec.TorchscriptWeightsDescr(
                source=folder / "weights_torchscript.pt",
                pytorch_version=spec.Version(torch.__version__.split("+")[0]),
            )
        ),
        config=spec.Config(
            bioimageio=spec.BioimageioConfig(
                architecture_type="SAM ViT + learned prompts",
                task="semantic segmentation",
                training=spec.TrainingDetails(
                    training_duration=adapter.train_config.get("time_budget_s"),
                    initial_learning_rate=adapter.settings.get("lr"),
                ),
            ),
            samtune=provenance,
        ),
    )


def _name(text: str) -> str:
    """``text`` with the characters a BioImage.IO model name may not hold replaced by "-" (at most 128)."""
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+- ()")
    return "".join(ch if ch in allowed else "-" for ch in text)[:128]


def _provenance(adapter: Adapter) -> dict:
    """What the adapter records about its making, as plain YAML values."""
    return json.loads(
        json.dumps(
            {
                "base_model": adapter.base_name,
                "base_sha256": adapter.base_sha256,
                "architecture": adapter.architecture,
                "method": adapter.method,
                "settings": adapter.settings,
                "train_config": adapter.train_config,
                "task": adapter.task,
                "classes": list(adapter.classes),
                "data_summary": adapter.data_summary,
                "metrics": adapter.metrics,
                "adapter_created": adapter.created,
                "exported": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            },
            default=str,
        )
    )


def _readme(adapter: Adapter, size: int, rgb: bool, provenance: dict) -> str:
    budget = adapter.train_config.get("time_budget_s")
    return f"""# Prompt-free segmentation with an adapted Segment Anything model

Made with napari-samtune: the Segment Anything model `{adapter.base_name}` (weights sha256 `{adapter.base_sha256}`)
was adapted by **BLO prompt learning** (BLO-SAM, Zhang et al. 2024): a few prompt tokens per class were learned so
that the model segments without clicks or boxes, and the mask decoder (and LoRA weights, if any) were fine-tuned on a
disjoint part of the training data.

- **Input** `raw`: one {"RGB" if rgb else "grey"} image of {size} x {size} pixels (tile larger images); the
  preprocessing maps its {LOW_PERCENTILE:g}th and {HIGH_PERCENTILE:g}th percentiles to 0 and 1 and clips.
- **Output** `probabilities`: channel 0 background, then classes {list(adapter.classes)}; labels are the argmax.
- **Training**: method `{adapter.method}`, time budget {budget} s, data {adapter.data_summary}, validation
  score {adapter.metrics.get("best_validation")} (the adapter's metrics: {adapter.metrics}).

# Validation

Score on the adapter's own validation items (mean IoU of the prompt-free segmentation, measured during training):
{adapter.metrics.get("best_validation")}. Not an independent test: check the model on your own images.

# Provenance

Full provenance (also in `config.samtune` of the description):

```json
{json.dumps(provenance, indent=2)}
```

Cite Segment Anything (Kirillov et al. 2023) and BLO-SAM (Zhang et al. 2024) when you use this model.
"""
