import pytest

import htcore


@pytest.fixture(autouse=True)
def _restore_thread_count():
    """Tests may change the process-wide thread count; never let it leak into the next test."""
    before = htcore.get_num_threads()
    yield
    htcore.set_num_threads(before)
