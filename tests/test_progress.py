"""htcore._progress: a bar on a terminal's stderr, nothing in a pipe or a log file."""
import io
import sys

from htcore._progress import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_no_bar_when_stderr_is_not_a_terminal(monkeypatch):
    pipe = io.StringIO()
    monkeypatch.setattr(sys, "stderr", pipe)
    assert list(progress(range(5), enabled=True, desc="work", unit="layer")) == list(range(5))
    assert pipe.getvalue() == ""


def test_bar_on_a_terminal_and_none_when_disabled(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert list(progress(range(5), enabled=True, desc="work", unit="layer")) == list(range(5))
    assert "work" in terminal.getvalue() and "layer" in terminal.getvalue()
    quiet = Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    assert list(progress(range(5), enabled=False, desc="work")) == list(range(5))
    assert quiet.getvalue() == ""
