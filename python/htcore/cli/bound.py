"""``htcore bound``: certify a compressed-model file on a dataset (every bound form, the full code
length), or with ``--search`` compress a dense model over a grid of settings and certify the best.

MODEL (and ``--original``) is a model file written by `htcore.save_compressed` (an MLP or a CNN), or a
torch.export program (.pt2) or ONNX model, converted in memory as ``htcore convert`` would.

Data: ``fashion-mnist`` (the Debian package's IDX files), ``digits`` (scikit-learn) or a ``.npz``
with arrays X_train, y_train and optionally X_test, y_test. For a model whose first weight layer is
a Conv2d the two named datasets come as (n, 1, H, W) images (a .npz must hold them in that shape). The training split is the sample the
bound is about: it must be i.i.d. and must not have chosen anything the code length does not charge.

With ``--original`` (and without ``--search``) the report also measures noise stability: how the
compressed net's weight errors act on real training activations, per layer, against the Frobenius
prediction, with Arora et al.'s cushions and the margins (`htcore.noise_stability`, on a seeded
subsample of at most 1000 training rows; in the text report and under "stability" in ``--json``).

``--search`` (`htcore.search_bound`): MODEL is dense; every setting of the default grid, or with
``--budget`` one setting per total budget and codebook size (per-layer keeps from `htcore.allocate`),
is compressed with 3 epochs of masked fine-tuning and certified with ceil log2(settings) bits
charged; the table of settings and the best one's report are printed. ``--workers N`` runs the
settings on N local processes, ``--scheduler ADDRESS`` on a Dask cluster (needs ``htcore[dask]``);
the result is the same as in one process. ``-o FILE`` writes the certified winner; ``htcore bound
FILE`` then charges the same search (the count is recorded in the file).
"""
from __future__ import annotations

import argparse
import json
from typing import Any, Mapping

import numpy as np

from .._text import markdown_table
from ..datasets import Dataset, load_digits, load_fashion_mnist
from ..runtime import Conv2d, Linear, save_compressed
from ._args import (
    UsageError,
    add_command,
    codebook_levels,
    comma_list,
    dataset,
    positive_int,
    positive_real,
    probability,
)
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


def default_levels(model: Any) -> tuple[int, ...]:
    """The codebook levels of `default_grid`: (4, 8) for a CNN, (4, 8, 16) for an MLP."""
    return (4, 8) if takes_images(model) else (4, 8, 16)


