"""The search space of automatic fine-tuning: every choice the training loop and its methods can make, as data.

A ``Configuration`` is a validated, JSON-serialisable mapping from dimension names to values. Dimensions can be
conditional: on the method (``methods``) and on a boolean switch (``requires``, e.g. the LoRA rank only with LoRA on).
Inactive dimensions are simply absent from a configuration. ``Configuration.to_settings`` turns it into what
``fine_tune`` takes: the method name, the method's settings object and the loop's ``TrainConfig``.

The schedule length ``steps`` is a multiple of ``RUNGS``: validation happens at ``RUNGS`` evenly spaced *rungs*
(``steps // RUNGS`` steps apart), so learning curves of every configuration share one grid of fidelities.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..loop import SCHEDULES, TrainConfig
from ..lora import LoraSettings
from ..methods import METHODS

RUNGS = 8  # validations per schedule; fidelity = rungs done
LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "qkv": ("qkv",),
    "attention": ("qkv", "attn.proj"),
    "all": ("qkv", "attn.proj", "lin1", "lin2"),
}
SPACE_METHODS = ("interactive", "blo", "sum")  # methods the space describes (used when registered in METHODS)
KINDS = ("categorical", "float", "int", "bool")


@dataclass(frozen=True)
class Dimension:
    """One choice. ``low``/``high`` bound numbers (``log``: sampled and encoded on a log scale); ``choices`` list a
    categorical's values; ``methods`` (empty: all) and ``requires`` (a bool dimension that must be on) make it
    conditional; ``multiple_of`` quantises integers."""

    name: str
    kind: str
    default: Any
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()
    methods: tuple[str, ...] = ()
    requires: str | None = None
    multiple_of: int = 1
    help: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"dimension {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind in ("float", "int") and (self.low is None or self.high is None or self.low >= self.high):
            raise ValueError(f"dimension {self.name!r} needs low < high")
        if self.log and self.low <= 0:
            raise ValueError(f"dimension {self.name!r} is on a log scale and needs low > 0")
        if self.kind == "categorical" and self.default not in self.choices:
            raise ValueError(f"dimension {self.name!r}: default {self.default!r} is not one of {self.choices}")
        self.check(self.default)

    def check(self, value: Any) -> Any:
        """``value`` in this dimension's type (ints from whole floats, as JSON gives them); ValueError if invalid."""
        if self.kind == "categorical":
            if value not in self.choices:
                raise ValueError(f"{self.name} must be one of {list(self.choices)}, got {value!r}")
            return value
        if self.kind == "bool":
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"{self.name} must be true or false, got {value!r}")
            return bool(value)
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ValueError(f"{self.name} must be a number, got {value!r}")
        if self.kind == "int":
            if float(value) != round(float(value)):
                raise ValueError(f"{self.name} must be a whole number, got {value!r}")
            value = round(float(value))
            if value % self.multiple_of:
                raise ValueError(f"{self.name} must be a multiple of {self.multiple_of}, got {value}")
        else:
            value = float(value)
        if not self.low <= value <= self.high:
            raise ValueError(f"{self.name} must be in [{self.low:g}, {self.high:g}], got {value:g}")
        return value

    def sample(self, rng: np.random.Generator) -> Any:
        if self.kind == "categorical":
            return self.choices[rng.integers(len(self.choices))]
        if self.kind == "bool":
            return bool(rng.random() < 0.5)
        lo, hi = (math.log(self.low), math.log(self.high)) if self.log else (self.low, self.high)
        x = rng.uniform(lo, hi)
        x = math.exp(x) if self.log else x
        if self.kind == "float":
            return float(min(max(x, self.low), self.high))
        q = self.multiple_of
        return int(min(max(round(x / q) * q, math.ceil(self.low / q) * q), math.floor(self.high / q) * q))

    def unit(self, value: Any) -> float:
        """A number's position in [0, 1] on its (log) scale."""
        lo, hi, x = (
            (math.log(self.low), math.log(self.high), math.log(value)) if self.log else (self.low, self.high, value)
        )
        return (x - lo) / (hi - lo)

    @property
    def width(self) -> int:
        """Length of this dimension's part of the numeric encoding."""
        return len(self.choices) if self.kind == "categorical" else 1


