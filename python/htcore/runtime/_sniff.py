"""Which kind of model file a path holds, from its first bytes (and, for a zip, its member names),
so that handing htcore a torch or ONNX file gives an error naming the fix instead of a safetensors
parse error. Nothing is parsed beyond that: a zip's central directory is read, never a member."""
from __future__ import annotations

import os
import zipfile

SAFETENSORS, TORCH_EXPORT, TORCH_PICKLE, ONNX, UNKNOWN = "safetensors", "torch.export", "torch.save", "onnx", "unknown"


def sniff_model_file(path: str | os.PathLike) -> str:
    """One of "safetensors", "torch.export" (a ``torch.export.save`` archive, .pt2), "torch.save" (a
    pickle or a ``torch.save`` zip, e.g. a state_dict), "onnx" (a protobuf starting with its
    ir_version field) or "unknown" (including anything that is not a regular file, which is not read)."""
    if not os.path.isfile(path):
        return UNKNOWN
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{":  # 8-byte header length, then the JSON header
        return SAFETENSORS
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return UNKNOWN
        if any(n.endswith("/archive_format") or n == "archive_format" for n in names):
            return TORCH_EXPORT
        return TORCH_PICKLE if any(n.endswith("data.pkl") for n in names) else UNKNOWN
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):  # pickle protocol 2-5
        return TORCH_PICKLE
    if head[:1] == b"\x08":  # ModelProto field 1 (ir_version), a varint
        return ONNX
    return UNKNOWN


def not_a_model_file(path: str | os.PathLike, kind: str) -> str:
    """The error message for a torch or ONNX file handed where an htcore model file is expected."""
    where = os.fspath(path)
    if kind == TORCH_PICKLE:
        return (f"{where} is a torch.save file (a pickle, e.g. a state_dict): it holds weights but no graph, and htcore "
                "never unpickles files. Export the model with torch.export.save(torch.export.export(model, (x,)), "
                f"'model.pt2') or torch.onnx.export, then run `htcore convert model.pt2 -o model.safetensors`")
    return (f"{where} is {'a torch.export program (.pt2)' if kind == TORCH_EXPORT else 'an ONNX model'}, not an htcore "
            f"model file: convert it first with `htcore convert {where} -o model.safetensors`")
