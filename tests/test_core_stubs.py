"""The typed boundary of htcore._core: python/htcore/_core.pyi names exactly what the module binds
(functions with their argument names, enums with their members, result structs with their
attributes), every binding carries a docstring, and the kernels in cpp/ stay free of Python."""
import ast
import pathlib
import re

import pytest

import htcore
from htcore import _core

STUB = pathlib.Path(htcore.__file__).parent / "_core.pyi"  # next to the package imported, installed or not
CPP = pathlib.Path(__file__).resolve().parent.parent / "cpp"  # the source tree, when the tests run from it
ENUM_MEMBERS = {"name", "value", "__members__"}  # what pybind11 gives every enum, stubbed once per enum


def runtime_names() -> dict[str, object]:
    return {name: obj for name, obj in vars(_core).items() if not (name.startswith("__") and name.endswith("__"))}


def stub_tree() -> ast.Module:
    return ast.parse(STUB.read_text())


def stub_functions() -> dict[str, ast.FunctionDef]:
    return {node.name: node for node in stub_tree().body if isinstance(node, ast.FunctionDef)}


def stub_classes() -> dict[str, ast.ClassDef]:
    return {node.name: node for node in stub_tree().body if isinstance(node, ast.ClassDef)}


def is_enum(cls: type) -> bool:
    return hasattr(cls, "__members__")


def binding_arguments(function) -> list[str]:
    """Argument names from pybind11's signature line, e.g. ``f(a: int, b: str) -> None``."""
    signature = function.__doc__.splitlines()[0]
    params = signature[signature.index("(") + 1 : signature.rindex(") ->")]
    return re.findall(r"(?:^|, )(\w+): ", params)


def docstring_text(function) -> str:
    """A pybind11 function's docstring without its generated signature line."""
    return "\n".join(function.__doc__.splitlines()[1:]).strip()


def test_stub_and_py_typed_are_in_the_package():
    assert STUB.is_file()
    assert (STUB.parent / "py.typed").is_file()


def test_every_binding_has_a_stub_and_every_stub_a_binding():
    stubbed = set(stub_functions()) | set(stub_classes())
    bound = set(runtime_names())
    assert sorted(bound - stubbed) == [], "bound in _core but missing from _core.pyi"
    assert sorted(stubbed - bound) == [], "in _core.pyi but not bound in _core"


def test_stubbed_functions_have_the_bindings_argument_names():
    for name, node in stub_functions().items():
        stubbed = [a.arg for a in node.args.args]
        assert stubbed == binding_arguments(getattr(_core, name)), name


def test_stubbed_classes_have_the_bindings_attributes():
    for name, node in stub_classes().items():
        cls = getattr(_core, name)
        assert isinstance(cls, type), name
        stubbed_properties = {
            f.name for f in node.body
            if isinstance(f, ast.FunctionDef) and any(getattr(d, "id", None) == "property" for d in f.decorator_list)
        }
        stubbed_members = {a.target.id for a in node.body if isinstance(a, ast.AnnAssign)}
        if is_enum(cls):
            assert stubbed_members - ENUM_MEMBERS == set(cls.__members__), name
            assert stubbed_properties == {"name", "value"}, name
        else:
            assert stubbed_members == set(), name
            bound = {attr for attr, value in vars(cls).items() if isinstance(value, property)}
            assert stubbed_properties == bound, name


@pytest.mark.parametrize("name", sorted(runtime_names()))
def test_every_binding_is_documented(name):
    obj = getattr(_core, name)
    if isinstance(obj, type):
        assert (obj.__doc__ or "").strip(), name
        if not is_enum(obj):
            for attr, value in vars(obj).items():
                if isinstance(value, property):
                    assert (value.__doc__ or "").strip(), f"{name}.{attr}"
    else:
        assert binding_arguments(obj) is not None
        assert docstring_text(obj), name


def test_enums_refuse_undeclared_values():
    import numpy as np

    A = np.zeros(3, np.int32), np.zeros(0, np.uint16), np.zeros(0, np.float32)
    with pytest.raises(ValueError, match="activation must be none, relu, gelu or tanh"):
        _core.csr_spmm(indptr=A[0], indices=A[1], data=A[2], codebook=None, rows=2, cols=1, x=np.ones(1, np.float32),
                       k=1, x_batch_major=False, bias=None, activation=_core.Activation(9), out=np.zeros(2, np.float32),
                       out_row_stride=1, out_col_stride=1)
    with pytest.raises(ValueError, match="activation must be none, relu, gelu or tanh"):
        _core.activate_inplace(x=np.ones(2, np.float32), activation=_core.Activation(9))
    with pytest.raises(ValueError, match="tail method"):
        _core.tail_estimate(x=np.arange(1.0, 50.0), method=_core.TailMethod(5), k=3, seed=0, resamples=10,
                            eps_stop=0.99, cap_factor=3.0, rho_max=-0.25)


@pytest.mark.skipif(not CPP.is_dir(), reason="needs the source tree")
def test_kernels_include_no_python_headers():
    """Only cpp/bindings/ knows about Python: the kernels build and test without it."""
    offenders = [
        path.name for path in sorted(CPP.glob("*.[ch]pp"))
        if re.search(r'#\s*include\s*[<"](pybind11/|Python\.h)', path.read_text())
    ]
    assert offenders == []
