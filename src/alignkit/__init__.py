"""alignkit: align language models with what people prefer.

`import alignkit` is deliberately light: torch and transformers are imported by the modules that use them.
"""

__version__ = "0.1.0"

from alignkit.errors import AlignkitError, DataError

__all__ = ["__version__", "AlignkitError", "DataError"]
