"""The library versions a result was made with, recorded beside every run and report.

Torch-free: modules that never train (the ledger, reports) record versions without loading
torch. A library already imported reports its own ``__version__`` (the code that ran, even from
a source tree); any other one its installed version, and one not installed is left out.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Sequence
from importlib import metadata

RUN_LIBRARIES = ("ridgeline", "torch", "numpy")  # what one training run depends on


def versions(libraries: Sequence[str] = RUN_LIBRARIES) -> dict[str, str]:
    """{"python": ..., library: version, ...} for each of ``libraries`` that is installed."""
    out = {"python": platform.python_version()}
    for name in libraries:
        version = getattr(sys.modules.get(name), "__version__", None) or _installed(name)
        if version is not None:
            out[name] = str(version)
    return out


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
