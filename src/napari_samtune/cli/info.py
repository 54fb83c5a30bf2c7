"""``samtune models`` and ``samtune cache``: what models there are, and the embedding cache."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.embedding_cache import clear_cache, embeddings_root, list_stores, max_cache_bytes
from ..core.models.registry import BUNDLED_NAMES, MODEL_SOURCES, available_models, cache_dir, model_purpose


def add_commands(commands: argparse._SubParsersAction) -> None:
    commands.add_parser("models", help="list the available models").set_defaults(run=cmd_models)
    cache = commands.add_parser("cache", help="show the embedding cache's size, or clear it")
    cache.add_argument("action", choices=["info", "clear"])
    cache.add_argument("--cache-dir", type=Path, help="embedding cache folder (default: the user cache folder)")
    cache.set_defaults(run=cmd_cache)


def cmd_models(args: argparse.Namespace) -> int:
    """Print the model names ``--model`` accepts, what each is for and whether it is here yet."""
    for name in available_models():
        if name in BUNDLED_NAMES:
            where = "bundled"
        elif (cache_dir() / "checkpoints" / MODEL_SOURCES[name].filename).is_file():
            where = "downloaded"
        elif MODEL_SOURCES[name].url is None:
            where = "needs --checkpoint"
        else:
            where = "downloaded on first use"
        print(f"{name:<22} {where:<24} {model_purpose(name)}")
    print(f"{'custom':<22} {'needs --checkpoint':<24} any SAM state dict (official, micro-sam or MedSAM layout)")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    """Show or clear the embedding cache."""
    root = embeddings_root(args.cache_dir)
    if args.action == "clear":
        count, freed = clear_cache(root)
        print(f"removed {count} store(s), {freed / 1e9:.2f} GB, from {root}")
        return 0
    stores = list_stores(root)
    limit = max_cache_bytes()
    print(f"{root}: {len(stores)} store(s), {sum(s.size_bytes for s in stores) / 1e9:.2f} GB", end="")
    print(f" (limit {limit / 1e9:g} GB, SAMTUNE_CACHE_MAX_GB)" if limit else " (no limit)")
    return 0
