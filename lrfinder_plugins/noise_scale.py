"""Beyond the largest batch that fits: the gradient noise scale, the throughput knee and what to
train with. Pure arithmetic, no torch: the adapters capture the gradients' squared norms.

The **simple gradient noise scale** ``B_simple = tr(Σ) / |G|²`` (McCandlish et al. 2018, "An
Empirical Model of Large-Batch Training", arXiv:1812.06162) estimates the *critical batch size*:
below it a doubled batch halves the steps to a given loss; above it, each extra sample buys
almost nothing. ``G`` is the true gradient and ``Σ`` the per-example gradient covariance.

It is measured with the unbiased two-batch estimator of the paper's appendix A.1: at batch
sizes ``b_small < b_big``, ``E|G_b|² = |G|² + tr(Σ)/b``, so from one step's ``|G_small|²`` and
``|G_big|²``

- ``|G|² ≈ (b_big |G_big|² - b_small |G_small|²) / (b_big - b_small)``,
- ``tr(Σ) ≈ (|G_small|² - |G_big|²) / (1/b_small - 1/b_big)``.

Each is unbiased but very noisy, so :class:`NoiseScaleEstimator` keeps the running mean of each
over many steps and divides at the end (a ratio of means, not a mean of ratios, which would be
biased and could divide by a negative ``|G|²``). The interval is the **delta method** for a
ratio of two means (its variance from the per-step estimates' sample variances and covariance),
normal at the stated confidence; the tests check its coverage on simulated gradients.

Example:
    >>> estimator = NoiseScaleEstimator()
    >>> for small, big in [(5.0, 2.0), (5.5, 1.9), (4.6, 2.2), (5.1, 2.0)]:
    ...     estimator.update(small, big, b_small=8, b_big=32)
    >>> round(estimator.estimate().b_simple, 1)
    31.7
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from lrfinder_plugins import _validate

CONFIDENCE = 0.95
"""The default confidence of the noise scale's interval."""

KNEE_TOLERANCE = 0.05
"""The default share of the best throughput the knee may lose (Ludwig's tuner works this way)."""

GNS_PRECISION = 0.25
"""The default relative half-width of the interval at which a measurement stops."""

LR_RULES = ("linear", "sqrt")
"""How an LR follows the batch: ``linear`` for SGD (Goyal et al. 2017), ``sqrt`` for Adam-style
optimizers (Malladi et al. 2022, "On the SDEs and Scaling Rules for Adaptive Gradient
Algorithms")."""

_SQRT_OPTIMIZERS = re.compile(r"adam|rmsprop|adagrad|adadelta|adafactor|lamb|nadam|radam", re.I)
_LINEAR_OPTIMIZERS = re.compile(r"sgd|lars|momentum|heavyball", re.I)


def _z(confidence: float) -> float:
    """The two-sided normal quantile for ``confidence`` (bisection on ``erf``: no SciPy)."""
    low, high = 0.0, 10.0
    for _ in range(80):
        mid = (low + high) / 2
        if math.erf(mid / math.sqrt(2.0)) < confidence:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def two_batch(small_sq: float, big_sq: float, b_small: float, b_big: float) -> tuple[float, float]:
    """One step's unbiased estimates ``(|G|², tr Σ)`` from the squared gradient norms at two
    batch sizes (McCandlish et al. 2018, appendix A.1).

    Args:
        small_sq: ``|G_small|²``, the squared norm of a gradient over ``b_small`` samples (or the
            mean of several such squared norms).
        big_sq: ``|G_big|²``, the squared norm of a gradient over ``b_big`` samples.
        b_small, b_big: the two batch sizes, ``0 < b_small < b_big``.

    Example:
        >>> two_batch(small_sq=3.0, big_sq=1.5, b_small=1, b_big=4)
        (1.0, 2.0)
    """
    if not 0 < b_small < b_big:
        raise ValueError(
            f"the two batch sizes must satisfy 0 < b_small < b_big, got b_small={b_small!r}, "
            f"b_big={b_big!r}; the big batch is the window (or all ranks) of the small ones"
        )
    gradient_sq = (b_big * big_sq - b_small * small_sq) / (b_big - b_small)
    trace = (small_sq - big_sq) / (1.0 / b_small - 1.0 / b_big)
    return gradient_sq, trace


