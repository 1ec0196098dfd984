"""Pure quantum-state algebra: Bell states, Bell-diagonal states, estimators, the source model
(FEU). No asyncio, no I/O.
"""
