"""Routing: topology adverts, the graph they describe, and routes through it."""