@dataclass(frozen=True)
class NoiseScale:
    """An estimate of the simple gradient noise scale, with its interval.

    Attributes:
        b_simple: ``tr(Σ) / |G|²``: the ratio of the two running means (``inf`` when the mean
            ``|G|²`` is not positive: the gradient is buried in noise, any batch is too small).
        low, high: the interval at ``confidence`` (delta method); ``high`` is ``inf`` while the
            mean ``|G|²`` is not significantly above zero.
        steps: how many steps (pairs of gradients) the estimate averages.
        confidence: the interval's nominal coverage.
        gradient_sq: the mean estimate of ``|G|²``.
        trace: the mean estimate of ``tr(Σ)``.
        b_small, b_big: the batch sizes of the last pair (samples per small and big gradient).
    """

    b_simple: float
    low: float
    high: float
    steps: int
    confidence: float = CONFIDENCE
    gradient_sq: float = math.nan
    trace: float = math.nan
    b_small: float = math.nan
    b_big: float = math.nan

    @property
    def relative_half_width(self) -> float:
        """Half the interval's width over the estimate (``inf`` until it is finite)."""
        if not (math.isfinite(self.high) and math.isfinite(self.b_simple)) or self.b_simple <= 0:
            return math.inf
        return (self.high - self.low) / 2.0 / self.b_simple

    def steps_for(self, precision: float) -> int | None:
        """How many steps in all the estimate needs for a relative half-width of ``precision``:
        the half-width shrinks as ``1/sqrt(steps)``, so ``steps * (now / precision)²``
        (``None`` while the interval is unbounded).

        Example:
            >>> NoiseScale(b_simple=100.0, low=50.0, high=150.0, steps=10).steps_for(0.25)
            40
        """
        precision = _validate.positive_finite("precision", precision, "0.25")
        width = self.relative_half_width
        if not math.isfinite(width):
            return None
        return max(self.steps, math.ceil(self.steps * (width / precision) ** 2 - 1e-9))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (a non-finite number becomes ``None``)."""
        return {
            k: (v if not isinstance(v, float) or math.isfinite(v) else None)
            for k, v in asdict(self).items()
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NoiseScale:
        """Rebuild from :meth:`to_dict` (``None`` back to ``inf`` for the estimate and bounds,
        ``nan`` for the rest)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"noise_scale must be an object or null, got {data!r}")
        values: dict[str, Any] = {}
        for name in cls.__dataclass_fields__:
            value = data.get(name)
            if name == "steps":
                if not isinstance(value, int) or isinstance(value, bool):
                    raise ValueError(f"noise_scale.steps must be an int, got {value!r}")
                values[name] = value
            elif value is None:
                values[name] = math.inf if name in ("b_simple", "high") else math.nan
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                values[name] = float(value)
            else:
                raise ValueError(f"noise_scale.{name} must be a number or null, got {value!r}")
        return cls(**values)

    def describe(self) -> str:
        """``"B_simple ≈ 120 (95% interval 90-180, 40 steps)"``."""
        if not math.isfinite(self.b_simple):
            return f"B_simple: not measurable yet (|G|² not above zero after {self.steps} steps)"
        high = "∞" if not math.isfinite(self.high) else f"{self.high:.3g}"
        return (
            f"B_simple ≈ {self.b_simple:.3g} ({self.confidence:.0%} interval "
            f"{self.low:.3g}-{high}, {self.steps} steps)"
        )


class NoiseScaleEstimator:
    """Running means of the two-batch estimates, and the noise scale they give.

    Args:
        confidence: the interval's coverage, in ``(0, 1)``.
        window: keep only the last ``window`` steps (``None``: all); a window follows the noise
            scale as it changes during training.

    Example:
        >>> estimator = NoiseScaleEstimator()
        >>> estimator.update(3.0, 1.5, b_small=1, b_big=4)
        >>> estimator.steps
        1
    """

    def __init__(self, *, confidence: float = CONFIDENCE, window: int | None = None) -> None:
        self.window = None if window is None else _validate.int_at_least("window", window, 3)
        confidence = _validate.positive_finite("confidence", confidence, "0.95")
        if confidence >= 1.0:
            raise ValueError(f"confidence must be in (0, 1), got {confidence!r}; pass 0.95")
        self.confidence = confidence
        self._z = _z(confidence)
        self._gradient: list[float] = []
        self._trace: list[float] = []
        self._sizes: tuple[float, float] = (math.nan, math.nan)

    @property
    def steps(self) -> int:
        """How many steps were recorded."""
        return len(self._gradient)

    def update(self, small_sq: float, big_sq: float, *, b_small: float, b_big: float) -> None:
        """Record one step: ``small_sq`` = ``|G_small|²`` at ``b_small`` samples (the mean over
        the small gradients of the step), ``big_sq`` = ``|G_big|²`` at ``b_big``."""
        for name, value in (("small_sq", small_sq), ("big_sq", big_sq)):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise TypeError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        gradient_sq, trace = two_batch(small_sq, big_sq, b_small, b_big)
        self._gradient.append(gradient_sq)
        self._trace.append(trace)
        if self.window is not None and len(self._gradient) > self.window:
            del self._gradient[0], self._trace[0]
        self._sizes = (float(b_small), float(b_big))

    def estimate(self) -> NoiseScale | None:
        """The noise scale so far (``None`` before two steps: no interval from one)."""
        n = self.steps
        if n < 2:
            return None
        mean_g = sum(self._gradient) / n
        mean_s = sum(self._trace) / n
        var_g = sum((g - mean_g) ** 2 for g in self._gradient) / (n - 1)
        var_s = sum((s - mean_s) ** 2 for s in self._trace) / (n - 1)
        cov = sum((g - mean_g) * (s - mean_s) for g, s in zip(self._gradient, self._trace))
        cov /= n - 1
        extra = {"gradient_sq": mean_g, "trace": mean_s, "confidence": self.confidence}
        extra |= {"b_small": self._sizes[0], "b_big": self._sizes[1]}
        if mean_g <= 0:
            return NoiseScale(math.inf, 0.0, math.inf, n, **extra)
        ratio = mean_s / mean_g
        # Delta method: Var(S̄/Ḡ) ≈ (Var S - 2R Cov + R² Var G) / (n Ḡ²).
        variance = max(var_s - 2 * ratio * cov + ratio**2 * var_g, 0.0) / (n * mean_g**2)
        half = self._z * math.sqrt(variance)
        significant = mean_g - self._z * math.sqrt(var_g / n) > 0
        high = ratio + half if significant else math.inf
        return NoiseScale(ratio, max(ratio - half, 0.0), high, n, **extra)

    def precise_enough(self, precision: float) -> bool:
        """Whether the interval's relative half-width is at most ``precision`` (needs 3 steps
        at least: a variance from two is too rough to stop on)."""
        estimate = self.estimate()
        return (
            estimate is not None and self.steps >= 3 and estimate.relative_half_width <= precision
        )


