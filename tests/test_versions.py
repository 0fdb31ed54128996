"""The versions recorded beside runs and reports: one function, torch-free."""

import platform
import subprocess
import sys

import ridgeline
from ridgeline.versions import versions


def test_versions_name_python_and_the_installed_libraries_only():
    v = versions(("ridgeline", "numpy", "no-such-library-xyz"))
    assert v["python"] == platform.python_version() and v["ridgeline"] == ridgeline.__version__
    assert "numpy" in v and "no-such-library-xyz" not in v


def test_versions_do_not_load_torch():
    code = ("import sys; from ridgeline.versions import versions; v = versions(); "
            "assert 'torch' in v and 'torch' not in sys.modules, v")
    subprocess.run([sys.executable, "-c", code], check=True)
