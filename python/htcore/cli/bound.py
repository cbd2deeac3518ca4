"""``htcore bound``: certify a compressed-model file on a dataset (every bound form, the full code
length), or with ``--search`` compress a dense model over a grid of settings and certify the best.

Data: ``fashion-mnist`` (the Debian package's IDX files), ``digits`` (scikit-learn) or a ``.npz``
with arrays X_train, y_train and optionally X_test, y_test. For a model whose first weight layer is
a Conv2d the two named datasets come as (n, 1, H, W) images (a .npz must hold them in that shape). The training split is the sample the
bound is about: it must be i.i.d. and must not have chosen anything the code length does not charge.

With ``--original`` (and without ``--search``) the report also measures noise stability: how the
compressed net's weight errors act on real training activations, per layer, against the Frobenius
prediction, with Arora et al.'s cushions and the margins (`htcore.noise_stability`, on a seeded
subsample of at most 1000 training rows; in the text report and under "stability" in ``--json``).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

from ..datasets import Dataset, load_digits, load_fashion_mnist
from ..runtime import Conv2d, Linear
from ._args import add_command, dataset, positive_int, probability
from ._model import read_model


def takes_images(model: Any) -> bool:
    """Whether a runtime model's first weight layer is a Conv2d, so its input is (n, C, H, W) images."""
    first = next((layer for layer in model.layers if isinstance(layer, (Linear, Conv2d))), None)
    return isinstance(first, Conv2d)


def load_data(spec: str, *, images: bool = False) -> Dataset:
    """``fashion-mnist``, ``digits`` (as (n, 1, H, W) with ``images``) or a path to a .npz with
    X_train, y_train[, X_test, y_test] (used as stored)."""
    if spec == "fashion-mnist":
        return load_fashion_mnist(images=images)
    if spec == "digits":
        return load_digits(images=images)
    if not spec.endswith(".npz"):
        raise ValueError(f"--data must be fashion-mnist, digits or a .npz file, got {spec!r}")
    with np.load(spec, allow_pickle=False) as f:
        missing = {"X_train", "y_train"} - set(f.files)
        if missing:
            raise ValueError(f"{spec} lacks arrays {sorted(missing)} (has {f.files})")
        test = {"X_test", "y_test"} & set(f.files)
        if len(test) == 1:
            raise ValueError(f"{spec} has {test.pop()} but not its pair: give both X_test and y_test, or neither")
        if test:
            return Dataset(f["X_train"], f["y_train"], f["X_test"], f["y_test"])
        return Dataset(f["X_train"], f["y_train"], None, None)


def default_grid(model: Any) -> list[dict]:
    """MLP: first layers at keep 2%, 5% or 10%, the output layer at 50% (a 10-way output layer does
    not survive heavy pruning), times 4, 8 or 16 codebook levels. CNN: the first conv (few weights,
    all of them needed) at 50%, the other layers at 10%, 15% or 25%, times 4 or 8 levels. Biases
    rounded to float16."""
    from ..compression import layer_names

    names = layer_names(model)
    if takes_images(model):
        return [dict(per_layer={names[0]: 0.5, **{n: keep for n in names[1:]}}, levels=levels, bias_precision="float16")
                for keep in (0.1, 0.15, 0.25) for levels in (4, 8)]
    return [dict(per_layer={**{n: keep for n in names[:-1]}, names[-1]: 0.5}, levels=levels, bias_precision="float16")
            for keep in (0.02, 0.05, 0.1) for levels in (4, 8, 16)]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "bound", "certify a generalization bound for a compressed model", __doc__)
    p.add_argument("model", help="model file (.safetensors from htcore.save_compressed; an MLP or a CNN); dense with --search")
    p.add_argument("--data", required=True, type=dataset, help="fashion-mnist, digits or PATH.npz")
    p.add_argument("--delta", type=probability, default=0.05, help="failure probability (default 0.05)")
    p.add_argument("--settings-tried", type=positive_int, default=1,
                   help="compression settings searched to pick MODEL; ceil log2 of it is charged (default 1)")
    p.add_argument("--original", help="the uncompressed model file, for the (gamma, S) figures, the Arora form and the noise "
                        "stability of the compressed net (at most 1000 training rows)")
    p.add_argument("--search", action="store_true",
                   help="MODEL is dense: compress it over the default grid (3 epochs of masked fine-tuning) "
                        "and certify every setting, charging log2(grid size)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..certification import certify, search_bound

    model = read_model(args.model)
    data = load_data(args.data, images=takes_images(model))
    test: dict[str, Any] = dict(X_test=data.X_test, y_test=data.y_test) if data.X_test is not None else {}
    if args.search:
        result = search_bound(model, data.X_train, data.y_train, grid=default_grid(model), delta=args.delta,
                              finetune=dict(epochs=3), progress=not args.json, **test)
        report, settings = result.best, result.best_settings
        table = [dict(settings=s, kl=r.kl, code_bits=r.code_bits, train_error=r.train_error, test_error=r.test_error)
                 for s, r in zip(result.settings, result.reports)]
    else:
        original = read_model(args.original) if args.original else None
        report = certify(model, data.X_train, data.y_train, delta=args.delta, original=original,
                         settings_tried=args.settings_tried, stability=original is not None, **test)
        settings, table = None, None
    if args.json:
        payload = report.as_dict()
        stability = payload.pop("stability", None)  # top level: the stability figures are not a bound
        print(json.dumps({"report": payload, "settings": settings, "grid": table, "stability": stability}))
        return 0
    if table is not None:
        for row in table:
            print(f"{row['settings']}: kl {row['kl']:.4f}, {row['code_bits']} bits", file=sys.stderr)
        print(f"best settings: {settings}")
    print(report.summary())
    print(report.code.table())
    return 0