def check_precision(name: str, value: Any) -> float:
    """``value`` as a relative half-width in ``(0, 1]``, or an error naming ``name``."""
    value = _validate.positive_finite(name, value, "0.25")
    if value > 1.0:
        raise ValueError(
            f"{name} is a relative half-width in (0, 1], got {value!r}; pass e.g. {name}=0.25"
        )
    return value


def throughput_knee(
    throughput: Mapping[int, float], tolerance: float = KNEE_TOLERANCE
) -> int | None:
    """The smallest batch size whose throughput is within ``tolerance`` of the best measured.

    Past it, a larger batch is hardly faster per sample (Ludwig's batch-size tuner picks so).

    Args:
        throughput: samples per second by batch size (only fitted sizes).
        tolerance: the share of the best throughput the knee may lose, in ``[0, 1)``.

    Example:
        >>> throughput_knee({8: 500.0, 16: 900.0, 32: 960.0, 64: 980.0})
        32
    """
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)):
        raise TypeError(f"knee_tolerance must be a number in [0, 1), got {tolerance!r}")
    if not 0.0 <= tolerance < 1.0:
        raise ValueError(
            f"knee_tolerance must be in [0, 1) (the share of the best throughput the knee may "
            f"lose), got {tolerance!r}; pass e.g. knee_tolerance=0.05"
        )
    rates = {s: r for s, r in throughput.items() if math.isfinite(r) and r > 0}
    if not rates:
        return None
    best = max(rates.values())
    return min(s for s, r in rates.items() if r >= (1.0 - tolerance) * best)


def hardware_friendly(size: float, *, at_most: int | None = None) -> int:
    """The nearest hardware-friendly batch size to ``size``: 1, 2, 4 or a multiple of 8 (what
    tensor cores and vector units tile), not above ``at_most``.

    Example:
        >>> hardware_friendly(115), hardware_friendly(3.1), hardware_friendly(300, at_most=100)
        (112, 4, 96)
    """
    if isinstance(size, bool) or not isinstance(size, (int, float)) or math.isnan(size):
        raise TypeError(f"size must be a number, got {size!r}")
    if at_most is not None:
        at_most = _validate.int_at_least("at_most", at_most, 1)
        size = min(size, at_most)
    if size < 8:
        # 1, 2, 4 by nearest in log space (a batch of 3 is closer to 4 than to 2 in effect)
        candidates = [c for c in (1, 2, 4, 8) if at_most is None or c <= at_most]
        return min(candidates, key=lambda c: (abs(math.log(c) - math.log(max(size, 1.0))), c))
    nearest = max(8, 8 * round(size / 8))
    while at_most is not None and nearest > at_most:
        nearest -= 8
    return nearest if nearest >= 8 else hardware_friendly(min(size, 7.0), at_most=at_most)


