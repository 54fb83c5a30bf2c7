import sys, time
sys.path.insert(0, "benchmarks")
import numpy as np, tempfile
from pathlib import Path
from scipy import ndimage
from _common import set_threads
set_threads(1)
import generalize as G
from adapt import embed, run_fine_tune
from napari_samtune.core.automatic import segment_automatic, class_logits
from napari_samtune.core.metrics import match_instances
from napari_samtune.core.models.registry import load_model
from napari_samtune.core.training.blo import BLOSettings
from napari_samtune.core.training.data import prepare_training_data
import torch

budget = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
margin = int(sys.argv[2]) if len(sys.argv) > 2 else 4
model = load_model("samtune_small", device="cpu")
pairs = G.pick_images(G.SETS[0], 2)
cache = Path(tempfile.mkdtemp())
rng = np.random.default_rng(0)
for pair in pairs:
    ids = np.unique(pair.labels[pair.labels > 0])
    labeled = rng.choice(ids, size=max(1, round(0.2 * len(ids))), replace=False)
    painted = np.isin(pair.labels, labeled)
    print(pair.name, pair.image.shape, "nuclei", len(ids), "labeled", len(labeled), "truth fg frac %.3f" % (pair.labels > 0).mean())
    for name, labels, complete in (("partial", np.where(painted, 1, 0), False), ("all", (pair.labels > 0).astype(np.int64), True)):
        data = prepare_training_data([pair.image], [labels], classes=[1], all_objects_labeled=complete, background_margin=margin)
        tr, va = data.train[0], data.validation[0]
        def stats(it):
            k = it.known if it.known is not None else np.ones(it.labels.shape, bool)
            return f"objs {ndimage.label(it.labels>0)[1]} known {k.mean():.3f} fg/known {(it.labels[k]>0).mean():.3f}"
        print(f"  {name}: train {stats(tr)} | val {stats(va)}")
        result, secs, hist = run_fine_tune(model, data, "blo", BLOSettings(), budget, cache)
        print("  steps", result.training.steps, "hist", [(h['step'], round(h['validation'], 3)) for h in result.training.history])
        emb = embed(result.model, pair.image, cache)
        logits = class_logits(result.model, emb, result.model.prompt_embeddings)[0]
        prob = torch.sigmoid(logits).numpy()
        fg = prob > 0.5
        unl = (pair.labels > 0) & ~painted
        print(f"  pred fg {fg.mean():.3f}; prob mean on unlabeled nuclei {prob[unl].mean():.3f}, on labeled {prob[painted].mean():.3f}, on bg {prob[pair.labels==0].mean():.3f}")
        # best threshold
        for t in (0.1, 0.2, 0.3, 0.5):
            comp, _ = ndimage.label(prob > t)
            onl = ndimage.mean(painted, comp, index=np.arange(1, comp.max() + 1)) > 0.5
            comp[np.isin(comp, np.flatnonzero(onl) + 1)] = 0
            m = match_instances(comp, np.where(painted, 0, pair.labels))
            print(f"    t={t}: fgfrac {(prob>t).mean():.3f} F1 {2*m.n_matched/max(m.n_pred+m.n_true,1):.3f} (matched {m.n_matched} pred {m.n_pred} true {m.n_true})")
        # semantic IoU on unlabeled nuclei pixel-wise
        inter = (fg & unl).sum(); print(f"  recall of unlabeled nuclei pixels {inter/unl.sum():.3f}")