def _dims() -> tuple[Dimension, ...]:
    both = ("interactive", "blo", "sum")
    prompted = ("interactive", "sum")
    return (
        Dimension("method", "categorical", "interactive", choices=SPACE_METHODS, help="adaptation method"),
        # What is trained
        Dimension("train_decoder", "bool", True, methods=both, help="train the mask decoder"),
        Dimension("train_prompt_encoder", "bool", False, methods=prompted, help="train the prompt encoder"),
        Dimension("lora", "bool", False, help="LoRA adapters on the image encoder"),
        Dimension("lora_rank", "int", 4, 1, 32, log=True, requires="lora"),
        Dimension("lora_alpha_ratio", "float", 2.0, 0.5, 4.0, log=True, requires="lora", help="alpha / rank"),
        Dimension("lora_dropout", "float", 0.0, 0.0, 0.3, requires="lora"),
        Dimension("lora_targets", "categorical", "qkv", choices=tuple(LORA_TARGETS), requires="lora"),
        # Optimisation
        Dimension("lr", "float", 3e-4, 1e-5, 1e-1, log=True, help="learning rate of the weights"),
        Dimension("weight_decay", "float", 0.01, 1e-5, 0.3, log=True),
        Dimension("grad_clip", "float", 1.0, 0.1, 10.0, log=True),
        # Schedule
        Dimension("schedule", "categorical", "cosine", choices=tuple(SCHEDULES)),
        Dimension("steps", "int", 320, RUNGS * 2, 8000, log=True, multiple_of=RUNGS, help="schedule length"),
        Dimension("warmup_fraction", "float", 0.03, 0.0, 0.2, help="warm-up steps as a share of the schedule"),
        Dimension("min_lr_ratio", "float", 0.05, 1e-3, 0.5, log=True, help="floor of the decayed learning rate"),
        # Batch composition and prompt simulation
        Dimension("units_per_step", "int", 4, 1, 16, log=True, help="images (tiles) per step"),
        Dimension("objects_per_unit", "int", 8, 1, 32, log=True, methods=prompted),
        Dimension("corrective_rounds", "int", 2, 0, 4, methods=prompted),
        Dimension("click_fraction", "float", 0.5, 0.0, 1.0, methods=prompted, help="share of clicks vs boxes"),
        Dimension("box_jitter", "float", 0.08, 0.0, 0.2, methods=prompted),
        # BLO prompt learning: prompts, their learning rate, the data split and the loss weights
        Dimension("n_tokens", "int", 4, 1, 16, log=True, methods=("blo",)),
        Dimension("prompt_lr", "float", 3e-3, 1e-4, 1e-1, log=True, methods=("blo",)),
        Dimension("split_fraction", "float", 0.5, 0.2, 0.8, methods=("blo",)),
        Dimension("second_order", "bool", False, methods=("blo",)),
        Dimension("focal_weight", "float", 1.0, 0.1, 20.0, log=True, methods=("blo",)),
        Dimension("ce_weight", "float", 1.0, 0.1, 10.0, log=True, methods=("blo",)),
        Dimension("dice_weight", "float", 1.0, 0.1, 10.0, log=True, methods=("blo",)),
        # SUM: the unlabeled side
        Dimension("unlabeled_weight", "float", 1.0, 0.1, 10.0, log=True, methods=("sum",)),
        Dimension("uncertainty", "categorical", "refinement", choices=("refinement", "prompt", "entropy"),
                  methods=("sum",)),
        Dimension("weighting", "bool", True, methods=("sum",)),
    )  # fmt: skip


DIMENSIONS: tuple[Dimension, ...] = _dims()
_BY_NAME = {d.name: d for d in DIMENSIONS}
# Settings fields taken over unchanged per method (the rest are built from several dimensions).
_DIRECT = {
    "interactive": (
        "train_decoder", "train_prompt_encoder", "lr", "weight_decay", "units_per_step", "objects_per_unit",
        "corrective_rounds", "click_fraction", "box_jitter",
    ),
    "blo": (
        "train_decoder", "lr", "weight_decay", "units_per_step", "n_tokens", "prompt_lr", "split_fraction",
        "second_order", "focal_weight", "ce_weight", "dice_weight",
    ),
}  # fmt: skip
_DIRECT["sum"] = (*_DIRECT["interactive"], "unlabeled_weight", "uncertainty", "weighting")


def space_version() -> str:
    """A hash of the dimensions: meta-knowledge built for another space cannot be used with this one."""
    spec = [(d.name, d.kind, d.low, d.high, d.log, list(d.choices), list(d.methods), d.requires) for d in DIMENSIONS]
    return hashlib.blake2b(json.dumps(spec).encode(), digest_size=6).hexdigest()


def is_active(dim: Dimension, values: Mapping[str, Any]) -> bool:
    """Whether ``dim`` applies given the (already decided) method and switches in ``values``."""
    if dim.methods and values.get("method") not in dim.methods:
        return False
    return dim.requires is None or bool(values.get(dim.requires))


