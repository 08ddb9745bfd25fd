"""Python client for Molam Experiments: local evaluation of fixed splits, exposure
logging, event tracking and an OpenFeature provider (``molam_experiments.openfeature``)."""
from __future__ import annotations

__version__ = "0.1.0"

from .client import Assignment, Client, ClientError
from .evaluation import DefinitionError

__all__ = ["Assignment", "Client", "ClientError", "DefinitionError", "__version__"]
