"""The field's SAM models by name: micro-sam's domain models and MedSAM, and the checkpoint layouts they come in.

Addresses and checksums are the ones the projects publish: micro-sam's model registry
(``micro_sam/v1/util.py``, ``models()``: pooch with xxh128 hashes, files on BioImage.IO's S3 and the GWDG
ownCloud). MedSAM publishes its ViT-B checkpoint only in a Google Drive folder, without a checksum or a direct
address, so it cannot be downloaded or verified here: the user downloads it and passes ``checkpoint=PATH``.

Only the SAM weights are used. micro-sam's instance-segmentation decoders (``*_decoder`` files, ``decoder_state``)
belong to its UNETR automatic segmentation, which this project does not run.
"""

from __future__ import annotations

import torch
from segment_anything.modeling import Sam

_BIOIMAGEIO = "https://uk1s3.embassy.ebi.ac.uk/public-datasets/bioimage.io/"
_GWDG = "https://owncloud.gwdg.de/index.php/s/"

# name: (url, xxh128 as published by micro-sam, what it is for)
MICRO_SAM_MODELS: dict[str, tuple[str, str, str]] = {
    "vit_b_lm": (
        _BIOIMAGEIO + "diplomatic-bug/1.2/files/vit_b.pt",
        "xxh128:fe9252a29f3f4ea53c15a06de471e186",
        "micro-sam ViT-B for light microscopy: cells and nuclei, fluorescence and label-free",
    ),
    "vit_l_lm": (
        _BIOIMAGEIO + "idealistic-rat/1.2/files/vit_l.pt",
        "xxh128:017f20677997d628426dec80a8018f9d",
        "micro-sam ViT-L for light microscopy: larger and slower than vit_b_lm",
    ),
    "vit_b_em_organelles": (
        _BIOIMAGEIO + "noisy-ox/1.2/files/vit_b.pt",
        "xxh128:f3bf2ed83d691456bae2c3f9a05fb438",
        "micro-sam ViT-B for electron microscopy organelles: mitochondria, nuclei",
    ),
    "vit_l_em_organelles": (
        _BIOIMAGEIO + "humorous-crab/1.2/files/vit_l.pt",
        "xxh128:810b084b6e51acdbf760a993d8619f2d",
        "micro-sam ViT-L for electron microscopy organelles: larger and slower than vit_b_em_organelles",
    ),
    "vit_b_histopathology": (
        _GWDG + "sBB4H8CTmIoBZsQ/download",
        "xxh128:ffd1a2cd84570458b257bd95fdd8f974",
        "micro-sam (PathoSAM) ViT-B for histopathology: nuclei in H&E-stained tissue",
    ),
    "vit_l_histopathology": (
        _GWDG + "IZgnn1cpBq2PHod/download",
        "xxh128:b591833c89754271023e901281dee3f2",
        "micro-sam (PathoSAM) ViT-L for histopathology: larger and slower than vit_b_histopathology",
    ),
    "vit_b_medical_imaging": (
        _GWDG + "f5Ol4FrjPQWfjUF/download",
        "xxh128:40169f1e3c03a4b67bff58249c176d92",
        "micro-sam (MedicoSAM) ViT-B for medical images: CT, MRI, ultrasound, X-ray, dermoscopy…",
    ),
}

MEDSAM_NAME = "medsam_vit_b"
MEDSAM_PURPOSE = "MedSAM ViT-B for medical images, prompted with boxes (download it yourself: no direct address)"
MEDSAM_PAGE = "https://github.com/bowang-lab/MedSAM (README: 'Download the model checkpoint', a Google Drive folder)"

PURPOSES: dict[str, str] = {
    "samtune_small": "bundled 2 M-parameter model: offline, fast on a CPU, any image; adapt it to your data",
    "samtune_small_v1": "the first bundled model (procedural scenes only), kept to reproduce earlier results",
    "vit_b": "Meta's SAM ViT-B: natural images, the general starting point (375 MB download)",
    "vit_l": "Meta's SAM ViT-L: natural images, larger and slower than vit_b (1.2 GB download)",
    "vit_h": "Meta's SAM ViT-H: natural images, the largest (2.4 GB download)",
    **{name: purpose for name, (_, _, purpose) in MICRO_SAM_MODELS.items()},
    MEDSAM_NAME: MEDSAM_PURPOSE,
}