def default_grid(model: Any) -> list[dict]:
    """MLP: first layers at keep 2%, 5% or 10%, the output layer at 50% (a 10-way output layer does
    not survive heavy pruning), times 4, 8 or 16 codebook levels. CNN: the first conv (few weights,
    all of them needed) at 50%, the other layers at 10%, 15% or 25%, times 4 or 8 levels. Biases
    rounded to float16."""
    from ..compression import layer_names

    names = layer_names(model)
    if takes_images(model):
        return [dict(per_layer={names[0]: 0.5, **{n: keep for n in names[1:]}}, levels=levels, bias_precision="float16")
                for keep in (0.1, 0.15, 0.25) for levels in default_levels(model)]
    return [dict(per_layer={**{n: keep for n in names[:-1]}, names[-1]: 0.5}, levels=levels, bias_precision="float16")
            for keep in (0.02, 0.05, 0.1) for levels in default_levels(model)]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "bound", "certify a generalization bound for a compressed model", __doc__)
    p.add_argument("model", help="model file (.safetensors from htcore.save_compressed; an MLP or a CNN), or a .pt2 or "
                                 ".onnx model (converted in memory as by htcore convert); dense with --search")
    p.add_argument("--data", required=True, type=dataset, help="fashion-mnist, digits or PATH.npz")
    p.add_argument("--delta", type=probability, default=0.05, help="failure probability (default 0.05)")
    p.add_argument("--settings-tried", type=positive_int,
                   help="compression settings searched to pick MODEL; ceil log2 of it is charged (default: the "
                        "count recorded in MODEL by bound --search -o, else 1)")
    p.add_argument("--original", help="the uncompressed model (any file MODEL may be), for the (gamma, S) figures, the Arora form and the noise "
                        "stability of the compressed net (at most 1000 training rows)")
    p.add_argument("--search", action="store_true",
                   help="MODEL is dense: compress it over the default grid, or one setting per --budget "
                        "(3 epochs of masked fine-tuning each), certify every setting charging ceil log2(settings), "
                        "and report the tightest")
    p.add_argument("--budget", type=comma_list(positive_real), action="append", metavar="B[,B...]",
                   help="with --search: total budgets instead of the default grid, one setting each, per-layer keeps "
                        "from htcore.allocate (method 'curve'); the unit is --budget-unit (default: weight entries "
                        "kept over all Linear/Conv2d layers); repeatable or a comma list")
    p.add_argument("--budget-unit", choices=("nnz", "bits"), default="nnz",
                   help="what a --budget counts: nnz = weight entries kept in total (default), bits = bits of kept "
                        "values (32 each) and positions (ceil log2 of the matrix size each), allocate's cost model")
    p.add_argument("--levels", type=comma_list(codebook_levels), metavar="L[,L...]",
                   help="with --budget: codebook levels tried for every budget (default 4,8,16 for an MLP, 4,8 for a CNN)")
    p.add_argument("--workers", type=positive_int, metavar="N",
                   help="with --search: certify the settings on N local worker processes (default: in this process)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="with --search: run on the Dask cluster at ADDRESS (tcp://host:8786; needs htcore[dask])")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="with --search: write the certified best compressed model to FILE (.safetensors); "
                        "htcore bound FILE then charges the same search")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..certification import certify

    search_only = [flag for flag, given in (("--budget", args.budget), ("--levels", args.levels),
                                            ("--workers", args.workers is not None), ("--scheduler", args.scheduler),
                                            ("-o", args.output)) if given]
    if search_only and not args.search:
        raise UsageError(f"{', '.join(search_only)} only apply with --search")
    if args.search and (args.settings_tried is not None or args.original):
        raise UsageError("--settings-tried and --original apply to a compressed MODEL, not to --search "
                         "(which charges its own settings and compares with MODEL itself)")
    if args.levels and not args.budget:
        raise UsageError("--levels applies to --budget; the default grid has its own levels")
    model = read_model(args.model)
    data = load_data(args.data, images=takes_images(model))
    test: dict[str, Any] = dict(X_test=data.X_test, y_test=data.y_test) if data.X_test is not None else {}
    if args.search:
        return _run_search(args, model, data, test)
    tried = args.settings_tried
    if tried is None:
        tried = int(model.metadata.get("search", {}).get("settings_tried", 1))
    original = read_model(args.original) if args.original else None
    report = certify(model, data.X_train, data.y_train, delta=args.delta, original=original,
                     settings_tried=tried, stability=original is not None, **test)
    if args.json:
        _print_json(report, None, None)
    else:
        print(f"Certified {args.model} on {args.data}" + (f" (found by a search over {tried} settings)" if tried > 1 else ""))
        _print_report(report, data)
    return 0


def _run_search(args: argparse.Namespace, model: Any, data: Dataset, test: dict[str, Any]) -> int:
    from ..certification import search_bound
    from ..measure import executor_for

    options: dict[str, Any] = dict(delta=args.delta, finetune=dict(epochs=3), progress=not args.json, **test)
    if args.budget:
        budgets = [b for chunk in args.budget for b in chunk]
        if args.budget_unit in ("nnz", "bits") and not all(float(b).is_integer() for b in budgets):
            raise UsageError(f"--budget counts {args.budget_unit}: give whole numbers, got {budgets}")
        levels = list(args.levels or default_levels(model))
        options.update(budgets=[int(b) for b in budgets], budget_unit=args.budget_unit, levels=levels,
                       bias_precision="float16")
        budget_of = [f"{int(b):,} {args.budget_unit}" for b in budgets for _ in levels]
    else:
        options.update(grid=default_grid(model))
        budget_of = None
    if args.workers is None and args.scheduler is None:
        result = search_bound(model, data.X_train, data.y_train, **options)
    else:
        with executor_for(scheduler=args.scheduler, workers=args.workers) as executor:
            result = search_bound(model, data.X_train, data.y_train, executor=executor, **options)
    report, settings = result.best, result.best_settings
    if args.output:
        save_compressed(args.output, result.best_model, provenance={"search": {
            "source": args.model, "data": args.data, "delta": args.delta, "settings_tried": len(result.settings),
            "index": result.best_index, "settings": dict(settings), "kl": report.kl}})
    if args.json:
        table = [dict(settings=s, kl=r.kl, code_bits=r.code_bits, train_error=r.train_error, test_error=r.test_error,
                      allocation=None if a is None else a.as_dict())
                 for s, r, a in zip(result.settings, result.reports, result.allocations)]
        _print_json(report, dict(settings), table, output=args.output)
        return 0
    _print_search(result, budget_of, data)
    print()
    print(f"Certified the best setting ({result.best_index + 1})" + (f", saved to {args.output}" if args.output else ""))
    _print_report(report, data)
    return 0


def _print_json(report: Any, settings: dict | None, table: list | None, output: str | None = None) -> None:
    payload = report.as_dict()
    stability = payload.pop("stability", None)  # top level: the stability figures are not a bound
    print(json.dumps({"report": payload, "settings": settings, "grid": table, "stability": stability, "output": output}))


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.3g}%"


