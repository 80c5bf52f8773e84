"""longrec: long user-behaviour-sequence modeling for ads and recommendation ranking.

Data (behaviour logs -> trajectory store -> samples -> `Batch`) -> search -> target-attention models -> train/eval.
Importing `longrec` is cheap: submodules load on first use.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
