"""Ingestion: tracked events from the API to PostgreSQL, exactly once.

:mod:`.staging` validates an event on the API side and appends it to the Redis stream;
:mod:`.writer` drains the stream in batches into raw events plus rollups in one transaction
and acknowledges after the commit; :mod:`.rollups` rebuilds rollups from raw events and
reconciles drift.
"""
