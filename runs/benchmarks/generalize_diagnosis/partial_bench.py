import sys, tempfile
sys.path.insert(0, "benchmarks")
from pathlib import Path
from _common import set_threads
set_threads(1)
import generalize as G
from napari_samtune.core.models.registry import load_model
model = load_model("samtune_small", device="cpu")
budget = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
print(budget, G.partial_labels(model, G.pick_images(G.SETS[0], 2), budget, Path(tempfile.mkdtemp())))