def _keeps(settings: Mapping[str, Any]) -> str:
    """A setting's keep fractions as "all 5%" or "0: 2%, 2: 50%"."""
    parts = [] if settings.get("keep") is None else [f"all {_percent(settings['keep'])}"]
    parts += [f"{name}: {_percent(keep)}" for name, keep in (settings.get("per_layer") or {}).items()]
    return ", ".join(parts) or "dense"


def _print_search(result: Any, budget_of: list[str] | None, data: Dataset) -> None:
    n = len(result.settings)
    what = "one per budget and codebook size, keeps per layer from htcore.allocate" if budget_of else "the default grid"
    print(f"Searched {n} compression settings ({what}); each is charged ceil log2 {n} = "
          f"{result.best.code.search_bits} bits for the search.")
    header = ["setting", *(["budget"] if budget_of else []), "keep per layer", "levels", "biases", "weights kept",
              "code length (bits)", "train error", *(["test error"] if data.X_test is not None else []), "kl bound"]
    rows = []
    for i, (s, r) in enumerate(zip(result.settings, result.reports)):
        kept = sum(t.k for t in r.code.tensors if t.kind == "sparse")
        rows.append([f"{i + 1}{' (best)' if i == result.best_index else ''}", *([budget_of[i]] if budget_of else []),
                     _keeps(s), s.get("levels") or "-", s.get("bias_precision", "float32"), f"{kept:,}",
                     f"{r.code_bits:,}", f"{r.train_error:.4f}", *([f"{r.test_error:.4f}"] if r.test_error is not None else []),
                     f"{r.kl:.4f}"])
    print(markdown_table(header, rows, left=5 if budget_of else 4))


def _print_report(report: Any, data: Dataset) -> None:
    """The report as labelled lines with units, then the code length per tensor."""
    from ..measure import stability_section

    m, code = report.m, report.code
    search = (f"{code.search_bits} bits of them for the search over {code.settings_tried} settings"
              if code.settings_tried > 1 else "no search charged")
    lines = [("training sample", f"m = {m:,} examples; every bound holds with probability >= {1 - report.delta:g} "
                                 f"(delta = {report.delta:g})"),
             ("train error", f"{report.train_error:.4f} ({round(report.train_error * m):,} of {m:,} misclassified)")]
    if report.test_error is not None and data.y_test is not None:
        lines.append(("test error", f"{report.test_error:.4f} (on {len(data.y_test):,} test examples)"))
    lines += [("code length", f"{report.code_bits:,} bits ({code.nnz:,} stored values; {search})"),
              ("", "Bounds on the true error of the compressed net (Occam, from its train error and code length):"),
              ("kl bound", f"{report.kl:.4f} (htcore's default; quote the one form chosen in advance)"),
              ("binomial bound", f"{report.binomial:.4f}"),
              ("Hoeffding bound", f"{report.hoeffding:.4f}"),
              ("Catoni bound", f"{report.catoni:.4f}")]
    if report.gamma is not None:
        lines += [("", "Against the original net f (Arora et al. 2018, compression with (gamma, S)):"),
                  ("gamma", f"{report.gamma:.4g} (largest |f(x) - g(x)| over the training set, in output units)"),
                  ("train error of f", f"{report.original_train_error:.4f}"),
                  ("f's error at margin 2 gamma", f"{report.margin_error:.4f} (fraction of training examples)"),
                  ("Arora et al. Thm 2.1 bound", f"{report.arora:.4f} (q = {report.arora_q:,} parameters of r = "
                                                 f"{report.arora_r:,} values each; positions not charged)"),
                  ("lower of the two", report.lower_of_the_two())]
    for label, text in lines:
        print(f"  {label + ':':29} {text}" if label else text)
    print()
    print("Code length per tensor, in bits: a sparse tensor pays for k (its count of stored values), their "
          "positions among its n entries (ceil log2 C(n, k)) and the values in the cheapest code; Elias-Fano, "
          "a real position code, is shown for comparison and not charged.")
    print(code.table())
    if report.stability is not None:
        print()
        print(stability_section(report.stability)["markdown"])
