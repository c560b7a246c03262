"""actlab: fast, correct activation extraction for interpretability experiments."""

__version__ = "0.1.0"

from .activations import Activations, ExtractStats
from .default_model import DEFAULT_MODEL
from .errors import ActlabError
from .models import Model, load_model

__all__ = ["Activations", "ActlabError", "DEFAULT_MODEL", "ExtractStats", "Model",
           "load_model", "open_run", "__version__"]


def open_run(path):
    """Open an extraction run directory as Activations (see actlab.store)."""
    from .store import open_run as _open_run

    return _open_run(path)
