"""minibroker's trusted engine: sources, decoding, evaluation orchestration, publishing, CLI.

It never executes user code: filters run only through :mod:`sandbox`.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
