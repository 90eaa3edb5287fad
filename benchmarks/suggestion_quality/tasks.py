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
        family: the model family (leave-one-family-out selection holds one out at a time).
        subset: ``"dev"`` (constants may be chosen on it) or ``"confirm"`` (reported only).
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
    family: str = "mlp"
    subset: str = "dev"

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


# -- data and models added for issue 15 ----------------------------------------------------------
def _label_noise(data: Data, share: float) -> Data:
    """``share`` of the training labels replaced by uniformly random classes (held-out: clean)."""
    generator = torch.Generator().manual_seed(5)
    y = data.y_train.clone()
    classes = int(y.max()) + 1
    flip = torch.rand(len(y), generator=generator) < share
    y[flip] = torch.randint(0, classes, (int(flip.sum()),), generator=generator)
    return Data(data.x_train, y, data.x_val, data.y_val)


def _digits_noisy() -> Data:
    return _label_noise(_digits(), 0.3)


def _bars() -> Data:
    """Synthetic 1x12x12 images: a horizontal bar, a vertical bar, a diagonal or a cross at a
    random place, in Gaussian noise (4 classes, 2400 images)."""
    rng = np.random.default_rng(0)
    n, size = 2400, 12
    images = rng.normal(0.0, 0.6, size=(n, 1, size, size))
    labels = rng.integers(0, 4, size=n)
    for k in range(n):
        r, c, length = rng.integers(2, size - 2), rng.integers(2, size - 2), rng.integers(4, 8)
        lo_r, lo_c = max(0, r - length // 2), max(0, c - length // 2)
        if labels[k] in (0, 3):
            images[k, 0, r, lo_c : lo_c + length] += 1.5
        if labels[k] in (1, 3):
            images[k, 0, lo_r : lo_r + length, c] += 1.5
        if labels[k] == 2:
            for d in range(length):
                if lo_r + d < size and lo_c + d < size:
                    images[k, 0, lo_r + d, lo_c + d] += 1.5
    cut = int(n * 0.7)
    tx = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    ty = lambda a: torch.tensor(a, dtype=torch.long)  # noqa: E731
    return Data(tx(images[:cut]), ty(labels[:cut]), tx(images[cut:]), ty(labels[cut:]))


def _filtered_sequences() -> Data:
    """Real sequences (length 16): the target is tanh of a decaying sum of the inputs, a
    nonlinear recurrence an RNN can learn (standardised regression target)."""
    rng = np.random.default_rng(0)
    n, length = 2000, 16
    x = rng.normal(size=(n, length, 1))
    state = np.zeros(n)
    for t in range(length):
        state = 0.8 * state + x[:, t, 0] - 0.3 * np.sin(2 * state)
    y = np.tanh(state / 2)
    y = (y - y[:1400].mean()) / y[:1400].std()
    tx = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return Data(
        tx(x[:1400]), tx(y[:1400]).reshape(-1, 1), tx(x[1400:]), tx(y[1400:]).reshape(-1, 1)
    )


def _transfer_source() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_classification

    return make_classification(
        n_samples=3000,
        n_features=20,
        n_informative=12,
        n_redundant=4,
        n_classes=6,
        n_clusters_per_class=2,
        class_sep=1.0,
        random_state=3,
    )


def _finetune_target() -> Data:
    """The fine-tuning task: 500 inputs the backbone never saw, relabelled into 3 coarse classes
    (source class mod 3) with 20% of the source classes' boundary moved (a new task on the same
    inputs); 300 train, 200 held out. Standardised with the source's statistics."""
    x, y = _transfer_source()
    mean, std = x[:2500].mean(0), x[:2500].std(0) + 1e-8
    x = (x - mean) / std
    x_t, y_t = x[2500:], (y[2500:] % 3)
    rng = np.random.default_rng(1)
    moved = rng.random(len(y_t)) < 0.2
    y_t = np.where(moved & (x_t[:, 0] > 0), (y_t + 1) % 3, y_t)
    tx = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    ty = lambda a: torch.tensor(a, dtype=torch.long)  # noqa: E731
    return Data(tx(x_t[:300]), ty(y_t[:300]), tx(x_t[300:]), ty(y_t[300:]))


@functools.cache
def pretrained_backbone() -> dict[str, torch.Tensor]:
    """The fine-tuning tasks' backbone (MLP 20-64-64, ReLU), pre-trained once on the 6-class
    source task (2500 samples, Adam 1e-3, 600 steps of 64, fixed seeds): deterministic, built
    in code in about a second, so nothing is downloaded or committed."""
    x, y = _transfer_source()
    mean, std = x[:2500].mean(0), x[:2500].std(0) + 1e-8
    xs = torch.tensor((x[:2500] - mean) / std, dtype=torch.float32)
    ys = torch.tensor(y[:2500], dtype=torch.long)
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        backbone = _backbone()
        head = nn.Linear(64, 6)
        model = nn.Sequential(backbone, head)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        generator = torch.Generator().manual_seed(4321)
        for _ in range(600):
            idx = torch.randint(0, len(xs), (64,), generator=generator)
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(xs[idx]), ys[idx]).backward()
            optimizer.step()
    return {k: v.detach().clone() for k, v in backbone.state_dict().items()}


