"""`certify`: generalization bounds for a compressed network from its own training error and its
full description length (see `htcore.bounds` and `htcore.code_length`).

The (gamma, S) figures of Arora et al. (2018): gamma = max over the training set S of
||f(x) - g(x)||_inf between the outputs of the original net f and the compressed net g. Then every
training margin of g is within 2 gamma of f's, so err_train(g) <= L_hat_{2 gamma}(f), the fraction
of training points where f(x)[y] <= 2 gamma + max_{j != y} f(x)[j].

``certify(..., original=f, stability=True)`` also measures how g's weight errors act on the real
training activations (`htcore.noise_stability` on a seeded subsample of at most ``STABILITY_SAMPLES``
rows); off by default because it costs a few passes through both nets (and needs torch).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Optional

import numpy as np

from .._validation import as_float_array, check_labels
from ..measure import NoiseStability, noise_stability, stability_section
from . import bounds
from ._code_length import CodeLength, code_length

_BATCH = 8192
STABILITY_SAMPLES = 1000  # training rows (seeded subsample) measured by certify(stability=True)


@dataclass(frozen=True)
class BoundReport:
    """Bounds on the true error of a compressed net g, each holding with probability >= 1 - delta.

    ``kl``, ``binomial``, ``hoeffding``, ``catoni``: the Occam forms of `htcore.bounds.occam_bound`
    with L = ``code_bits`` (the full description length, search charge included). With an
    ``original`` net f: ``gamma``, ``margin_error`` = L_hat_{2 gamma}(f), and ``arora`` =
    `htcore.bounds.arora_bound` with ``arora_q`` parameters of ``arora_r`` values (positions not
    charged, as in Arora et al.); ``tighter`` says whether "arora" or "direct" (the kl form) is lower
    (`lower_of_the_two` says it in words).
    With test data: ``test_error`` of g beside the bounds. With ``stability=True``: ``stability``,
    the `NoiseStability` of g against f on the training data (its markdown closes `summary`).
    """

    m: int
    delta: float
    train_error: float
    code_bits: int
    kl: float
    binomial: float
    hoeffding: float
    catoni: float
    code: CodeLength
    test_error: float | None = None
    gamma: float | None = None
    margin_error: float | None = None
    original_train_error: float | None = None
    arora: float | None = None
    arora_q: int | None = None
    arora_r: int | None = None
    tighter: str | None = None
    stability: Optional[NoiseStability] = None

    @property
    def best(self) -> float:
        """The tightest Occam form (all forms hold together at level delta only by a union bound;
        quote one form chosen in advance, htcore's default is ``kl``)."""
        return min(self.kl, self.binomial, self.hoeffding, self.catoni)

    @property
    def test_below_bound(self) -> bool | None:
        """Whether the test error of g lies below its kl bound (None without test data)."""
        return None if self.test_error is None else self.test_error <= self.kl

    def lower_of_the_two(self) -> str:
        """Which of Arora et al.'s bound and the kl bound is lower, with both values ("" without an
        original net)."""
        if self.arora is None:
            return ""
        lower = "Arora et al.'s" if self.tighter == "arora" else "the kl bound"
        return f"{lower} ({min(self.arora, self.kl):.4f}; the other {max(self.arora, self.kl):.4f})"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields (the per-tensor code lengths under "code", `NoiseStability.as_dict` under
        "stability")."""
        out = asdict(replace(self, stability=None))
        out["code"]["nnz"] = self.code.nnz
        out["stability"] = None if self.stability is None else self.stability.as_dict()
        return out

    def summary(self) -> str:
        lines = [f"m = {self.m}, delta = {self.delta}, code length {self.code_bits} bits "
                 f"({self.code.nnz} stored values), train error {self.train_error:.4f}"
                 + ("" if self.test_error is None else f", test error {self.test_error:.4f}"),
                 f"bounds: kl {self.kl:.4f}, binomial {self.binomial:.4f}, hoeffding {self.hoeffding:.4f}, "
                 f"catoni {self.catoni:.4f}"]
        if self.gamma is not None:
            lines.append(f"(gamma, S): gamma = {self.gamma:.4g}, 2gamma-margin error of f = {self.margin_error:.4f}, "
                         f"Arora et al. Thm 2.1 (q = {self.arora_q} parameters of r = {self.arora_r} values) "
                         f"= {self.arora:.4f}; lower of the two: {self.lower_of_the_two()}")
        if self.stability is not None:
            lines += ["", stability_section(self.stability)["markdown"]]
        return "\n".join(lines)


def outputs(model: Any, X: np.ndarray) -> np.ndarray:
    """Outputs (n, classes) of a torch module, a runtime CompressedModel or any callable, in batches."""
    torch: Any
    try:
        import torch
    except ImportError:  # torch is optional: then the model is a runtime model or a callable
        torch = None
    parts = []
    for start in range(0, X.shape[0], _BATCH):
        batch = X[start:start + _BATCH]
        if torch is not None and isinstance(model, torch.nn.Module):
            with torch.no_grad():
                out = model(torch.from_numpy(batch)).numpy()
        else:
            out = np.asarray(model(batch))
        parts.append(out)
    result = np.concatenate(parts) if parts else np.zeros((0, 0))
    if result.ndim != 2:
        raise ValueError(f"the model must output (n, classes) scores, got shape {result.shape}")
    return result.astype(np.float64)


def margin_error(scores: np.ndarray, y: np.ndarray, margin: float) -> float:
    """Fraction of rows with scores[y] <= margin + max_{j != y} scores[j] (margin 0: error counting ties)."""
    true = scores[np.arange(y.size), y]
    others = scores.copy()
    others[np.arange(y.size), y] = -np.inf
    return float(np.mean(true <= margin + others.max(axis=1)))


def _arora_parameters(code: CodeLength) -> tuple[int, int]:
    """q = stored values; r = the per-parameter value count's geometric mean, rounded up, so that
    r^q >= prod_t r_t^{k_t} (r_t = codebook size for codebook-coded tensors, 2^16 for float16-exact
    tensors, 2^precision otherwise)."""
    q = code.nnz
    if q == 0:
        return 0, 1
    log_sum = 0.0
    for t in code.tensors:
        if t.values_code in ("codebook", "entropy"):
            log_sum += t.k * math.log(max(t.levels, 1))
        elif t.values_code == "float16":
            log_sum += t.k * 16 * math.log(2.0)
        else:
            log_sum += t.value_bits_raw * math.log(2.0)
    return q, max(1, math.ceil(math.exp(log_sum / q) * (1 + 1e-12)))


def certify(compressed: Any, X_train: Any, y_train: Any, *, delta: float = 0.05, original: Any = None,
            X_test: Any = None, y_test: Any = None, settings_tried: int = 1, stability: bool = False) -> BoundReport:
    """Certify a compressed model (MLP or CNN): its training error on (X_train, y_train) (rows
    (n, features) or images (n, C, H, W), whatever the model takes), its description length
    (`code_length`, with ceil log2(``settings_tried``) bits for the search that picked it), and every
    bound form. ``original`` (a torch module, runtime model or callable giving scores) adds the
    (gamma, S) figures and the Arora form; ``X_test``/``y_test`` add g's test error. ``stability=True``
    (needs ``original`` as a torch ``nn.Sequential`` or runtime model, and torch) adds
    ``report.stability``: `htcore.noise_stability` of g against f on at most ``STABILITY_SAMPLES``
    training rows (seeded), also shown by ``report.summary()``.

    The training set must be the m i.i.d. samples the bound is about, and must not have been used to
    choose anything that the code length does not charge.
    """
    if stability and original is None:
        raise ValueError("certify(stability=True) needs original: the uncompressed net the stability is measured against")
    X_train = as_float_array(X_train, "X_train", ndim=(2, 4), dtype=np.float32, allow_empty=False)
    y_train = check_labels(y_train, X_train.shape[0], "y_train")
    delta = float(delta)
    code = code_length(compressed, settings_tried=settings_tried)
    m = int(y_train.size)
    g_scores = outputs(compressed, X_train)
    check_labels(y_train, m, "y_train", n_classes=g_scores.shape[1])
    errors = int(np.sum(g_scores.argmax(axis=1) != y_train))
    train_error = errors / m
    forms: dict[str, Any] = {form: bounds.occam_bound(train_error, m, code.total_bits, delta, form=form) for form in bounds.FORMS}
    extra: dict[str, Any] = {}
    if original is not None:
        f_scores = outputs(original, X_train)
        if f_scores.shape != g_scores.shape:
            raise ValueError(f"original outputs {f_scores.shape}, compressed outputs {g_scores.shape}")
        gamma = float(np.max(np.abs(f_scores - g_scores)))
        margin = margin_error(f_scores, y_train, 2.0 * gamma)
        q, r = _arora_parameters(code)
        arora = bounds.arora_bound(q, r, m, margin, delta)
        extra = dict(gamma=gamma, margin_error=margin, arora=arora, arora_q=q, arora_r=r,
                     original_train_error=float(np.mean(f_scores.argmax(axis=1) != y_train)),
                     tighter="arora" if arora < forms["kl"] else "direct")
    if X_test is not None:
        X_test = as_float_array(X_test, "X_test", ndim=X_train.ndim, dtype=np.float32, allow_empty=False)
        y_test = check_labels(y_test, X_test.shape[0], "y_test")
        extra["test_error"] = float(np.mean(outputs(compressed, X_test).argmax(axis=1) != y_test))
    if stability:
        extra["stability"] = noise_stability(original, compressed, X_train, y_train, max_samples=STABILITY_SAMPLES)
    return BoundReport(m=m, delta=delta, train_error=train_error, code_bits=code.total_bits, code=code,
                       **forms, **extra)
