"""Python client for Molam Experiments: local evaluation of fixed splits, exposure
logging, event tracking and an OpenFeature provider (``molam_experiments.openfeature``)."""
from __future__ import annotations

__version__ = "0.1.0"

from .client import Assignment, Client, ClientError  # noqa: E402
from .evaluation import DefinitionError  # noqa: E402

__all__ = ["Assignment", "Client", "ClientError", "DefinitionError", "__version__"]
