"""The exceptions and warnings htcore raises, in one place.

Bad arguments raise the built-in ``ValueError`` (wrong value, shape or dtype) or ``TypeError``
(wrong kind of object), with a message naming the argument and the value; the C++ kernels raise the
same two (and ``MemoryError`` when an allocation fails). The classes below are htcore's own; each
derives from the built-in a caller would already catch, so ``except ValueError`` keeps working.
"""
from __future__ import annotations

__all__ = ["CalibrationWarning", "DegenerateSampleWarning", "SafetensorsError"]


class SafetensorsError(ValueError):
    """A safetensors file is malformed, truncated or inconsistent (raised before any tensor is read)."""


class DegenerateSampleWarning(RuntimeWarning):
    """A sample left no estimate (e.g. heavily quantised weights whose ties leave too few distinct
    values for a tail fit); the result carries no figure for it instead of failing the whole job."""


class CalibrationWarning(UserWarning):
    """Sparsifying a model changed its output on the calibration batch by more than the threshold
    asked for (`htcore.nn.sparsify_model`'s ``warn_above``)."""
