"""ldtune: which layer-dropping or layer-freezing method speeds up your CNN training, by how much,
at what cost in accuracy, and with which hyperparameters."""
from .errors import UserError

__version__ = "0.1.0"
__all__ = ["UserError", "__version__"]
