import pytest

import htcore


@pytest.fixture(autouse=True)
def _restore_thread_count():
    """Tests may change the process-wide thread count; never let it leak into the next test."""
    before = htcore.get_num_threads()
    yield
    htcore.set_num_threads(before)


@pytest.fixture
def patch_kernel(monkeypatch):
    """``patch_kernel(name, replacement)`` swaps the binding ``htcore._core.<name>`` in every htcore
    module that imported it by name, so a spy sees every call; returns the original. Fails when no
    module uses the binding (a spy that can never fire proves nothing)."""
    import sys

    from htcore import _core

    def patch(name, replacement):
        original = getattr(_core, name)
        users = 0
        for module in list(sys.modules.values()):
            if not getattr(module, "__name__", "").startswith("htcore.") or module is _core:
                continue
            for attr, value in list(vars(module).items()):
                if value is original:
                    monkeypatch.setattr(module, attr, replacement)
                    users += 1
        assert users, f"no htcore module calls _core.{name}"
        monkeypatch.setattr(_core, name, replacement)
        return original

    return patch