def _backbone() -> nn.Module:
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())


def finetune_model() -> nn.Module:
    """The pre-trained backbone and a new 3-class head (initialised from the current seed);
    the backbone's parameters come first, the head's two last."""
    backbone = _backbone()
    backbone.load_state_dict(pretrained_backbone())
    return nn.Sequential(backbone, nn.Linear(64, 3))


class TokenRNN(nn.Module):
    """Token embedding, a one-layer GRU or LSTM, a linear head on the last hidden state."""

    def __init__(self, cell: str, vocab: int = VOCAB, width: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 16)
        self.rnn = (nn.GRU if cell == "gru" else nn.LSTM)(16, width, batch_first=True)
        self.head = nn.Linear(width, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embed(tokens))
        return self.head(out[:, -1])


class SequenceRNN(nn.Module):
    """A one-layer GRU or LSTM over real sequences, a linear head on the last hidden state."""

    def __init__(self, cell: str, width: int = 32) -> None:
        super().__init__()
        self.rnn = (nn.GRU if cell == "gru" else nn.LSTM)(1, width, batch_first=True)
        self.head = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class ResidualBlock(nn.Module):
    """``x + f(x)``: two 3x3 convolutions with BatchNorm (images) or two linears with LayerNorm."""

    def __init__(self, width: int, *, conv: bool) -> None:
        super().__init__()
        if conv:
            self.body: nn.Module = nn.Sequential(
                nn.Conv2d(width, width, 3, padding=1),
                nn.BatchNorm2d(width),
                nn.ReLU(),
                nn.Conv2d(width, width, 3, padding=1),
                nn.BatchNorm2d(width),
            )
        else:
            self.body = nn.Sequential(
                nn.LayerNorm(width), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def residual_cnn() -> nn.Module:
    """A 3x3 stem (16 channels), two residual blocks, global average pooling, a linear head."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        ResidualBlock(16, conv=True),
        nn.ReLU(),
        ResidualBlock(16, conv=True),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


def residual_mlp(fan_in: int, width: int, out: int, blocks: int) -> nn.Module:
    """A linear stem, ``blocks`` pre-LayerNorm residual blocks, a final LayerNorm and a head."""
    return nn.Sequential(
        nn.Linear(fan_in, width),
        *(ResidualBlock(width, conv=False) for _ in range(blocks)),
        nn.LayerNorm(width),
        nn.Linear(width, out),
    )


def bars_cnn() -> nn.Module:
    """Two 3x3 convolutions (no normalisation) on 1x12x12 images, max pooling, a linear head."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    )


class LayerNormTransformer(nn.Module):
    """``layers`` post-LayerNorm encoder layers (PyTorch's default order) over token and
    position embeddings, mean-pooled, a linear head."""

    def __init__(self, layers: int = 2, vocab: int = VOCAB, seq_len: int = SEQ_LEN) -> None:
        super().__init__()
        width = 32
        self.embed = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.randn(seq_len, width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            width, nhead=4, dim_feedforward=64, dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens) + self.pos).mean(1))


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


def adamw_decay(weight_decay: float) -> OptimizerFactory:
    """AdamW with a given (strong) weight decay."""
    return lambda params, lr: torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def sgd_decay(momentum: float, weight_decay: float) -> OptimizerFactory:
    """SGD with momentum and L2 weight decay."""
    return lambda params, lr: torch.optim.SGD(
        params, lr=lr, momentum=momentum, weight_decay=weight_decay
    )


