"""C++ exceptions must reach Python as the documented exception types, with their message."""
import pytest

from htcore import _core


@pytest.mark.parametrize(
    "kind, exc",
    [
        ("invalid_argument", ValueError),
        ("domain_error", ValueError),
        ("length_error", ValueError),
        ("type_error", TypeError),
        ("bad_alloc", MemoryError),
    ],
)
def test_translation(kind, exc):
    with pytest.raises(exc) as info:
        _core._throw_for_testing(kind)
    if exc is not MemoryError:
        assert "argument 'x'" in str(info.value)


def test_type_error_is_not_also_value_error():
    with pytest.raises(TypeError) as info:
        _core._throw_for_testing("type_error")
    assert not isinstance(info.value, ValueError)
