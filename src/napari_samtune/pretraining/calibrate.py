"""Calibrating the every-object mode's thresholds for a pretrained model, on held-out corpus images.

SAM keeps a grid click's mask when its predicted IoU ≥ 0.88 and its stability ≥ 0.95; those values fit SAM's own
heads. A small model's predicted IoUs sit lower and its logits are softer, so SAM-like thresholds reject every mask
(the v1 bundled model found no object at all). This picks the pair of thresholds that gives the best instance F1
(IoU 0.5) on held-out images of the pretraining corpus — never on the benchmark sets — and the export stores it in
the model file (``metadata["automatic"]``), where ``InstanceSettings.for_model`` finds it.
"""

from __future__ import annotations

import itertools

import numpy as np

from ..core.automatic import InstanceSettings, instance_candidates, select_instances
from ..core.metrics import match_instances
from ..core.models.registry import SamModel
from ..core.segmenter import Segmenter

SCORES = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
STABILITIES = (0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def calibrate_automatic(model: SamModel, pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """The ``min_score``/``min_stability`` pair of best pooled instance F1 on ``pairs`` (image, instance labels),
    with the F1 of each pair tried. Each image is predicted once; the thresholds only filter those predictions."""
    loose = InstanceSettings(min_score=0.0, min_stability=0.0)
    segmenter = Segmenter(model, cache_root=False)
    per_image = []
    for image, labels in pairs:
        segmenter.set_image(image)
        embedding = segmenter.store.plane(0)
        per_image.append((instance_candidates(segmenter.predictor, embedding, loose), labels))
    table = {}
    for score, stability in itertools.product(SCORES, STABILITIES):
        settings = InstanceSettings(min_score=score, min_stability=stability)
        counts = np.zeros(3)
        for candidates, labels in per_image:
            m = match_instances(select_instances(candidates, labels.shape, settings), labels)
            counts += (m.n_matched, m.n_pred, m.n_true)
        table[(score, stability)] = float(2 * counts[0] / max(counts[1] + counts[2], 1))
    (score, stability), f1 = max(table.items(), key=lambda item: item[1])
    return {
        "min_score": score,
        "min_stability": stability,
        "f1": f1,
        "images": len(pairs),
        "table": {f"{a:.1f}/{b:.1f}": round(v, 4) for (a, b), v in table.items()},
    }
