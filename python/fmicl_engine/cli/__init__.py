"""The ``fmicl-engine`` command line (see main.py)."""
