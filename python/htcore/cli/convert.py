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
from ._args import add_command, plural, shape
from ._model import convert_model


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "convert", "convert a torch.export (.pt2) or ONNX model to an htcore model file", __doc__)
    p.add_argument("model", help="a .pt2 (torch.export.save; torch's loader can run code from it: trusted files "
                                 "only) or .onnx file (parsed without running anything)")
    p.add_argument("-o", "--output", required=True, help="htcore model file to write (.safetensors)")
    p.add_argument("--input-shape", type=shape, help="per-sample input shape, e.g. 1,28,28 (default: the "
                                                      "model's declared input shape without the batch dimension)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model = convert_model(args.model, input_shape=args.input_shape)
    save_compressed(args.output, model, provenance={"convert": {"source": os.path.basename(args.model),
                                                                "format": model.metadata.get("source")}})
    kinds = "graph" if model.is_graph else "sequential"
    print(f"wrote {args.output}: {kinds} model, {plural(len(model.layers), 'layer')}, input shape {list(model.input_shape or [])}")
    return 0
