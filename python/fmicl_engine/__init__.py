"""fmicl-engine: self-supervised pretraining with the f-MICL family of contrastive objectives."""

__version__ = "0.1.0"  # pyproject.toml's [project] version (tests/cli/test_cli_main.py checks they agree)

# The native extension is part of the package, not an optional accelerator: fail early and say how
# to build it (see _ext.py).
from fmicl_engine import _ext  # noqa: E402,F401
