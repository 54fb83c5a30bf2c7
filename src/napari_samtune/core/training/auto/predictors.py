"""Performance and cost predictors, meta-trained on learning curves of many configurations × tasks.

Performance: a deep ensemble of small MLPs. Each member maps a predictor input (configuration, dataset
meta-features, schedule length, curve prefix, target rung; see ``features``) to the mean (through a sigmoid, scores
are in [0, 1]) and variance of the validation score at the target rung, trained by Gaussian negative log-likelihood
on a bootstrap sample of the curves. The prediction is the members' average; its variance adds their disagreement
(what the meta-data does not pin down) to their noise estimate. Why not the deep-kernel GP of Quick-Tune: with a few
hundred curves and a CPU, the ensemble trains in seconds, predicts in microseconds in plain numpy (no O(n³) solve
during the user's budget), and the target task's own information reaches it the same way it reaches the GP's
curve features: through the curve prefix, which is an input. Dataset shift on the target task is corrected online by
``search`` (a shrunken offset from the observed residuals).

Cost: ridge regressions of log seconds per training step, per validation and for the setup (model copy, units,
embeddings) on the configuration and dataset encodings. The search rescales them by observed/predicted ratios on
the user's machine, which absorbs the hardware difference from the machine that built the meta-data (whose costs are
CPU seconds of one thread, see ``scripts/build_meta_knowledge.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COSTS = ("setup_s", "step_s", "validation_s")
_MIN_SCALE = 1e-3  # standard deviation below which an input column counts as constant
_CLIP = 6.0  # standardised inputs are clipped to ±_CLIP


@dataclass
class PerformancePredictor:
    """Ensemble of MLPs ``(in → hidden → hidden → 2)``; ``layers[m]`` = [(W, b), ...] of member m; inputs are
    standardised by ``mean``/``scale``."""

    mean: np.ndarray
    scale: np.ndarray
    layers: list[list[tuple[np.ndarray, np.ndarray]]]

    def predict(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation ``(n,)`` of the score for inputs ``(n, width)``."""
        x = standardise(np.atleast_2d(inputs), self.mean, self.scale)
        means, variances = [], []
        for member in self.layers:
            h = x
            for w, b in member[:-1]:
                h = h @ w + b
                h = h / (1.0 + np.exp(-h))  # SiLU
            w, b = member[-1]
            out = h @ w + b
            means.append(_sigmoid(out[:, 0]))
            variances.append(_softplus(out[:, 1]) + 1e-4)
        means_arr, variances_arr = np.stack(means), np.stack(variances)
        return means_arr.mean(0), np.sqrt(variances_arr.mean(0) + means_arr.var(0))

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        out = {f"{prefix}mean": self.mean, f"{prefix}scale": self.scale}
        for m, member in enumerate(self.layers):
            for i, (w, b) in enumerate(member):
                out[f"{prefix}m{m}_w{i}"], out[f"{prefix}m{m}_b{i}"] = w, b
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str) -> PerformancePredictor:
        layers = []
        m = 0
        while f"{prefix}m{m}_w0" in arrays:
            member, i = [], 0
            while f"{prefix}m{m}_w{i}" in arrays:
                member.append((arrays[f"{prefix}m{m}_w{i}"], arrays[f"{prefix}m{m}_b{i}"]))
                i += 1
            layers.append(member)
            m += 1
        if not layers:
            raise ValueError("no performance-predictor weights in the meta-knowledge file")
        return cls(arrays[f"{prefix}mean"], arrays[f"{prefix}scale"], layers)