# MedSAM's own inference scales each image to [0, 1] and feeds it to the encoder without SAM's per-channel
# standardisation; with images in [0, 255] that is mean 0, std 255. (MedSAM also stretches images to 1024 x 1024
# where SAM keeps the aspect ratio and pads; that difference is not reproduced.)
PIXEL_STATISTICS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    MEDSAM_NAME: ((0.0, 0.0, 0.0), (255.0, 255.0, 255.0)),
}

SAM_PARTS = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
# Containers the SAM weights are found in: torch_em / micro-sam training checkpoints ("model_state"), MedSAM's
# training checkpoints and other scripts ("model"), PyTorch Lightning ("state_dict").
_WRAPPERS = ("model_state", "model", "state_dict")
# Key prefixes around them: DataParallel/DDP ("module."), micro-sam's TrainableSAM ("sam."), Lightning ("model.").
_PREFIXES = ("module.", "sam.", "model.", "_orig_mod.")


def sam_state_dict(payload: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """The SAM weights of a checkpoint's content, in the official layout, and what was left out.

    Accepts an official state dict, or one wrapped in ``model_state`` / ``model`` / ``state_dict`` with its keys
    prefixed by ``module.``, ``sam.`` or ``model.``. Returns ``(state, notes)``; ``notes`` says which wrapper held the
    weights and what was ignored (micro-sam's ``decoder_state``, other entries). Raises ``ValueError`` with the
    reason for a file that holds no SAM image encoder (e.g. micro-sam's instance-segmentation decoder files).
    """
    notes: dict = {}
    state = payload
    for key in _WRAPPERS:
        if isinstance(payload.get(key), dict) and payload[key]:
            state, notes["layout"] = payload[key], key
            break
    if "decoder_state" in payload:
        notes["ignored"] = "micro-sam instance-segmentation decoder (decoder_state)"
    weights: dict[str, torch.Tensor] = {}
    others = 0
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            others += 1
            continue
        name = _strip_prefixes(key)
        if name.startswith(SAM_PARTS):
            weights[name] = value
        else:
            others += 1
    if others and weights:
        notes["ignored_entries"] = others
    if not any(k.startswith("image_encoder.") for k in weights):
        raise ValueError(_not_a_sam_model(state, weights))
    return weights, notes


def apply_pixel_statistics(sam: Sam, name: str) -> None:
    """Set the encoder's input mean/std to what model ``name`` was trained with (no change for SAM's own)."""
    if name not in PIXEL_STATISTICS:
        return
    mean, std = PIXEL_STATISTICS[name]
    sam.pixel_mean.copy_(torch.tensor(mean, dtype=sam.pixel_mean.dtype).view(-1, 1, 1))
    sam.pixel_std.copy_(torch.tensor(std, dtype=sam.pixel_std.dtype).view(-1, 1, 1))


def _strip_prefixes(key: str) -> str:
    stripped = True
    while stripped and not key.startswith(SAM_PARTS):
        stripped = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    return key


def _not_a_sam_model(state: dict, weights: dict) -> str:
    if any(k.startswith("mask_decoder.") for k in weights):
        return (
            "it holds SAM's prompt encoder and mask decoder but no image encoder (a decoder-only file): load the "
            "full model it was trained from instead"
        )
    keys = [k for k in state if isinstance(k, str)]
    if keys and all(
        k.split(".")[0] in {"decoder", "out_conv", "base", "deconv_out", "decoder_head"} or k.startswith("deconv")
        for k in keys
    ):
        return (
            "this looks like micro-sam's instance-segmentation decoder (a '*_decoder' file): it holds no SAM "
            "weights. Load the model file itself (e.g. the name vit_b_lm, or its vit_b.pt)"
        )
    sample = ", ".join(repr(k) for k in keys[:3])
    return (
        f"this is not a SAM state dict: no 'image_encoder.*' weights found (first keys: {sample}); expected the "
        "official layout ('image_encoder.blocks.0.attn.qkv.weight', …), possibly wrapped in 'model_state' or 'model'"
    )
