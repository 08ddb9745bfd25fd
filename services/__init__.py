"""Domain services: the only code that mutates the database (views and tasks call these).

Three subsystems, one subpackage each: :mod:`services.experiments` (definitions, lifecycle,
audit, assignment), :mod:`services.ingestion` (events from the stream into PostgreSQL) and
:mod:`services.analysis` (the database side of SIRA). :mod:`services.cache` names every Redis key.
"""
