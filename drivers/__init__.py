"""qnode.drivers: transports and instrument drivers (synchronous; no asyncio)."""
