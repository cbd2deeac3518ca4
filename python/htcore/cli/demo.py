"""``htcore demo``: the whole pipeline on a small real dataset. Trains a small net with torch (a ReLU
MLP on digits, a LeNet-style CNN on Fashion-MNIST), measures the heavy tails of its weights,
compresses it by top-k (best of a small charged grid), certifies a generalization bound for the
compressed net, and times htcore's runtime against dense torch.

Prints a short summary (or, with ``--json``, every figure as one JSON object) and writes
DIR/report.html (self-contained, plots embedded), DIR/report.json, the PNG plots and the compressed
model DIR/model.safetensors. About 20 s with digits on 2 cores; Fashion-MNIST's CNN (60,000 images)
takes about 5 minutes (11 epochs over the images on one torch thread, about 18 s each on a
busy 2-core machine); --model mlp trains the MLP instead.
"""
from __future__ import annotations

import argparse
import os
import sys

from ..demo import DATASETS, MODELS, run_demo, summary
from ._args import add_command, count, fraction, positive_int, threads


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "demo", "run the whole pipeline on scikit-learn's digits (or Fashion-MNIST)", __doc__)
    p.add_argument("--dataset", choices=DATASETS, default="digits",
                   help="digits (scikit-learn, default) or fashion-mnist (Debian package dataset-fashion-mnist)")
    p.add_argument("--model", choices=MODELS,
                   help="mlp or cnn (a LeNet-style CNN on the images; default: mlp for digits, cnn for fashion-mnist, "
                        "mlp whenever --hidden is given)")
    p.add_argument("--out", default="htcore-demo", metavar="DIR", help="output directory (default: htcore-demo)")
    p.add_argument("--keep", type=fraction, nargs="+", metavar="F",
                   help="keep fraction in (0, 1]: one for every weight matrix, or one per Linear/Conv2d layer "
                        "(default: search the dataset's preset candidates)")
    p.add_argument("--seed", type=count, default=0, metavar="N", help="seed for the split, initialisation and shuffles (default 0)")
    p.add_argument("--hidden", type=positive_int, nargs="+", metavar="WIDTH", help="MLP hidden layer widths (default: the preset's)")
    p.add_argument("--epochs", type=positive_int, metavar="N", help="training epochs (default: the preset's)")
    p.add_argument("--finetune-epochs", type=count, metavar="N", help="fine-tuning epochs after pruning (default: the preset's)")
    p.add_argument("--threads", type=threads, default=1, metavar="N", help="threads for htcore and torch in the timing step (default 1)")
    p.add_argument("--json", action="store_true", help="print every figure as one JSON object instead of the summary")
    p.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    figures = run_demo(dataset=args.dataset, out=args.out, keep=args.keep, seed=args.seed,
                       progress=not args.no_progress and sys.stderr.isatty(),
                       model=args.model, hidden=args.hidden, epochs=args.epochs, finetune_epochs=args.finetune_epochs,
                       threads=args.threads)
    if args.json:
        with open(os.path.join(args.out, "report.json"), encoding="utf-8") as fh:
            print(fh.read(), end="")
    else:
        print(summary(figures))
    return 0
