"""Fine-tuning in several processes (GPUs or CPU processes, one or many machines) with ``torch.distributed``.

Launched by ``torchrun`` (or ``samtune finetune --nproc N``, which re-launches itself through it), every process runs
the same shared training loop (``loop.run_training``) on its own shard of the training items, with these hooks:

- each process (rank) draws its micro-batch with its own random stream (``[seed, step, rank]``) from its shard;
- after each level's ``backward`` the gradients are averaged over the ranks (one ``all_reduce`` of a flat buffer),
  so every rank takes the same optimiser step: the result is the one process would get from the gradient of the
  *global batch*, the union of the ranks' micro-batches (up to float rounding of the sum);
- the reported losses are averaged the same way, so the NaN/inf guard decides the same on every rank;
- stopping (time budget, cancellation) is agreed on by all ranks before each step, so none waits for the others;
- only rank 0 validates, keeps the best weights and saves; its final weights are broadcast to the other ranks.

Single-process training does not go through this module (the widget's path is unchanged). The global batch is
``world_size`` times the method's own batch (e.g. ``units_per_step``): keep the method's settings and add processes
to train on more units per step, or divide them by the number of processes to keep the global batch.
"""

from __future__ import annotations

import atexit
import math
import os
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .data import DataError, TrainingData
from .loop import Level, Method, TrainConfig, TrainEvent, TrainResult, run_training
from .methods import METHODS, package_result

STOP_CODES = {None: 0, "budget": 1, "cancelled": 2}  # the highest code of any rank wins


@dataclass(frozen=True)
class Distributed:
    """This process's place in the process group: ``rank`` of ``world_size``, and the device it trains on."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True inside a process started by ``torchrun`` / ``torch.distributed.run`` with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(backend: str | None = None, device: str | None = None) -> Distributed:
    """Join the process group that ``torchrun`` describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT). ``backend``: None chooses NCCL when CUDA is available (one GPU per local rank), else
    gloo (CPU). ``device``: "cpu" forces CPU training (gloo) even where there are GPUs."""
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    backend = backend or ("nccl" if use_cuda else "gloo")
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world)
        atexit.register(shutdown)
    where = torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")
    return Distributed(dist.get_rank(), dist.get_world_size(), where)


def shutdown() -> None:
    """Leave the process group (call once at the end of each process)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def shard_data(data: TrainingData, rank: int, world_size: int) -> TrainingData:
    """This rank's share of the training items (every ``world_size``-th, from ``rank``); validation is not sharded
    (only rank 0 validates). With fewer training items than ranks every rank keeps all of them (their micro-batches
    still differ: each rank draws with its own random stream)."""
    if len(data.train) < world_size:
        return data
    return replace(data, train=data.train[rank::world_size])


class GradientSync:
    """The loop's hooks for several processes (``loop.StepSync``): per-rank random streams, averaged gradients and
    losses, stopping agreed on by all ranks."""

    def __init__(self, group: Distributed) -> None:
        self.group = group
        self.rng_key = (group.rank,)

    def agree(self, stop: str | None) -> str | None:
        """The stop reason of the run: this rank's, unless another rank stops for a stronger reason."""
        code = torch.tensor([STOP_CODES[stop]], dtype=torch.int64, device=self._comm_device)
        dist.all_reduce(code, op=dist.ReduceOp.MAX)
        return {v: k for k, v in STOP_CODES.items()}[int(code)]

    def reduce(self, params: list[torch.nn.Parameter], losses: dict[str, float]) -> dict[str, float]:
        """Average the gradients of ``params`` and the ``losses`` over the ranks (one all_reduce). A parameter that
        got no gradient on any rank keeps none (as in one process: the optimiser skips it)."""
        device = self._comm_device
        keys = sorted(losses)
        grads = [torch.zeros_like(p).reshape(-1) if p.grad is None else p.grad.reshape(-1) for p in params]
        has_grad = [float(p.grad is not None) for p in params]
        flat = torch.cat(
            [
                *(g.to(device=device, dtype=torch.float32) for g in grads),
                torch.tensor([losses[k] for k in keys] + has_grad, dtype=torch.float32, device=device),
            ]
        )
        dist.all_reduce(flat)
        flat /= self.group.world_size
        offset = 0
        for p, g in zip(params, grads):
            p.grad = flat[offset : offset + g.numel()].view_as(p).to(dtype=p.dtype, device=p.device).clone()
            offset += g.numel()
        tail = flat[offset:].tolist()
        for p, seen in zip(params, tail[len(keys) :]):
            if seen == 0.0:
                p.grad = None
        return dict(zip(keys, tail[: len(keys)]))

    @property
    def _comm_device(self) -> torch.device:
        return self.group.device if dist.get_backend() == "nccl" else torch.device("cpu")