@dataclass
class CostPredictor:
    """Ridge regressions of log seconds: ``weights[name]`` ``(width + 1,)`` (last: intercept) for each of ``COSTS``;
    inputs standardised by ``mean``/``scale``."""

    mean: np.ndarray
    scale: np.ndarray
    weights: dict[str, np.ndarray]

    def predict(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Seconds ``(n,)`` of each of ``COSTS`` for inputs ``(n, width)`` (configuration + dataset encoding)."""
        x = standardise(np.atleast_2d(inputs), self.mean, self.scale)
        x = np.concatenate([x, np.ones((len(x), 1), x.dtype)], axis=1)
        return {name: np.exp(x @ w) for name, w in self.weights.items()}

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {
            f"{prefix}mean": self.mean,
            f"{prefix}scale": self.scale,
            **{f"{prefix}{name}": w for name, w in self.weights.items()},
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str) -> CostPredictor:
        return cls(arrays[f"{prefix}mean"], arrays[f"{prefix}scale"], {n: arrays[f"{prefix}{n}"] for n in COSTS})


def fit_performance(
    inputs: np.ndarray,
    targets: np.ndarray,
    groups: np.ndarray,
    *,
    members: int = 5,
    hidden: int = 64,
    epochs: int = 400,
    seed: int = 0,
) -> PerformancePredictor:
    """Fit the ensemble. inputs ``(n, width)``, targets ``(n,)`` scores in [0, 1], groups ``(n,)`` the curve each
    example comes from (members are trained on bootstrap samples of whole curves). Full-batch Adam; seconds on a
    CPU for a few thousand examples."""
    import torch

    mean, scale = standardisation(inputs)
    x_all = torch.from_numpy(standardise(inputs, mean, scale).astype(np.float32))
    y_all = torch.from_numpy(targets.astype(np.float32))
    rng = np.random.default_rng(seed)
    unique = np.unique(groups)
    layers = []
    for m in range(members):
        torch.manual_seed(seed * 1000 + m)
        chosen = rng.choice(unique, size=len(unique), replace=True)
        counts = np.bincount(np.searchsorted(unique, chosen), minlength=len(unique))
        weight = torch.from_numpy(counts[np.searchsorted(unique, groups)].astype(np.float32))
        net = torch.nn.Sequential(
            torch.nn.Linear(x_all.shape[1], hidden),
            torch.nn.SiLU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.SiLU(),
            torch.nn.Linear(hidden, 2),
        )
        optimizer = torch.optim.Adam(net.parameters(), lr=3e-3, weight_decay=1e-4)
        for _ in range(epochs):
            optimizer.zero_grad()
            out = net(x_all)
            mu = torch.sigmoid(out[:, 0])
            var = torch.nn.functional.softplus(out[:, 1]) + 1e-4
            nll = 0.5 * (torch.log(var) + (y_all - mu) ** 2 / var)
            ((nll * weight).sum() / weight.sum()).backward()
            optimizer.step()
        linears = [module for module in net if isinstance(module, torch.nn.Linear)]
        layers.append([(lin.weight.detach().numpy().T.copy(), lin.bias.detach().numpy().copy()) for lin in linears])
    return PerformancePredictor(mean.astype(np.float32), scale, layers)


def fit_costs(inputs: np.ndarray, seconds: dict[str, np.ndarray], ridge: float = 1.0) -> CostPredictor:
    """Ridge regression of ``log(seconds[name])`` on standardised ``inputs`` ``(n, width)`` for each of ``COSTS``."""
    mean, scale = standardisation(inputs)
    x = standardise(inputs, mean, scale)
    x = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    penalty = ridge * np.eye(x.shape[1])
    penalty[-1, -1] = 0.0  # the intercept is not shrunk
    weights = {}
    for name in COSTS:
        y = np.log(np.maximum(seconds[name], 1e-5))
        weights[name] = np.linalg.solve(x.T @ x + penalty, x.T @ y).astype(np.float32)
    return CostPredictor(mean.astype(np.float32), scale, weights)


def standardisation(inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and scale ``(width,)`` float32 of the columns of ``inputs``; a column that (nearly) does not vary in the
    meta-data (e.g. the number of images, when every task had the same) keeps scale 1, so that another value on the
    user's task is not blown up into a huge input."""
    std = inputs.std(0)
    return inputs.mean(0).astype(np.float32), np.where(std > _MIN_SCALE, std, 1.0).astype(np.float32)


def standardise(inputs: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``(inputs - mean) / scale``, clipped to ±``_CLIP``: a task beyond the range of the meta-data is predicted as one
    at its edge, not extrapolated without bound."""
    return np.clip((inputs - mean) / scale, -_CLIP, _CLIP)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)
