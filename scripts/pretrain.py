"""Pretrain (or resume) the bundled small model, then export it into the package.

    python scripts/pretrain.py --run-dir runs/pretrain            # train/resume until the schedule or budget ends
    python scripts/pretrain.py --run-dir runs/pretrain --export   # write src/napari_samtune/models/samtune_small.pt
    python scripts/pretrain.py --run-dir runs/pretrain --curve    # the learning curve (markdown) from log.jsonl

The run resumes exactly from runs/pretrain/checkpoint.pt (see napari_samtune.core.pretraining). The budget counts
the training process's CPU time: 3 hours on 2 cores = 21,600 CPU-seconds, whatever the number of threads.
"""

from __future__ import annotations

import argparse
import json
import signal
import time
from pathlib import Path

import torch

from napari_samtune.core.models.architecture import SamArchitecture, build_sam
from napari_samtune.core.models.registry import save_model
from napari_samtune.core.pretraining import PretrainConfig, pretrain, synthetic_evaluation

PACKAGE_MODELS = Path(__file__).resolve().parents[1] / "src" / "napari_samtune" / "models"


def export(run_dir: Path) -> None:
    ckpt = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    config = PretrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in ckpt["config"].items()})
    arch = SamArchitecture.from_dict(config.architecture)
    sam = build_sam(arch)
    sam.load_state_dict(ckpt["model"])
    state = ckpt["state"]
    out = PACKAGE_MODELS / "samtune_small.pt"
    sha = save_model(sam, arch, out, half=True, steps=state["step"], cpu_seconds=state["cpu_s"], recipe="pretrain")
    (PACKAGE_MODELS / "samtune_small.json").write_text(
        json.dumps({"sha256": sha, "steps": state["step"], "cpu_seconds": state["cpu_s"]}, indent=2) + "\n"
    )
    print(f"exported {out} ({out.stat().st_size / 1e6:.1f} MB, sha256 {sha}) after {state['step']} steps")


def learning_curve(run_dir: Path) -> str:
    """Markdown table of the held-out synthetic quality logged at each checkpoint, against training CPU time."""
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("event") == "checkpoint"]
    lines = [
        "| step | CPU-minutes | budget minutes (CPU ÷ 2 cores) | synthetic click mIoU | synthetic box mIoU |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['step']} | {r['cpu_s'] / 60:.0f} | {r['cpu_s'] / 120:.0f} | {r['synthetic_click_miou']:.3f} | "
            f"{r['synthetic_box_miou']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/pretrain"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--total-steps", type=int, default=PretrainConfig.total_steps)
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps in this call")
    parser.add_argument("--cpu-hours", type=float, default=6.0, help="budget of CPU time for the whole run")
    parser.add_argument("--pool-workers", type=int, default=2)
    parser.add_argument("--checkpoint-minutes", type=float, default=10.0)
    parser.add_argument("--export", action="store_true", help="only export the current checkpoint")
    parser.add_argument("--curve", action="store_true", help="only print the learning curve from the log")
    args = parser.parse_args()
    if args.curve:
        print(learning_curve(args.run_dir))
        return
    if args.export:
        export(args.run_dir)
        return
    torch.set_num_threads(args.threads)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    config = PretrainConfig(total_steps=args.total_steps)
    t0 = time.monotonic()
    for event in pretrain(
        config,
        args.run_dir,
        max_steps=args.max_steps,
        cpu_budget_s=args.cpu_hours * 3600,
        checkpoint_every_s=args.checkpoint_minutes * 60,
        pool_workers=args.pool_workers,
        evaluate=synthetic_evaluation(),
        should_stop=lambda: stop["now"],
    ):
        if event["step"] % 10 == 0:
            print(
                f"step {event['step']} loss {event['loss']:.3f} dice {event['dice']:.3f} lr {event['lr']:.2e} "
                f"cpu {event['cpu_s'] / 60:.1f} min wall {(time.monotonic() - t0) / 60:.1f} min",
                flush=True,
            )


if __name__ == "__main__":
    main()