class RankZeroValidation:
    """``method`` with validation on rank 0 only (the other ranks report −inf and keep their starting weights as
    'best'; their final weights are replaced by rank 0's)."""

    def __init__(self, method: Method, group: Distributed) -> None:
        self.method, self.group = method, group
        self.name = method.name

    def levels(self) -> list[Level]:
        return self.method.levels()

    def validate(self) -> float:
        return float(self.method.validate()) if self.group.is_main else -math.inf


def run_training_distributed(
    method: Method,
    config: TrainConfig,
    group: Distributed,
    should_stop: Callable[[], bool] = lambda: False,
) -> Generator[TrainEvent, None, TrainResult]:
    """``loop.run_training`` in one process of ``group``: yields its events and returns its ``TrainResult``; at the
    end every rank holds rank 0's final (best validated) weights."""
    training = yield from run_training(
        RankZeroValidation(method, group), config, should_stop, device=group.device, sync=GradientSync(group)
    )
    params = [p for level in method.levels() for p in level.params]
    with torch.no_grad():
        for p in params:
            buffer = p.data if p.device.type == group.device.type else p.data.to(group.device)
            dist.broadcast(buffer, src=0)
            if buffer is not p.data:
                p.data.copy_(buffer)
    return training


def distributed_fine_tune(
    model,
    data: TrainingData,
    group: Distributed,
    method: str = "interactive",
    settings: object | None = None,
    config: TrainConfig | None = None,
    *,
    should_stop: Callable[[], bool] = lambda: False,
    cache_root: str | Path | bool | None = None,
) -> Iterator[TrainEvent]:
    """``fine_tune.fine_tune`` in one process of ``group`` (the same arguments; ``model`` on ``group.device``):
    each rank trains on its shard of ``data.train``; returns the ``FineTuneResult`` (the same on every rank: save it
    on rank 0 only). The automatic configuration search (``method="auto"``) is not distributed."""
    if method not in METHODS:
        raise DataError(f"method {method!r} cannot run in several processes; choose one of {sorted(METHODS)}")
    settings_cls, method_cls = METHODS[method]
    settings = settings if settings is not None else settings_cls()
    config = config or TrainConfig()
    work = model.copy()
    try:
        runner = method_cls(work, shard_data(data, group.rank, group.world_size), settings, cache_root=cache_root)
    except ValueError as error:
        raise DataError(f"method {method!r} cannot train on rank {group.rank}'s share of the data: {error}") from error
    training = yield from run_training_distributed(runner, config, group, should_stop)
    return package_result(model, work, runner, data, method, settings, config, training)


def relaunch_with_torchrun(nproc: int, module_args: list[str], module: str = "napari_samtune") -> int:
    """Run ``python -m module *module_args`` in ``nproc`` processes on this machine through ``torch.distributed.run``
    (what ``torchrun --standalone --nproc-per-node nproc -m module ...`` does); returns the exit code."""
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(["--standalone", "--nproc-per-node", str(nproc), "-m", module])
    args.training_script_args = list(module_args)  # set here: torchrun's parser would take e.g. --nproc for its own
    try:
        run(args)
    except Exception as error:  # torchrun's ChildFailedError names the failed rank and its traceback
        print(f"samtune: a training process failed: {error}")
        return 1
    return 0


def per_rank_rng(seed: int, step: int, rank: int) -> np.random.Generator:
    """The random stream rank ``rank`` trains step ``step`` with (what the loop creates under ``GradientSync``)."""
    return np.random.default_rng([seed, step, rank])
