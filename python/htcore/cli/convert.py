"""htcore convert: turn a torch model that ships with its graph into an htcore model file.

MODEL is a torch.export program (.pt2, from torch.export.save; needs torch) or an ONNX
model (.onnx, e.g. from torch.onnx.export; needs the onnx package). The output is a
dense htcore model file for htcore compress, bound and run.

Safety: ONNX files are parsed as protobuf and never execute anything. A .pt2 is read by torch's
torch.export.load, which can execute code from the file (it unpickles some payloads and
evaluates shape expressions); htcore refuses the archives that use those paths, but convert
.pt2 files only from sources you trust. A .pt state_dict (torch.save) has no graph:
export the model with torch.export or torch.onnx.export first.
"""
from __future__ import annotations

import argparse
import os

from ..runtime import save_compressed
from ..runtime._sniff import ONNX, SAFETENSORS, TORCH_EXPORT, TORCH_PICKLE, not_a_model_file, sniff_model_file


def _shape(text: str) -> tuple:
    try:
        dims = tuple(int(d) for d in text.split(","))
    except ValueError:
        dims = ()
    if not dims or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"must be comma-separated positive integers such as 1,28,28, got {text!r}")
    return dims


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a torch.export (.pt2) or ONNX model to an htcore model file",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a .pt2 (torch.export.save; torch's loader can run code from it: trusted files "
                                 "only) or .onnx file (parsed without running anything)")
    p.add_argument("-o", "--output", required=True, help="htcore model file to write (.safetensors)")
    p.add_argument("--input-shape", type=_shape, help="per-sample input shape, e.g. 1,28,28 (default: the "
                                                      "model's declared input shape without the batch dimension)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not os.path.isfile(args.model):
        raise ValueError(f"{args.model}: no such file (or not a regular file)")
    kind = sniff_model_file(args.model)
    if kind == TORCH_EXPORT:
        from ..nn import from_exported

        model = from_exported(args.model, input_shape=args.input_shape)
    elif kind == ONNX or args.model.endswith(".onnx"):
        from ..runtime import from_onnx

        model = from_onnx(args.model, input_shape=args.input_shape)
    elif kind == TORCH_PICKLE:
        raise ValueError(not_a_model_file(args.model, kind))
    elif kind == SAFETENSORS:
        raise ValueError(f"{args.model} is a safetensors file: an htcore model file needs no conversion, and a file of "
                         "weights alone has no graph (export the model with torch.export or torch.onnx.export)")
    else:
        raise ValueError(f"{args.model}: neither a torch.export archive (.pt2) nor an ONNX model")
    save_compressed(args.output, model, provenance={"convert": {"source": os.path.basename(args.model),
                                                                "format": model.metadata.get("source")}})
    kinds = "graph" if model.is_graph else "sequential"
    print(f"wrote {args.output}: {kinds} model, {len(model.layers)} layers, input shape {list(model.input_shape or [])}")
    return 0
