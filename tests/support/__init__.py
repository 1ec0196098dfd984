"""Helpers the tests share: a real mosquitto per test, a test PKI, daemons in child
processes, hal_sim's truth as an oracle and hypothesis strategies for tag streams. Not tests:
imported as ``support.<module>`` (tests/ is on sys.path through tests/conftest.py)."""
from pathlib import Path

#: the repository's root (the checkout the tests run from)
REPO = Path(__file__).resolve().parents[2]
