"""Ingestion: tracked events from the API to PostgreSQL, exactly once.

:mod:`.staging` validates an event on the API side and appends it to the Redis stream;
:mod:`.drain` reads the stream in batches and acknowledges after the commit, which
:mod:`.writer` makes: raw events plus rollups in one transaction; :mod:`.rollups` rebuilds rollups from raw events and
reconciles drift.
"""
