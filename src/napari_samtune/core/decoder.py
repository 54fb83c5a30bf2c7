"""Prompt encoding + mask decoding for many prompts at once, shared by prediction and training.

``segment_anything``'s ``MaskDecoder.forward`` repeats one image embedding per prompt; here each prompt may come with
its own image embedding (prompts from several images or tiles in one batch), and the positional encoding of the
embedding grid is passed in so callers compute it once per model rather than at every click.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.modeling.transformer import Attention


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
    return decode_tokens(sam, image_embeddings, image_pe, sparse, embed_dense(sam, mask_inputs, sparse.shape[0]))


def decode_tokens(
    sam: Sam,
    image_embeddings: torch.Tensor,
    image_pe: torch.Tensor,
    sparse: torch.Tensor,
    dense: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``decode`` from prompt tokens: ``(N, P, C)`` sparse tokens (``embed_sparse``'s, or learned ones) and the
    ``(N, C, h, w)`` or ``(1, C, h, w)`` dense embedding (``embed_dense``). Returns ``decode``'s outputs."""
    n = sparse.shape[0]
    tokens = _output_tokens(sam, sparse)
    src = image_embeddings + dense  # broadcasts a shared (1, C, h, w) embedding over the prompts
    if src.shape[0] != n:
        src = src.expand(n, -1, -1, -1)
    pos_src = image_pe.expand(n, -1, -1, -1)
    hs, src = sam.mask_decoder.transformer(src, pos_src, tokens)
    return _mask_head(sam, hs, src, image_embeddings.shape[-2:])


def _output_tokens(sam: Sam, sparse: torch.Tensor) -> torch.Tensor:
    """The decoder's IoU and mask output tokens followed by the ``(N, P, C)`` sparse prompt tokens."""
    decoder = sam.mask_decoder
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    return torch.cat((output_tokens.unsqueeze(0).expand(sparse.shape[0], -1, -1), sparse), dim=1)


def _mask_head(
    sam: Sam, hs: torch.Tensor, src: torch.Tensor, grid: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``MaskDecoder.predict_masks`` after the transformer: all mask logits ``(N, M, 4h, 4w)`` and IoU ``(N, M)``."""
    decoder = sam.mask_decoder
    iou_token_out = hs[:, 0, :]
    mask_tokens_out = hs[:, 1 : 1 + decoder.num_mask_tokens, :]
    b, c, (h, w) = src.shape[0], src.shape[2], grid
    upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    hyper_in = torch.stack(
        [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1
    )
    b, c, h, w = upscaled.shape
    logits = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
    return logits, decoder.iou_prediction_head(iou_token_out)


@dataclass(frozen=True)
class PreparedImage:
    """The prompt-independent part of decoding one ``(1, C, h, w)`` image embedding without a mask prompt.

    Until the first image-to-token attention the decoder's image tokens do not depend on the prompts, so the first
    layer's key/value projections (token-to-image) and query projection (image-to-token) are computed once per
    embedding here instead of at every click. keys, key_pe: ``(1, h*w, C)``; the projections ``(1, h*w, C / 2)``.
    """

    keys: torch.Tensor
    key_pe: torch.Tensor
    token_to_image_k: torch.Tensor
    token_to_image_v: torch.Tensor
    image_to_token_q: torch.Tensor
    grid: tuple[int, int]


def prepare_image(sam: Sam, image_embedding: torch.Tensor, image_pe: torch.Tensor) -> PreparedImage:
    """``PreparedImage`` of a ``(1, C, h, w)`` embedding; ``image_pe`` comes from ``dense_positional_encoding``."""
    src = image_embedding + embed_dense(sam, None, 1)
    keys = src.flatten(2).permute(0, 2, 1)  # the same strided views as TwoWayTransformer, so the same numbers
    key_pe = image_pe.flatten(2).permute(0, 2, 1)
    first = sam.mask_decoder.transformer.layers[0]
    k = keys + key_pe
    return PreparedImage(
        keys=keys,
        key_pe=key_pe,
        token_to_image_k=first.cross_attn_token_to_image.k_proj(k),
        token_to_image_v=first.cross_attn_token_to_image.v_proj(keys),
        image_to_token_q=first.cross_attn_image_to_token.q_proj(k),
        grid=tuple(image_embedding.shape[-2:]),
    )


def decode_prepared(
    sam: Sam, image: PreparedImage, coords: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``decode`` without a mask prompt on a ``prepare_image`` result: the same outputs, bit for bit, faster.

    It runs ``TwoWayTransformer.forward`` operation by operation, taking the first layer's prompt-independent
    projections from ``image``.
    """
    tokens = _output_tokens(sam, embed_sparse(sam, coords, labels))
    transformer = sam.mask_decoder.transformer
    first = transformer.layers[0]  # built with skip_first_layer_pe=True: no positional encoding in self-attention
    queries = first.norm1(first.self_attn(q=tokens, k=tokens, v=tokens))
    t2i = first.cross_attn_token_to_image
    queries = queries + _attend(t2i, t2i.q_proj(queries + tokens), image.token_to_image_k, image.token_to_image_v)
    queries = first.norm2(queries)
    queries = first.norm3(queries + first.mlp(queries))
    i2t = first.cross_attn_image_to_token
    q = queries + tokens
    keys = first.norm4(image.keys + _attend(i2t, image.image_to_token_q, i2t.k_proj(q), i2t.v_proj(queries)))
    for layer in transformer.layers[1:]:
        queries, keys = layer(queries=queries, keys=keys, query_pe=tokens, key_pe=image.key_pe)
    attn_out = transformer.final_attn_token_to_image(q=queries + tokens, k=keys + image.key_pe, v=keys)
    queries = transformer.norm_final_attn(queries + attn_out)
    return _mask_head(sam, queries, keys, image.grid)


def _attend(attention: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``segment_anything``'s ``Attention.forward`` from already projected q, k, v (a shared image side broadcasts)."""
    q, k, v = (attention._separate_heads(x, attention.num_heads) for x in (q, k, v))
    weights = q @ k.permute(0, 1, 3, 2)
    weights = torch.softmax(weights / math.sqrt(q.shape[-1]), dim=-1)
    return attention.out_proj(attention._recombine_heads(weights @ v))


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
