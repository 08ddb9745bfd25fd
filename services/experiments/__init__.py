"""Experiments: definitions and their lifecycle, the audit chain, and sticky assignment.

Owns the ``experiments``/``variants`` rows and every mutation of them (:mod:`.lifecycle`), the
hash-chained audit entry each mutation writes in the same transaction (:mod:`.audit`), the
compact definition the hot path evaluates (:mod:`.definitions`), assignment of a Molam ID to a
variant (:mod:`.assignment`) and the bandit weight history read by the dashboard
(:mod:`.bandit_history`).
"""
