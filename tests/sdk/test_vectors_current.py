"""The committed SDK test vectors are what the server's code generates today."""
from __future__ import annotations

from scripts import generate_sdk_vectors


def test_vectors_are_current():
    assert generate_sdk_vectors.OUTPUT.read_text(encoding="utf-8") == generate_sdk_vectors.encode(
        generate_sdk_vectors.generate()
    ), "sdk/python/tests/vectors.json is out of date: run scripts/generate_sdk_vectors.py"
    assert generate_sdk_vectors.OUTPUT.stat().st_size < 2 * 1024 * 1024
