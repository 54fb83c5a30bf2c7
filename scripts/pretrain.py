"""Pretrain (or resume) the bundled small model, then export it into the package.

    python scripts/pretrain.py --run-dir runs/pretrain            # train/resume until the schedule or budget ends
    python scripts/pretrain.py --run-dir runs/pretrain --export   # write src/napari_samtune/models/samtune_small.pt
    python scripts/pretrain.py --run-dir runs/pretrain --curve    # the learning curve (markdown) from log.jsonl

The run resumes exactly from runs/pretrain/checkpoint.pt (see napari_samtune.pretraining.recipe). The budget counts
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
from napari_samtune.core.models.registry import SamModel, save_model
from napari_samtune.pretraining.calibrate import calibrate_automatic
from napari_samtune.pretraining.corpus import INSTANCE_SOURCES, load_corpus
from napari_samtune.pretraining.evaluation import corpus_evaluation, synthetic_evaluation
from napari_samtune.pretraining.recipe import RECIPES, pretrain

PACKAGE_MODELS = Path(__file__).resolve().parents[1] / "src" / "napari_samtune" / "models"
EXPORT_NAMES = {"v1": "samtune_small_v1", "v2": "samtune_small"}


def export(run_dir: Path, recipe: str, corpus_dir: Path | None, calibration_images: int = 8) -> None:
    """Write the run's checkpoint into the package (fp16), with every-object thresholds calibrated on held-out
    corpus nuclei (with the fp16 weights the package will hold)."""
    ckpt = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    arch = SamArchitecture.from_dict(ckpt["config"]["architecture"])
    sam = build_sam(arch)
    sam.load_state_dict({k: v.half().float() if v.is_floating_point() else v for k, v in ckpt["model"].items()})
    state = ckpt["state"]
    held_out = load_corpus(corpus_dir, sources=INSTANCE_SOURCES).held_out[INSTANCE_SOURCES[0]]
    pairs = [(item.image, item.labels) for item in held_out[:calibration_images]]
    model = SamModel(sam.eval(), "calibration", arch, "calibration", torch.device("cpu"))
    automatic = calibrate_automatic(model, pairs)
    print("every-object F1 on held-out corpus nuclei by min_score/min_stability:", automatic.pop("table"))
    automatic["calibrated_on"] = f"{len(pairs)} held-out images of {INSTANCE_SOURCES[0]} (pretraining corpus)"
    name = EXPORT_NAMES[recipe]
    out = PACKAGE_MODELS / f"{name}.pt"
    sha = save_model(
        sam,
        arch,
        out,
        half=True,
        steps=state["step"],
        cpu_seconds=state["cpu_s"],
        recipe=f"pretrain {recipe}",
        automatic=automatic,
    )
    record = {"sha256": sha, "recipe": recipe, "steps": state["step"], "cpu_seconds": state["cpu_s"]}
    (PACKAGE_MODELS / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"exported {out} ({out.stat().st_size / 1e6:.1f} MB, sha256 {sha}) after {state['step']} steps")


def learning_curve(run_dir: Path) -> str:
    """Markdown table of the held-out synthetic quality logged at each checkpoint, against training CPU time."""
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("event") == "checkpoint"]
    columns = [k for k in rows[-1] if k.endswith("_miou")] if rows else []
    lines = [
        "| step | CPU-minutes | " + " | ".join(c.removesuffix("_miou").replace("_", " ") for c in columns) + " |",
        "|---:|---:|" + "---:|" * len(columns),
    ]
    for r in rows:
        values = " | ".join(f"{r[c]:.3f}" if c in r else "" for c in columns)
        lines.append(f"| {r['step']} | {r['cpu_s'] / 60:.0f} | {values} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="v2")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/pretrain_v2"))
    parser.add_argument("--corpus", type=Path, default=None, help="default: ../shared/pretrain_corpus")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps in this call")
    parser.add_argument("--cpu-hours", type=float, default=12.0, help="budget of CPU time for the whole run")
    parser.add_argument("--pool-workers", type=int, default=2)
    parser.add_argument("--checkpoint-minutes", type=float, default=10.0)
    parser.add_argument("--export", action="store_true", help="only export the current checkpoint")
    parser.add_argument("--curve", action="store_true", help="only print the learning curve from the log")
    args = parser.parse_args()
    if args.curve:
        print(learning_curve(args.run_dir))
        return
    if args.export:
        export(args.run_dir, args.recipe, args.corpus)
        return
    torch.set_num_threads(args.threads)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    config = RECIPES[args.recipe]
    corpus = load_corpus(args.corpus) if config.source_weights is not None else None
    evaluations = [synthetic_evaluation()] + ([corpus_evaluation(corpus)] if corpus is not None else [])
    t0 = time.monotonic()
    for event in pretrain(
        config,
        args.run_dir,
        max_steps=args.max_steps,
        cpu_budget_s=args.cpu_hours * 3600,
        checkpoint_every_s=args.checkpoint_minutes * 60,
        pool_workers=args.pool_workers,
        evaluate=lambda sam, step: {k: v for e in evaluations for k, v in e(sam, step).items()},
        should_stop=lambda: stop["now"],
        corpus=corpus,
    ):
        if event["step"] % 10 == 0:
            print(
                f"step {event['step']} loss {event['loss']:.3f} dice {event['dice']:.3f} lr {event['lr']:.2e} "
                f"cpu {event['cpu_s'] / 60:.1f} min wall {(time.monotonic() - t0) / 60:.1f} min",
                flush=True,
            )


if __name__ == "__main__":
    main()
