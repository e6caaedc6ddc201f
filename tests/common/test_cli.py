"""The `reviewstack` command: verbs come from installed services, errors come without tracebacks."""

import subprocess
import sys
from pathlib import Path

CLI = str(Path(sys.executable).parent / "reviewstack")


def test_help_lists_the_installed_verbs():
    run = subprocess.run([CLI, "--help"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "data" in run.stdout
    data = subprocess.run([CLI, "data", "--help"], capture_output=True, text=True, timeout=60)
    assert data.returncode == 0 and {"build", "list", "show"} <= set(data.stdout.split())


def test_unknown_verb_is_a_usage_error():
    run = subprocess.run([CLI, "frobnicate"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "frobnicate" in run.stderr and "Traceback" not in run.stderr


def test_store_errors_print_one_line(tmp_path):
    run = subprocess.run(
        [CLI, "data", "show", "--store", str(tmp_path), "nothing", "v1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and run.stderr.startswith("error:") and "Traceback" not in run.stderr