class Configuration(Mapping):
    """A validated point of the search space (read-only mapping of the active dimensions to their values)."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        unknown = set(values) - set(_BY_NAME)
        if unknown:
            raise ValueError(f"unknown configuration keys {sorted(unknown)}; known: {sorted(_BY_NAME)}")
        checked: dict[str, Any] = {}
        for dim in DIMENSIONS:  # in order, so a dimension's conditions are decided before it
            if not is_active(dim, checked):
                if dim.name in values:
                    raise ValueError(f"{dim.name} does not apply here (method {checked.get('method')!r}): remove it")
                continue
            if dim.name not in values:
                raise ValueError(f"configuration misses {dim.name!r}")
            checked[dim.name] = dim.check(values[dim.name])
        if not (checked.get("train_decoder") or checked.get("train_prompt_encoder") or checked["lora"]):
            raise ValueError("nothing to train: enable train_decoder, train_prompt_encoder or lora")
        self._values = checked

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Configuration({self._values!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self) == dict(other)

    def __hash__(self) -> int:
        return hash(self.to_json())

    def replace(self, **changes: Any) -> Configuration:
        """A new configuration with ``changes``; dimensions that become active get their defaults, those that
        become inactive are dropped."""
        merged = {**self._values, **changes}
        values: dict[str, Any] = {}
        for dim in DIMENSIONS:
            if is_active(dim, values):
                values[dim.name] = merged.get(dim.name, dim.default)
        return Configuration(values)

    def to_json(self) -> str:
        return json.dumps(self._values, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Configuration:
        return cls(json.loads(text))

    def summary(self) -> str:
        """A short human-readable description, e.g. ``interactive decoder+LoRA r8 lr 3e-04 cosine 320 steps``."""
        v = self._values
        parts = (("decoder", "train_decoder"), ("prompt encoder", "train_prompt_encoder"))
        trained = [label for label, key in parts if v.get(key)]
        if v["lora"]:
            trained.append(f"LoRA r{v['lora_rank']}")
        return f"{v['method']} {'+'.join(trained)} lr {v['lr']:.0e} {v['schedule']} {v['steps']} steps"

    def to_settings(self, seed: int = 0) -> tuple[str, object, TrainConfig]:
        """(method name, the method's settings object, the loop's ``TrainConfig``) for ``fine_tune``."""
        v, method = self._values, self._values["method"]
        if method not in METHODS:
            raise ValueError(f"method {method!r} is not available in this installation; choose from {sorted(METHODS)}")
        lora = None
        if v["lora"]:
            rank = v["lora_rank"]
            lora = LoraSettings(rank, v["lora_alpha_ratio"] * rank, v["lora_dropout"], LORA_TARGETS[v["lora_targets"]])
        settings = METHODS[method][0](lora=lora, **{k: v[k] for k in _DIRECT[method]})
        steps = v["steps"]
        config = TrainConfig(
            steps=steps,
            schedule=v["schedule"],
            warmup_steps=round(v["warmup_fraction"] * steps),
            min_lr_ratio=v["min_lr_ratio"],
            grad_clip=v["grad_clip"],
            validate_every=steps // RUNGS,
            seed=seed,
        )
        return method, settings, config


class SearchSpace:
    """The dimensions restricted to ``methods`` (in the order given; the first is the default method)."""

    def __init__(self, methods: tuple[str, ...] = ("interactive",)) -> None:
        unknown = set(methods) - set(SPACE_METHODS)
        if not methods or unknown:
            raise ValueError(f"methods must be a non-empty subset of {SPACE_METHODS}, got {methods}")
        self.methods = tuple(methods)
        self.dimensions = DIMENSIONS

    def default(self, method: str | None = None) -> Configuration:
        """What the package uses when the user does not choose (the settings classes' defaults)."""
        values: dict[str, Any] = {"method": method or self.methods[0]}
        for dim in DIMENSIONS[1:]:
            if is_active(dim, values):
                values[dim.name] = dim.default
        return Configuration(values)

    def sample(self, rng: np.random.Generator) -> Configuration:
        """A random configuration: method uniform, numbers uniform on their (log) scale, switches 50/50."""
        while True:
            values: dict[str, Any] = {"method": self.methods[rng.integers(len(self.methods))]}
            for dim in DIMENSIONS[1:]:
                if is_active(dim, values):
                    values[dim.name] = dim.sample(rng)
            try:
                return Configuration(values)
            except ValueError:  # nothing to train: draw the switches again
                continue

    def validate(self, values: Mapping[str, Any]) -> Configuration:
        config = values if isinstance(values, Configuration) else Configuration(values)
        if config["method"] not in self.methods:
            raise ValueError(f"method {config['method']!r} is not in this search space ({list(self.methods)})")
        return config


def encoding_width() -> int:
    return sum(d.width for d in DIMENSIONS)


def encode(config: Mapping[str, Any]) -> np.ndarray:
    """``(encoding_width(),)`` float32: one-hot categoricals, 0/1 switches, numbers in [0, 1] on their scale;
    inactive dimensions are all zeros (the method one-hot and the switches say which are active)."""
    out = np.zeros(encoding_width(), np.float32)
    i = 0
    for dim in DIMENSIONS:
        if dim.name in config:
            value = config[dim.name]
            if dim.kind == "categorical":
                out[i + dim.choices.index(value)] = 1.0
            elif dim.kind == "bool":
                out[i] = float(value)
            else:
                out[i] = dim.unit(value)
        i += dim.width
    return out
