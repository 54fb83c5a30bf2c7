"""Prompt encoding + mask decoding for many prompts at once, shared by prediction and training.

``segment_anything``'s ``MaskDecoder.forward`` repeats one image embedding per prompt; here each prompt may come with
its own image embedding (prompts from several images or tiles in one batch), and the positional encoding of the
embedding grid is passed in so callers compute it once per model rather than at every click.
"""

from __future__ import annotations

import numpy as np
import torch
from segment_anything.modeling import Sam


def dense_positional_encoding(sam: Sam) -> torch.Tensor:
    """The (1, C, h, w) positional encoding of the image embedding grid; constant for a given model."""
    return sam.prompt_encoder.get_dense_pe()


# Point labels understood by ``decode``: SAM's own (padding, negative, positive) plus its two box-corner types, so
# that points, boxes and both together can share one batch.
PAD, NEGATIVE, POSITIVE, BOX_TOP_LEFT, BOX_BOTTOM_RIGHT = -1, 0, 1, 2, 3


def embed_sparse(sam: Sam, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """SAM's sparse prompt tokens for ``(N, P, 2)`` coordinates (x, y in encoder-input pixels) and ``(N, P)`` labels.

    Identical to ``PromptEncoder`` for SAM's own prompt layouts (points then one padding point; or points then the
    two box corners), and also accepts any mix of them in one batch.
    """
    pe = sam.prompt_encoder
    emb = pe.pe_layer.forward_with_coords(coords + 0.5, pe.input_image_size)
    labels = labels[..., None]
    emb = torch.where(labels == PAD, pe.not_a_point_embed.weight, emb)
    for kind in (NEGATIVE, POSITIVE, BOX_TOP_LEFT, BOX_BOTTOM_RIGHT):
        emb = emb + (labels == kind) * pe.point_embeddings[kind].weight
    return emb


def embed_dense(sam: Sam, mask_inputs: torch.Tensor | None, n: int) -> torch.Tensor:
    """Dense prompt embedding: the downscaled mask logits ``(N, 1, 4h, 4w)``, or SAM's "no mask" embedding."""
    pe = sam.prompt_encoder
    if mask_inputs is not None:
        return pe.mask_downscaling(mask_inputs)
    h, w = pe.image_embedding_size
    return pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(n, -1, h, w)


def decode(
    sam: Sam,
    image_embeddings: torch.Tensor,
    image_pe: torch.Tensor,
    coords: torch.Tensor,
    labels: torch.Tensor,
    mask_inputs: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode N prompts. Returns low-resolution logits ``(N, M, 4h, 4w)`` and predicted IoU ``(N, M)``.

    image_embeddings: ``(N, C, h, w)`` (one per prompt) or ``(1, C, h, w)`` (shared by all prompts).
    coords ``(N, P, 2)`` / labels ``(N, P)``: see ``embed_sparse`` (``pack_prompts`` builds them).
    mask_inputs: ``(N, 1, 4h, 4w)`` logits of a previous prediction, or None.
    All M = 1 + num_multimask_outputs mask tokens are returned: index 0 is SAM's single-mask output, 1: are the
    multimask outputs.
    """
    sparse = embed_sparse(sam, coords, labels)
    n = sparse.shape[0]
    dense = embed_dense(sam, mask_inputs, n)
    decoder = sam.mask_decoder
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat((output_tokens.unsqueeze(0).expand(n, -1, -1), sparse), dim=1)

    src = image_embeddings + dense  # broadcasts a shared (1, C, h, w) embedding over the prompts
    if src.shape[0] != n:
        src = src.expand(n, -1, -1, -1)
    pos_src = image_pe.expand(n, -1, -1, -1)
    b, c, h, w = src.shape
    hs, src = decoder.transformer(src, pos_src, tokens)
    iou_token_out = hs[:, 0, :]
    mask_tokens_out = hs[:, 1 : 1 + decoder.num_mask_tokens, :]

    upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    hyper_in = torch.stack(
        [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1
    )
    b, c, h, w = upscaled.shape
    logits = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
    return logits, decoder.iou_prediction_head(iou_token_out)


def pack_prompts(
    points: list[np.ndarray | None],
    point_labels: list[np.ndarray | None],
    boxes: list[np.ndarray | None],
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack per-object prompts into ``decode``'s ``(N, P, 2)`` coordinates and ``(N, P)`` labels.

    For object i: ``points[i]`` ``(K, 2)`` x, y with ``point_labels[i]`` ``(K,)`` 1/0, and/or ``boxes[i]``
    ``(4,)`` x0, y0, x1, y1 (all in encoder-input pixels). Objects without a box get SAM's padding point; shorter
    rows are padded with padding points.
    """
    rows_c, rows_l = [], []
    for pts, lab, box in zip(points, point_labels, boxes, strict=True):
        c = np.zeros((0, 2), np.float32) if pts is None else np.asarray(pts, np.float32).reshape(-1, 2)
        l_ = np.zeros(0, np.float32) if lab is None else np.asarray(lab, np.float32).reshape(-1)
        if box is not None:
            c = np.concatenate([c, np.asarray(box, np.float32).reshape(2, 2)])
            l_ = np.concatenate([l_, [BOX_TOP_LEFT, BOX_BOTTOM_RIGHT]])
        else:
            c = np.concatenate([c, np.zeros((1, 2), np.float32)])
            l_ = np.concatenate([l_, [PAD]])
        rows_c.append(c)
        rows_l.append(l_)
    width = max(len(r) for r in rows_l)
    coords = np.zeros((len(rows_c), width, 2), np.float32)
    labels = np.full((len(rows_l), width), PAD, np.float32)
    for i, (c, l_) in enumerate(zip(rows_c, rows_l)):
        coords[i, : len(c)] = c
        labels[i, : len(l_)] = l_
    return torch.from_numpy(coords).to(device), torch.from_numpy(labels).to(device)


def normalize_pixels(sam: Sam, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) float in [0, 255] → the encoder's standardised input (SAM's pixel mean/std)."""
    return (images - sam.pixel_mean) / sam.pixel_std
