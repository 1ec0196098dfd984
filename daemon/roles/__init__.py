"""Thin wiring of each node role (station, memory, analyzer, source) onto the services below.
"""
