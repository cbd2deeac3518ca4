"""``htcore compress``: keep the top-k weights of every matrix of a model file, optionally quantise
them to a codebook and fine-tune with the mask fixed, and write a compressed-model file.

MODEL is a model file written by htcore.save_compressed (an MLP or a CNN; dense layers allowed, e.g.
from CompressedModel.from_torch), or a torch.export program (.pt2) or ONNX model, converted in
memory as ``htcore convert`` would. Layers are named by their index in the model's layer list ("0",
"3", ...; `htcore.compression.layer_names`); a Conv2d weight is compressed as the matrix
(out, in/groups*kh*kw). Fine-tuning (``--finetune-epochs`` > 0) needs ``--data``; for a CNN the named
datasets come as (n, 1, H, W) images.
"""
from __future__ import annotations

import argparse

from ..runtime import save_compressed
from ._args import (
    UsageError,
    add_command,
    codebook_levels,
    count,
    dataset,
    fraction,
    named_fraction,
    plural,
    positive_real,
)
from ._model import read_model


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "compress", "top-k sparsify (and quantise) a model file", __doc__)
    p.add_argument("model", help="model file (.safetensors from htcore.save_compressed), or a .pt2 or .onnx model "
                                 "(converted in memory as by htcore convert)")
    p.add_argument("-o", "--output", required=True, help="compressed model file to write (.safetensors)")
    p.add_argument("--keep", type=fraction, metavar="FRACTION", help="fraction of entries kept in every weight matrix")
    p.add_argument("--per-layer", nargs="+", type=named_fraction, default=[], metavar="NAME=FRACTION",
                   help="keep fraction per Linear or Conv2d layer, by its index in the layer list (0, 3, ...) "
                        "or a glob pattern ('*' for all); a name beats a pattern, a later pattern an earlier one")
    p.add_argument("--levels", type=codebook_levels, metavar="N",
                   help="quantise kept values to this many codebook levels, 1 to 256 (k-means)")
    p.add_argument("--float16-biases", action="store_true", help="round biases to float16 (16 bits each in the code)")
    p.add_argument("--data", type=dataset, help="training data for fine-tuning: fashion-mnist, digits or PATH.npz")
    p.add_argument("--finetune-epochs", type=count, default=0, metavar="N",
                   help="epochs of masked fine-tuning (needs --data)")
    p.add_argument("--lr", type=positive_real, default=1e-3, help="fine-tuning learning rate (default 1e-3)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..certification import code_length
    from ..compression import compress
    from .bound import load_data, takes_images

    if args.keep is None and not args.per_layer:
        raise UsageError("give --keep FRACTION and/or --per-layer NAME=FRACTION ...")
    if args.finetune_epochs and not args.data:
        raise UsageError("--finetune-epochs needs --data")
    finetune = dict(epochs=args.finetune_epochs, lr=args.lr) if args.finetune_epochs else None
    model = read_model(args.model)
    train_data = None
    if finetune is not None:
        data = load_data(args.data, images=takes_images(model))
        train_data = (data.X_train, data.y_train)
    g = compress(model, keep=args.keep, per_layer=dict(args.per_layer) or None,
                 levels=args.levels, finetune=finetune, train_data=train_data,
                 bias_precision="float16" if args.float16_biases else "float32")
    save_compressed(args.output, g, provenance={"compress": g.metadata.get("compress")})
    code = code_length(g)
    print(f"wrote {args.output}: {plural(code.nnz, 'stored value')}, description length {plural(code.total_bits, 'bit')}")
    return 0