def discriminative(base: str, head_params: int, backbone_share: float) -> OptimizerFactory:
    """Two param groups: the last ``head_params`` parameters (the new head) at ``lr``, the rest
    (the pre-trained backbone) at ``backbone_share * lr``; ``base`` is ``"adam"`` or ``"sgdm"``.
    ``lr`` is the reference (largest) group's LR, which is what the finders suggest."""

    def build(params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
        groups = [
            {"params": params[:-head_params], "lr": lr * backbone_share},
            {"params": params[-head_params:], "lr": lr},
        ]
        if base == "adam":
            return torch.optim.Adam(groups, lr=lr)
        return torch.optim.SGD(groups, lr=lr, momentum=0.9)

    return build


CE: LossFn = nn.functional.cross_entropy
MSE: LossFn = nn.functional.mse_loss
BCE: LossFn = nn.functional.binary_cross_entropy_with_logits

ORIGINAL_TASKS: tuple[Task, ...] = (
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
        family="mlp",
        subset="dev",
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
        family="mlp_bn",
        subset="confirm",
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
        family="cnn",
        subset="dev",
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
        family="cnn",
        subset="confirm",
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
        family="mlp",
        subset="dev",
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
        family="mlp",
        subset="confirm",
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
        family="mlp_bn",
        subset="dev",
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
        family="mlp",
        subset="confirm",
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
        family="mlp",
        subset="dev",
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
        family="linear",
        subset="confirm",
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
        family="mlp",
        subset="dev",
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
        family="transformer",
        subset="confirm",
    ),
)
"""The 12 tasks of issue 3 (the first suite; margin's constants were chosen on its dev half)."""

