"""The package's shape: public names per layer, the root re-exports, and which modules import the root."""
import importlib
import os
import subprocess
import sys

import pytest

PACKAGES = ["sparse", "io", "runtime", "nn", "measure", "compression", "certification", "demo", "cli"]
APPS = {"htcore.cli", "htcore.demo", "htcore.datasets"}
PYTHON_DIR = os.path.join(os.path.dirname(__file__), os.pardir, "python")


@pytest.mark.parametrize("name", PACKAGES)
def test_subpackages_import_and_list_what_they_export(name):
    if name == "nn":
        pytest.importorskip("torch")
    module = importlib.import_module(f"htcore.{name}")
    exported = getattr(module, "__all__", None)
    if name == "cli":
        assert callable(module.main)
        return
    assert exported, f"htcore.{name} has no __all__"
    assert len(set(exported)) == len(exported)
    for public in exported:
        assert not public.startswith("_") and hasattr(module, public), f"htcore.{name}.{public}"


def test_root_functions_are_not_shadowed_by_stage_packages():
    import htcore.certification
    import htcore.compression
    import htcore.measure

    assert callable(htcore.compress) and htcore.compress is htcore.compression.compress
    assert callable(htcore.analyze) and htcore.analyze is htcore.measure.analyze
    assert callable(htcore.certify) and htcore.certify is htcore.certification.certify
    for public in htcore.__all__:
        assert hasattr(htcore, public), public


def test_import_htcore_does_not_import_torch():
    code = "import sys, htcore, htcore.runtime, htcore.compression, htcore.certification; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_only_apps_import_the_package_root():
    grimp = pytest.importorskip("grimp", reason="grimp comes with import-linter (the lint extra)")
    sys.path.insert(0, PYTHON_DIR)  # the source tree, as lint-imports reads it
    try:
        graph = grimp.build_graph("htcore", exclude_type_checking_imports=True)
    finally:
        sys.path.remove(PYTHON_DIR)
    importers = graph.find_modules_that_directly_import("htcore")
    outside = {m for m in importers if not any(m == app or m.startswith(app + ".") for app in APPS)}
    assert not outside, f"only apps may import the package root; these do: {sorted(outside)}"
