import sys
sys.path.insert(0, "benchmarks")
import numpy as np, tempfile, torch, itertools
from pathlib import Path
from scipy import ndimage
from _common import set_threads
set_threads(1)
import generalize as G
from adapt import embed, run_fine_tune
from napari_samtune.core.automatic import class_logits
from napari_samtune.core.metrics import match_instances
from napari_samtune.core.models.registry import load_model
from napari_samtune.core.training import blo
from napari_samtune.core.training.blo import BLOSettings, BLOPromptLearning
from napari_samtune.core.training.data import prepare_training_data, TrainingData
import torch.nn.functional as F

budget = float(sys.argv[1]); variants = sys.argv[2].split(",")
model = load_model("samtune_small", device="cpu")
pairs = G.pick_images(G.SETS[0], 2)
cache = Path(tempfile.mkdtemp())
orig_target = BLOPromptLearning._target
def balanced_target(self, unit):
    onehot, w = orig_target(self, unit)
    fg = onehot[1:].sum(0, keepdim=True)
    kf, kb = (w * fg).sum(), (w * (1 - fg)).sum()
    nw = w * (fg * 0.5 / kf.clamp_min(1e-6) + (1 - fg) * 0.5 / kb.clamp_min(1e-6)) * w.sum()
    return onehot, nw
counter = itertools.count()
for v in variants:
    BLOPromptLearning._target = balanced_target if "bal" in v else orig_target
    if "last" in v:
        BLOPromptLearning.validate = lambda self: float(next(counter))
    else:
        BLOPromptLearning.validate = blo.BLOPromptLearning.__dict__["validate"] if False else BLOPromptLearning.validate
    margin = 12 if "m12" in v else 4
    rng = np.random.default_rng(0)
    counts = np.zeros(3); fgs = []
    for pair in pairs:
        ids = np.unique(pair.labels[pair.labels > 0])
        labeled = rng.choice(ids, size=max(1, round(0.2 * len(ids))), replace=False)
        painted = np.isin(pair.labels, labeled)
        complete = "all" in v
        labels = (pair.labels > 0).astype(int) if complete else np.where(painted, 1, 0)
        data = prepare_training_data([pair.image], [labels], classes=[1], all_objects_labeled=complete, background_margin=margin)
        if "nohold" in v:
            from napari_samtune.core.training.data import Item
            it = data.train[0]
            k = (labels > 0) if complete else None
            from napari_samtune.core.training.data import known_pixels
            full = Item(0, 0, labels.astype(np.int32), None if complete else known_pixels(labels, None, margin))
            data.train, data.validation = [full], [full]
        result, secs, hist = run_fine_tune(model, data, "blo", BLOSettings(), budget, cache)
        prob = torch.sigmoid(class_logits(result.model, embed(result.model, pair.image, cache), result.model.prompt_embeddings)[0]).numpy()
        comp, _ = ndimage.label(prob > 0.5)
        onl = ndimage.mean(painted, comp, index=np.arange(1, comp.max() + 1)) > 0.5
        comp[np.isin(comp, np.flatnonzero(onl) + 1)] = 0
        m = match_instances(comp, np.where(painted, 0, pair.labels))
        counts += (m.n_matched, m.n_pred, m.n_true)
        unl = (pair.labels > 0) & ~painted
        fgs.append(f"fg {(prob>0.5).mean():.3f} p_unl {prob[unl].mean():.2f} p_bg {prob[pair.labels==0].mean():.2f} steps {result.training.steps}")
    print(f"{v}: F1 {2*counts[0]/max(counts[1]+counts[2],1):.3f} | " + " | ".join(fgs), flush=True)