NEW_TASKS: tuple[Task, ...] = (
    # plain MLPs: small and large batch of one task; two budgets of two tasks; Adam regression
    Task(
        "classif_mlp_adam_b8",
        "make_classification 4 classes, MLP 20-64-4, Adam, batch 8",
        "classification",
        _classification,
        lambda: mlp((20, 64, 4)),
        adam,
        CE,
        8,
        300,
        family="mlp",
        subset="dev",
    ),
    Task(
        "classif_mlp_adam_b512",
        "make_classification 4 classes, MLP 20-64-4, Adam, batch 512",
        "classification",
        _classification,
        lambda: mlp((20, 64, 4)),
        adam,
        CE,
        512,
        300,
        family="mlp",
        subset="dev",
    ),
    Task(
        "digits_mlp_sgd_short",
        "digits, MLP 64-64-10, SGD, 60 steps (digits_mlp_sgd: 300)",
        "classification",
        _digits,
        lambda: mlp((64, 64, 10)),
        sgd(),
        CE,
        32,
        60,
        family="mlp",
        subset="dev",
    ),
    Task(
        "moons_mlp_adamw_long",
        "make_moons, MLP 2-64-64-2, AdamW, 1200 steps (moons_mlp_adamw: 300)",
        "classification",
        _moons,
        lambda: mlp((2, 64, 64, 2)),
        adamw,
        CE,
        32,
        1200,
        family="mlp",
        subset="confirm",
    ),
    Task(
        "friedman_mlp_adam",
        "make_friedman1, MLP 10-64-64-1, MSE, Adam",
        "regression",
        _friedman,
        lambda: mlp((10, 64, 64, 1)),
        adam,
        MSE,
        32,
        300,
        family="mlp",
        subset="confirm",
    ),
    # CNNs with Adam on a synthetic image task (two budgets)
    Task(
        "bars_cnn_adam",
        "synthetic 12x12 bars/crosses in noise, CNN (no norm), Adam",
        "classification",
        _bars,
        bars_cnn,
        adam,
        CE,
        64,
        150,
        family="cnn",
        subset="confirm",
    ),
    Task(
        "bars_cnn_adam_short",
        "bars_cnn_adam with 50 steps (bars_cnn_adam: 150)",
        "classification",
        _bars,
        bars_cnn,
        adam,
        CE,
        64,
        50,
        family="cnn",
        subset="confirm",
    ),
    # LayerNorm transformer with more than one layer
    Task(
        "transformer2_ln_adam",
        "majority token of 12, 2-layer post-LayerNorm transformer, Adam",
        "classification",
        _majority_tokens,
        LayerNormTransformer,
        adam,
        CE,
        32,
        120,
        family="transformer",
        subset="dev",
    ),
    # recurrent nets
    Task(
        "tokens_gru_adam",
        "majority token of 12, GRU 32, Adam",
        "classification",
        _majority_tokens,
        lambda: TokenRNN("gru"),
        adam,
        CE,
        32,
        150,
        family="rnn",
        subset="dev",
    ),
    Task(
        "seq_lstm_sgdm",
        "nonlinear recurrence regression (length 16), LSTM 32, MSE, SGD momentum 0.9",
        "regression",
        _filtered_sequences,
        lambda: SequenceRNN("lstm"),
        sgd(0.9),
        MSE,
        32,
        300,
        family="rnn",
        subset="confirm",
    ),
    Task(
        "tokens_lstm_adam",
        "majority token of 12, LSTM 32, Adam",
        "classification",
        _majority_tokens,
        lambda: TokenRNN("lstm"),
        adam,
        CE,
        64,
        200,
        family="rnn",
        subset="confirm",
    ),
    # residual nets
    Task(
        "digits_rescnn_sgdm",
        "digits 8x8, residual CNN (2 BatchNorm blocks), SGD momentum 0.9",
        "classification",
        _digits_images,
        residual_cnn,
        sgd(0.9),
        CE,
        32,
        100,
        family="resnet",
        subset="dev",
    ),
    Task(
        "friedman_resmlp_adamw",
        "make_friedman1, residual MLP (2 LayerNorm blocks, width 64), MSE, AdamW",
        "regression",
        _friedman,
        lambda: residual_mlp(10, 64, 1, 2),
        adamw,
        MSE,
        32,
        200,
        family="resnet",
        subset="confirm",
    ),
    # fine-tuning: a backbone pre-trained on another task, a new head
    Task(
        "finetune_sgdm",
        "pre-trained MLP backbone + new head, one group, SGD momentum 0.9",
        "classification",
        _finetune_target,
        finetune_model,
        sgd(0.9),
        CE,
        32,
        150,
        family="finetune",
        subset="dev",
    ),
    Task(
        "finetune_groups_adam",
        "pre-trained backbone at 0.1x the head's LR (two param groups), Adam",
        "classification",
        _finetune_target,
        finetune_model,
        discriminative("adam", 2, 0.1),
        CE,
        32,
        150,
        family="finetune",
        subset="confirm",
    ),
    # regularised regimes: label noise, strong weight decay
    Task(
        "digits_mlp_noisy_sgdm",
        "digits with 30% of training labels random, MLP 64-128-10, SGD momentum 0.9",
        "classification",
        _digits_noisy,
        lambda: mlp((64, 128, 10)),
        sgd(0.9),
        CE,
        32,
        300,
        family="regularised",
        subset="dev",
    ),
    Task(
        "classif_mlp_wd_adamw",
        "make_classification 4 classes, MLP 20-64-64-4, AdamW weight decay 0.5",
        "classification",
        _classification,
        lambda: mlp((20, 64, 64, 4)),
        adamw_decay(0.5),
        CE,
        32,
        300,
        family="regularised",
        subset="confirm",
    ),
)
"""The tasks added for issue 15: new families and regimes, fixed before any result was seen."""

TASKS: tuple[Task, ...] = ORIGINAL_TASKS + NEW_TASKS

"""Every task, in a fixed order."""

DEV_TASKS: tuple[str, ...] = tuple(t.name for t in TASKS if t.subset == "dev")
"""The split the default suggester's parameters may be chosen on (fixed per task in advance,
before any result was looked at: every other task of issue 3, and alternating within each family
for the tasks of issue 15)."""
CONFIRM_TASKS: tuple[str, ...] = tuple(t.name for t in TASKS if t.subset == "confirm")
"""The split the chosen parameters are confirmed on."""
FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(t.family for t in TASKS))
"""The model families, in order of first appearance."""

SEEDS: tuple[int, ...] = (0, 1, 2)


def by_name(name: str) -> Task:
    """The task called ``name``."""
    for task in TASKS:
        if task.name == name:
            return task
    raise KeyError(f"no task {name!r}; known: {[t.name for t in TASKS]}")
