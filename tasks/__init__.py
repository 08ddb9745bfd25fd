"""Celery tasks: thin wrappers that hand off to ``services`` and ``sira``."""
