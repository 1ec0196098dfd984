"""Operator tools: status, the Prometheus exporter, the live view, the report and the demo.
"""
