"""The network a subcommand works on, from any file that holds a whole one: an htcore model file
as it is, or a torch.export program (.pt2) or an ONNX model converted in memory exactly as
``htcore convert`` converts it (a torch.save state_dict has no graph and gets an error naming the fix)."""
from __future__ import annotations

import os
from typing import Optional

from ..runtime import CompressedModel, load_compressed
from ..runtime._sniff import ONNX, SAFETENSORS, TORCH_EXPORT, TORCH_PICKLE, UNKNOWN, not_a_model_file, sniff_model_file


def read_model(path: str, *, input_shape: Optional[tuple] = None) -> CompressedModel:
    """The model in ``path``: an htcore model file (``input_shape`` unused), or a .pt2 / .onnx file
    converted with ``input_shape`` (per sample; default the one the file declares)."""
    kind = _format(path)
    if kind in (TORCH_EXPORT, ONNX):
        return _converted(path, kind, input_shape)
    return load_compressed(path)  # validates; names `htcore convert` or the fix for any other kind


def convert_model(path: str, *, input_shape: Optional[tuple] = None) -> CompressedModel:
    """A .pt2 or .onnx file as a model (what ``htcore convert`` writes); ValueError for anything else."""
    kind = _format(path)
    if kind in (TORCH_EXPORT, ONNX):
        return _converted(path, kind, input_shape)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file (or not a regular file)")
    if kind == TORCH_PICKLE:
        raise ValueError(not_a_model_file(path, kind))
    if kind == SAFETENSORS:
        raise ValueError(f"{path} is a safetensors file: an htcore model file needs no conversion, and a file of "
                         "weights alone has no graph (export the model with torch.export or torch.onnx.export)")
    raise ValueError(f"{path}: neither a torch.export archive (.pt2) nor an ONNX model")


def _format(path: str) -> str:
    """The sniffed kind; a regular file named .onnx whose first bytes are not the usual ones is still
    handed to the ONNX parser, which says what is wrong with it."""
    kind = sniff_model_file(path)
    if kind == UNKNOWN and path.lower().endswith(".onnx") and os.path.isfile(path):
        return ONNX
    return kind


def _converted(path: str, kind: str, input_shape: Optional[tuple]) -> CompressedModel:
    if kind == TORCH_EXPORT:
        from ..nn import from_exported  # torch: imported only for a .pt2

        return from_exported(path, input_shape=input_shape)
    from ..runtime import from_onnx

    return from_onnx(path, input_shape=input_shape)
