"""Training speed and memory against micro-sam's CPU fine-tuning on its own fixed workload (../shared/peers).

Workload (as in bench_microsam.py): a randomly initialised vit_b, 4 training + 1 validation image of 256², 6 discs
each, one image per step, up to 10 objects per batch, 8 decoder passes per step (1 + 7 corrective rounds), CPU, fp32.
micro-sam upscales the 256² images to 1024²; we run ViT-B at 256² (positional embeddings resized), as a user of this
package would. Each mode runs in its own process so its peak RSS is its own.

Peer figures (measured on a 2-core machine like ours, fp32): image encoder frozen 29.8 s/step, 13.6 GB;
LoRA rank 4 on all encoder blocks 42.1 s/step, 18.1 GB.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import target

PEER = {"frozen": (29.8, 13.6), "lora": (42.1, 18.1)}


def workload(n: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The peer's synthetic images: dark noise with 6 bright discs (radius 12–27)."""
    from skimage.draw import disk

    rng = np.random.default_rng(seed)
    images, labels = [], []
    for _ in range(n):
        lab = np.zeros((256, 256), np.int32)
        img = rng.normal(40, 10, size=(256, 256))
        for k in range(1, 7):
            r = int(rng.integers(12, 28))
            c = rng.integers(r + 2, 256 - r - 2, size=2)
            rr, cc = disk(tuple(c), r, shape=(256, 256))
            lab[rr, cc] = k
            img[rr, cc] += 120
        images.append(np.clip(img, 0, 255).astype(np.uint8))
        labels.append(lab)
    return images, labels


def worker(mode: str, steps: int, threads: int) -> dict:
    import torch

    from napari_samtune.core.models import OFFICIAL_ARCHITECTURES, SamModel, build_sam
    from napari_samtune.core.models.resize import with_input_size
    from napari_samtune.core.training.data import prepare_training_data
    from napari_samtune.core.training.interactive import InteractiveFineTuning, InteractiveSettings
    from napari_samtune.core.training.lora import LoraSettings

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    arch = OFFICIAL_ARCHITECTURES["vit_b"]
    model = with_input_size(SamModel(build_sam(arch), "vit_b", arch, "random", torch.device("cpu")), 256)
    tr_img, tr_lab = workload(4, seed=1)
    va_img, va_lab = workload(1, seed=2)
    data = prepare_training_data(tr_img + va_img, tr_lab + va_lab, task="instances", validation_fraction=0.2)
    settings = InteractiveSettings(
        lora=LoraSettings(rank=4) if mode == "lora" else None,
        units_per_step=1,
        objects_per_unit=10,
        corrective_rounds=7,
        loss_size=256,
    )
    t0 = time.perf_counter()
    method = InteractiveFineTuning(model, data, settings, cache_root=False)
    setup_s = time.perf_counter() - t0
    level = method.levels()[0]
    optimizer = torch.optim.AdamW(level.params, lr=level.lr)
    times = []
    for step in range(steps):
        t = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        level.backward(step, np.random.default_rng(step))
        optimizer.step()
        times.append(time.perf_counter() - t)
    return {
        "mode": mode,
        "setup_s": round(setup_s, 2),
        "s_per_step": float(np.median(times[1:] if len(times) > 1 else times)),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", choices=["frozen", "lora"], default=None)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args.steps, args.threads)))
        return
    results = {}
    for mode in ("frozen", "lora"):
        cmd = [sys.executable, __file__, "--worker", mode, "--steps", str(args.steps), "--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        results[mode] = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
    print(f"{'mode':<8} {'ours s/step':>12} {'peer s/step':>12} {'speed-up':>9} {'ours GB':>8} {'peer GB':>8}")
    for mode, r in results.items():
        peer_s, peer_gb = PEER[mode]
        print(
            f"{mode:<8} {r['s_per_step']:>12.3f} {peer_s:>12.1f} {peer_s / r['s_per_step']:>9.1f} "
            f"{r['peak_rss_gb']:>8.2f} {peer_gb:>8.1f}"
        )
    print(target("frozen_speedup_vs_microsam", PEER["frozen"][0] / results["frozen"]["s_per_step"], ">=", 20))
    print(target("frozen_peak_rss_gb", results["frozen"]["peak_rss_gb"], "<=", 3))
    print(target("lora_speedup_vs_microsam", PEER["lora"][0] / results["lora"]["s_per_step"], ">=", 3))


if __name__ == "__main__":
    main()
