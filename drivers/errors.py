"""The one error hierarchy of every qnode driver.

Each error names the instrument, its address and, where there is one, the command, so that a log
line at 3 a.m. says which box did what::

    InstrumentTimeout: TC200 oven at /dev/ttyUSB0: no reply within 1.0 s (command 'tact?')
"""
from __future__ import annotations


class InstrumentError(Exception):
    """Base class: something went wrong talking to an instrument."""

    def __init__(self, message: str, *, instrument: str, address: str,
                 command: str | None = None):
        self.instrument = instrument
        self.address = address
        self.command = command
        self.detail = message
        where = f"{instrument} at {address}"
        what = f" (command {command!r})" if command is not None else ""
        super().__init__(f"{where}: {message}{what}")


class InstrumentTimeout(InstrumentError):
    """No (complete) reply within the timeout. The transport resynchronises before the next
    command, so a late reply is never taken for the next one's."""


class GarbledReply(InstrumentError):
    """A reply arrived but is short, malformed or not what the command answers. ``reply`` holds
    the raw bytes or text received."""

    def __init__(self, message: str, *, instrument: str, address: str,
                 command: str | None = None, reply: bytes | str = b""):
        super().__init__(f"{message}; got {reply!r}", instrument=instrument, address=address,
                         command=command)
        self.reply = reply


class DeviceError(InstrumentError):
    """The instrument itself reported an error (an error reply, status code or error queue
    entry). ``code`` is the device's own code or text."""

    def __init__(self, message: str, *, instrument: str, address: str,
                 command: str | None = None, code: int | str | None = None):
        super().__init__(message, instrument=instrument, address=address, command=command)
        self.code = code


class Disconnected(InstrumentError):
    """The connection is gone (port closed, peer reset, device unplugged) or could not be
    (re)opened. ``Transport.reconnect()`` tries to restore it."""
