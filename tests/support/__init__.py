"""Helpers the tests share (factories, direct database access, simulated data); fixtures stay in conftest."""
