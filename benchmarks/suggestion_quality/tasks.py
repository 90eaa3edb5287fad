"""The benchmark's tasks: small CPU problems built from scikit-learn's bundled data or generated.

Each task fixes its data split, model, optimizer, batch size and step budget; a seed changes only
the model's initialisation and the batch order. Nothing is downloaded.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

OptimizerFactory = Callable[[list[nn.Parameter], float], torch.optim.Optimizer]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Data:
    """A fixed train/held-out split (float32 inputs; long class ids or float targets)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor


@dataclass(frozen=True)
class Task:
    """One benchmark problem.

    Attributes:
        name: a short id (also the cache key, with ``version``).
        description: model, optimizer and data in words (for the results table).
        kind: ``"classification"`` or ``"regression"``.
        data: builds the fixed split.
        model: builds the model (call under ``torch.manual_seed``).
        optimizer: ``optimizer(params, lr)``.
        loss: ``loss(outputs, targets)``, a scalar mean loss.
        batch_size: training batch size (range tests use it too).
        steps: the fixed training budget in optimizer steps.
        version: bump to invalidate this task's cached results.
    """

    name: str
    description: str
    kind: str
    data: Callable[[], Data]
    model: Callable[[], nn.Module]
    optimizer: OptimizerFactory
    loss: LossFn
    batch_size: int
    steps: int
    version: int = 1

    @functools.cached_property
    def split(self) -> Data:
        """The task's data (built once)."""
        return self.data()

    def build_model(self, seed: int) -> nn.Module:
        """The model initialised from ``seed``."""
        torch.manual_seed(seed)
        return self.model()

    def batches(self, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless shuffled training batches (epoch after epoch, last partial batch dropped)."""
        data = self.split
        n = len(data.x_train)
        generator = torch.Generator().manual_seed(10_000 + seed)
        while True:
            order = torch.randperm(n, generator=generator)
            for start in range(0, n - self.batch_size + 1, self.batch_size):
                idx = order[start : start + self.batch_size]
                yield data.x_train[idx], data.y_train[idx]

    def loader(self, seed: int) -> torch.utils.data.DataLoader:
        """A shuffled ``DataLoader`` over the training set (for the finders that need one)."""
        data = self.split
        return torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(data.x_train, data.y_train),
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=True,
            generator=torch.Generator().manual_seed(20_000 + seed),
        )

    @property
    def key(self) -> str:
        """The cache key: name and version."""
        return f"{self.name}@v{self.version}"


# -- data -----------------------------------------------------------------------------------------
def _split(x: np.ndarray, y: np.ndarray, *, val: float = 0.3, regression: bool = False) -> Data:
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    cut = round(len(x) * (1 - val))
    tr, va = order[:cut], order[cut:]
    mean, std = x[tr].mean(0), x[tr].std(0) + 1e-8
    x = (x - mean) / std
    if regression:
        y_mean, y_std = y[tr].mean(), y[tr].std()
        y = ((y - y_mean) / y_std).astype(np.float32).reshape(-1, 1)
        ty: Callable[[np.ndarray], torch.Tensor] = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    else:
        ty = lambda a: torch.tensor(a, dtype=torch.long)  # noqa: E731
    tx = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return Data(tx(x[tr]), ty(y[tr]), tx(x[va]), ty(y[va]))


def _digits() -> Data:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return _split(x.astype(np.float64), y)


def _digits_images() -> Data:
    data = _digits()
    # the pixels were standardised per pixel; the CNN sees them as 1x8x8 images
    return Data(
        data.x_train.reshape(-1, 1, 8, 8), data.y_train, data.x_val.reshape(-1, 1, 8, 8), data.y_val
    )


def _breast_cancer() -> Data:
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    data = _split(x, y)
    as_float = lambda t: t.float().reshape(-1, 1)  # noqa: E731  (BCE-with-logits targets)
    return Data(data.x_train, as_float(data.y_train), data.x_val, as_float(data.y_val))


def _wine() -> Data:
    from sklearn.datasets import load_wine

    x, y = load_wine(return_X_y=True)
    return _split(x, y)


def _diabetes() -> Data:
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    return _split(x, y, regression=True)


def _friedman() -> Data:
    from sklearn.datasets import make_friedman1

    x, y = make_friedman1(n_samples=2000, n_features=10, noise=0.5, random_state=0)
    return _split(x, y, regression=True)


def _moons() -> Data:
    from sklearn.datasets import make_moons

    x, y = make_moons(n_samples=1500, noise=0.25, random_state=0)
    return _split(x, y)


def _linear_regression() -> Data:
    from sklearn.datasets import make_regression

    x, y = make_regression(
        n_samples=1000,
        n_features=20,
        n_informative=12,
        noise=20.0,
        effective_rank=8,
        random_state=0,
    )
    return _split(x, y, regression=True)


def _classification() -> Data:
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=2000,
        n_features=20,
        n_informative=10,
        n_redundant=4,
        n_classes=4,
        n_clusters_per_class=2,
        class_sep=1.2,
        random_state=0,
    )
    return _split(x, y)


SEQ_LEN, VOCAB = 12, 6


def _majority_tokens() -> Data:
    """Token sequences; the label is the most frequent token (ties: the smallest id)."""
    rng = np.random.default_rng(0)
    n = 3000
    # skewed token probabilities per sequence so the majority is learnable but not trivial
    probs = rng.dirichlet(np.full(VOCAB, 0.7), size=n)
    tokens = np.stack([rng.choice(VOCAB, size=SEQ_LEN, p=p) for p in probs])
    counts = np.stack([(tokens == v).sum(1) for v in range(VOCAB)], axis=1)
    labels = counts.argmax(1)
    cut = int(n * 0.7)
    t = lambda a: torch.tensor(a, dtype=torch.long)  # noqa: E731
    return Data(t(tokens[:cut]), t(labels[:cut]), t(tokens[cut:]), t(labels[cut:]))


# -- models ---------------------------------------------------------------------------------------
def mlp(
    sizes: tuple[int, ...], *, batchnorm: bool = False, act: type[nn.Module] = nn.ReLU
) -> nn.Module:
    """A plain MLP: Linear (BatchNorm) activation ... Linear."""
    layers: list[nn.Module] = []
    for fan_in, fan_out in itertools.pairwise(sizes[:-1]):
        layers.append(nn.Linear(fan_in, fan_out))
        if batchnorm:
            layers.append(nn.BatchNorm1d(fan_out))
        layers.append(act())
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return nn.Sequential(*layers)


def small_cnn(*, batchnorm: bool) -> nn.Module:
    """Two 3x3 convolutions on 1x8x8 digits, global average pooling, a linear head."""
    norm = (lambda c: nn.BatchNorm2d(c)) if batchnorm else (lambda c: nn.Identity())
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        norm(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        norm(32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


class TinyTransformer(nn.Module):
    """One pre-norm encoder layer over token + position embeddings, mean-pooled, linear head."""

    def __init__(self, vocab: int = VOCAB, seq_len: int = SEQ_LEN, width: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.randn(seq_len, width) * 0.02)
        self.encoder = nn.TransformerEncoderLayer(
            width, nhead=2, dim_feedforward=64, dropout=0.0, batch_first=True, norm_first=True
        )
        self.head = nn.Linear(width, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(self.embed(tokens) + self.pos)
        return self.head(hidden.mean(1))


# -- optimizers -----------------------------------------------------------------------------------
def sgd(momentum: float = 0.0) -> OptimizerFactory:
    """Plain SGD (``momentum=0``) or heavy-ball SGD."""
    return lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=momentum)


def adam(params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """Adam with PyTorch's defaults."""
    return torch.optim.Adam(params, lr=lr)


def adamw(params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """AdamW with PyTorch's defaults (weight decay 0.01)."""
    return torch.optim.AdamW(params, lr=lr)


CE: LossFn = nn.functional.cross_entropy
MSE: LossFn = nn.functional.mse_loss
BCE: LossFn = nn.functional.binary_cross_entropy_with_logits

TASKS: tuple[Task, ...] = (
    Task(
        "digits_mlp_sgd",
        "digits, MLP 64-64-10, SGD",
        "classification",
        _digits,
        lambda: mlp((64, 64, 10)),
        sgd(),
        CE,
        32,
        300,
    ),
    Task(
        "digits_mlp_bn_sgdm",
        "digits, MLP 64-128-64-10 + BatchNorm, SGD momentum 0.9",
        "classification",
        _digits,
        lambda: mlp((64, 128, 64, 10), batchnorm=True),
        sgd(0.9),
        CE,
        64,
        300,
    ),
    Task(
        "digits_cnn_bn_adam",
        "digits 8x8, CNN + BatchNorm, Adam",
        "classification",
        _digits_images,
        lambda: small_cnn(batchnorm=True),
        adam,
        CE,
        64,
        200,
    ),
    Task(
        "digits_cnn_sgdm",
        "digits 8x8, CNN, SGD momentum 0.9",
        "classification",
        _digits_images,
        lambda: small_cnn(batchnorm=False),
        sgd(0.9),
        CE,
        64,
        200,
    ),
    Task(
        "diabetes_mlp_adamw",
        "diabetes, MLP 10-32-1, MSE, AdamW",
        "regression",
        _diabetes,
        lambda: mlp((10, 32, 1)),
        adamw,
        MSE,
        32,
        150,
    ),
    Task(
        "cancer_mlp_adam",
        "breast cancer, MLP 30-32-1, BCE, Adam",
        "classification",
        _breast_cancer,
        lambda: mlp((30, 32, 1)),
        adam,
        BCE,
        32,
        200,
    ),
    Task(
        "friedman_mlp_bn_sgdm",
        "make_friedman1, MLP 10-64-64-1 + BatchNorm, MSE, SGD momentum 0.9",
        "regression",
        _friedman,
        lambda: mlp((10, 64, 64, 1), batchnorm=True),
        sgd(0.9),
        MSE,
        64,
        400,
    ),
    Task(
        "moons_mlp_adamw",
        "make_moons, MLP 2-64-64-2, AdamW",
        "classification",
        _moons,
        lambda: mlp((2, 64, 64, 2)),
        adamw,
        CE,
        32,
        300,
    ),
    Task(
        "wine_mlp_tanh_sgd",
        "wine, MLP 13-32-3 tanh, SGD",
        "classification",
        _wine,
        lambda: mlp((13, 32, 3), act=nn.Tanh),
        sgd(),
        CE,
        16,
        200,
    ),
    Task(
        "linreg_sgd",
        "make_regression (ill-conditioned), linear model, MSE, SGD",
        "regression",
        _linear_regression,
        lambda: nn.Linear(20, 1),
        sgd(),
        MSE,
        32,
        300,
    ),
    Task(
        "classif_mlp_deep_sgdm",
        "make_classification 4 classes, MLP 20-64-64-64-4, SGD momentum 0.9",
        "classification",
        _classification,
        lambda: mlp((20, 64, 64, 64, 4)),
        sgd(0.9),
        CE,
        32,
        300,
    ),
    Task(
        "transformer_adamw",
        "majority token of 12, 1-layer transformer (width 32), AdamW",
        "classification",
        _majority_tokens,
        TinyTransformer,
        adamw,
        CE,
        64,
        300,
    ),
)
"""Every task, in a fixed order."""

DEV_TASKS: tuple[str, ...] = tuple(t.name for t in TASKS[0::2])
"""The split the default suggester's parameters were chosen on (every other task, fixed in
advance, before any result was looked at)."""
CONFIRM_TASKS: tuple[str, ...] = tuple(t.name for t in TASKS[1::2])
"""The split the chosen parameters were confirmed on."""

SEEDS: tuple[int, ...] = (0, 1, 2)


def by_name(name: str) -> Task:
    """The task called ``name``."""
    for task in TASKS:
        if task.name == name:
            return task
    raise KeyError(f"no task {name!r}; known: {[t.name for t in TASKS]}")
