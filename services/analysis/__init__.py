"""The database side of SIRA: load statistics, run the pure ``sira`` package, store and serve.

:mod:`.inputs` turns rollups into ``sira`` inputs; :mod:`.results` and :mod:`.insights` serve the
read endpoints; :mod:`.findings` applies the fail-fast and guardrail rules to one experiment;
:mod:`.jobs` holds the beat jobs (recompute posteriors and publish weights, scan for findings and
act on them); :mod:`.reports` writes the daily reports.
"""