def lr_rule_for(optimizer: str | None) -> str | None:
    """``"linear"`` for SGD-like optimizers, ``"sqrt"`` for Adam-style ones (by class name),
    ``None`` when it is unknown.

    Example:
        >>> lr_rule_for("AdamW"), lr_rule_for("SGD"), lr_rule_for("Prodigy")
        ('sqrt', 'linear', None)
    """
    if not optimizer:
        return None
    if _SQRT_OPTIMIZERS.search(optimizer):
        return "sqrt"
    if _LINEAR_OPTIMIZERS.search(optimizer):
        return "linear"
    return None


def scale_lr(lr: float, from_batch: int, to_batch: int, rule: str) -> float:
    """The LR for ``to_batch`` given a good LR at ``from_batch``: times the batch ratio
    (``linear``) or its square root (``sqrt``).

    Example:
        >>> scale_lr(0.1, 256, 1024, "linear"), scale_lr(1e-3, 64, 256, "sqrt")
        (0.4, 0.002)
    """
    lr = _validate.positive_finite("lr", lr, "1e-3")
    from_batch = _validate.int_at_least("from_batch", from_batch, 1)
    to_batch = _validate.int_at_least("to_batch", to_batch, 1)
    rule = _validate.one_of("rule", rule, LR_RULES)
    ratio = to_batch / from_batch
    return lr * (ratio if rule == "linear" else math.sqrt(ratio))


@dataclass(frozen=True)
class Recommendation:
    """What to train with, and why.

    Attributes:
        batch_size: the per-step (per-rank) batch: ``min(largest that fits, B_crit)``, rounded
            to a hardware-friendly size.
        accumulation_steps: steps per optimizer step that reach the requested global batch
            (1 without one).
        global_batch: ``batch_size * accumulation_steps * world_size``.
        reason: one sentence on why.
        lr_rule: how to move the LR found at another batch: ``"linear"``, ``"sqrt"`` or
            ``None`` (unknown optimizer: re-run the range test, as ``tune()`` does).
    """

    batch_size: int
    accumulation_steps: int
    global_batch: int
    reason: str
    lr_rule: str | None = None

    def lr_advice(self) -> str:
        """One sentence on the LR at this batch."""
        rule = {
            "linear": "linearly with the batch (SGD, Goyal et al. 2017)",
            "sqrt": "with the square root of the batch (Adam-style, Malladi et al. 2022)",
        }
        how = rule.get(self.lr_rule or "")
        if how is None:
            return "LR: re-run the range test at this batch (tune() does)"
        return f"LR: scale {how}, or re-run the range test at this batch (tune() does)"


def recommend(
    fits: int,
    noise_scale: NoiseScale | None = None,
    *,
    world_size: int = 1,
    target_batch: int | None = None,
    optimizer: str | None = None,
) -> Recommendation:
    """``min(fits, B_crit)`` per rank, hardware-friendly, with accumulation for a target.

    Args:
        fits: the largest per-rank batch that fits (the batch-size search's answer).
        noise_scale: the measured noise scale (``B_crit ≈ B_simple``, a global batch); without
            one, or an unbounded one, the answer is ``fits``.
        world_size: ranks that train together (the global batch spans them).
        target_batch: a requested global batch: the accumulation steps reach it.
        optimizer: the optimizer's class name, for the LR rule.

    Example:
        >>> recommend(512, NoiseScale(b_simple=100.0, low=80.0, high=130.0, steps=30)).batch_size
        96
    """
    fits = _validate.int_at_least("fits", fits, 1)
    world_size = _validate.int_at_least("world_size", world_size, 1)
    if target_batch is not None:
        target_batch = _validate.int_at_least("target_batch", target_batch, 1)
    critical = None if noise_scale is None else noise_scale.b_simple
    if critical is None or not math.isfinite(critical) or critical <= 0:
        size = hardware_friendly(fits, at_most=fits)
        why = (
            "the largest size that fits (no noise scale measured: pass noise_scale=True)"
            if critical is None
            else "the largest size that fits (the noise scale is not measurable yet: the "
            "gradient is buried in noise, so a large batch helps)"
        )
    elif critical / world_size >= fits:
        size = hardware_friendly(fits, at_most=fits)
        why = (
            f"the largest size that fits: B_crit ≈ {critical:.3g} is above it, so every extra "
            "sample still pays"
        )
    else:
        size = hardware_friendly(critical / world_size, at_most=fits)
        why = (
            f"about the critical batch B_crit ≈ {critical:.3g}: beyond it, more samples per "
            "step buy almost no fewer steps"
        )
    steps = 1
    if target_batch is not None:
        steps = max(1, round(target_batch / (size * world_size)))
        if critical is not None and math.isfinite(critical) and target_batch > 2 * critical:
            why += (
                f"; the requested global batch {target_batch} is over twice B_crit, so it "
                "spends samples for little progress"
            )
    return Recommendation(size, steps, size * steps * world_size, why, lr_rule_for(optimizer))
