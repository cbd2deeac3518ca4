import json
import subprocess
import sys

import htcore
from htcore.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "htcore", *args], capture_output=True, text=True)


def test_help_exits_zero():
    out = run_cli("--help")
    assert out.returncode == 0
    assert "info" in out.stdout and "demo" in out.stdout


def test_version():
    out = run_cli("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"htcore {htcore.__version__}"


def test_no_command_is_usage_error():
    assert run_cli().returncode == 2


def test_unknown_command_is_usage_error():
    out = run_cli("frobnicate")
    assert out.returncode == 2
    assert "invalid choice" in out.stderr


def test_info_json_reports_openmp_and_threads():
    out = run_cli("info", "--json")
    assert out.returncode == 0, out.stderr
    facts = json.loads(out.stdout)
    assert facts["openmp"] >= 200805
    assert facts["threads"] == htcore.get_num_threads()
    assert facts["version"] == htcore.__version__
    assert set(facts["optional"]) >= {"torch", "matplotlib"}


def test_info_text(capsys):
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert "openmp" in text and "OpenMP" in text


def test_console_script_installed():
    import os
    import sysconfig

    exe = os.path.join(sysconfig.get_path("scripts"), "htcore")
    assert os.path.exists(exe), "the htcore console script was not installed"
    out = subprocess.run([exe, "--version"], capture_output=True, text=True)
    assert out.returncode == 0


def test_a_closed_pipe_ends_quietly():
    """`htcore info --json | head -c 10`: the reader leaves early; no error message, exit 141 as a shell's."""
    import subprocess
    import sys

    code = ("import os, sys; r, w = os.pipe(); os.close(r); os.dup2(w, 1)\n"
            "from htcore.cli import main; sys.exit(main(['info', '--json']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 141 and done.stderr == "", (done.returncode, done.stderr)
