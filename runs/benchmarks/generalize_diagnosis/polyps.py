import sys
sys.path.insert(0, "benchmarks")
import numpy as np, tempfile, torch
from pathlib import Path
from _common import set_threads
set_threads(1)
import generalize as G
from adapt import embed, run_fine_tune, class_map, otsu_fit, otsu_predict
from napari_samtune.core.automatic import class_logits
from napari_samtune.core.models.registry import load_model
from napari_samtune.core.training.blo import BLOSettings
from napari_samtune.core.training.data import prepare_training_data

budget = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
n = int(sys.argv[2]) if len(sys.argv) > 2 else 2
spec = [s for s in G.SETS if s.name == "polyps"][0]
model = load_model("samtune_small", device="cpu")
cache = Path(tempfile.mkdtemp())
def iou(p, t): return (p & t).sum() / max((p | t).sum(), 1)
for pair in G.pick_images(spec, n):
    left, right = G.halves(pair)
    tl, tr = class_map(spec, left.labels) > 0, class_map(spec, right.labels) > 0
    print(pair.name, pair.image.shape, f"polyp frac left {tl.mean():.3f} right {tr.mean():.3f}")
    data = prepare_training_data([left.image], [class_map(spec, left.labels)], classes=[1], all_objects_labeled=True)
    print("  train/val fg", [f"{(it.labels>0).mean():.3f}/{(it.known.mean() if it.known is not None else 1):.2f}" for it in data.train + data.validation])
    result, secs, hist = run_fine_tune(model, data, "blo", BLOSettings(), budget, cache)
    print("  steps", result.training.steps, "hist", [(h['step'], round(h['validation'], 3)) for h in result.training.history])
    for side, half, t in (("left", left, tl), ("right", right, tr)):
        prob = torch.sigmoid(class_logits(result.model, embed(result.model, half.image, cache), result.model.prompt_embeddings)[0]).numpy()
        p = prob > 0.5
        print(f"  {side}: IoU {iou(p,t):.3f} pred frac {p.mean():.3f} TP {(p&t).sum()} FP {(p&~t).sum()} FN {(~p&t).sum()}; prob mean on polyp {prob[t].mean() if t.any() else float('nan'):.3f} on bg {prob[~t].mean():.3f}; best-thr IoU " +
              " ".join(f"{th}:{iou(prob>th,t):.2f}" for th in (0.2,0.35,0.5,0.65,0.8)))
    m = otsu_fit([left.image], [class_map(spec, left.labels)], spec.n_classes)
    o = otsu_predict(right.image, m) > 0
    print(f"  otsu right IoU {iou(o,tr):.3f} pred frac {o.mean():.3f}")
