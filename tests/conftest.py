"""Fixtures shared by the MQTT tests."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.mosquitto import Mosquitto


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A real mosquitto on a free loopback port, stopped after the test."""
    b = Mosquitto(tmp_path / "mosquitto")
    b.start()
    try:
        yield b
    finally:
        b.stop()
