"""``python -m fmicl_engine`` is the ``fmicl-engine`` command (and ``torchrun -m fmicl_engine`` its
multi-process form, whatever wraps the console script on PATH)."""

import sys

from fmicl_engine.cli.main import main

sys.exit(main())
