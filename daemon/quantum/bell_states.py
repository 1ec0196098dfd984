"""The four Bell states by name, in the one order every part of qnode uses: array indices of
Bell-diagonal weights, the 2-bit codes of heralds on the wire, the QDevice protocol's announced
states and the simulator's truth.

    Φ± = (|00⟩ ± |11⟩)/√2,  Ψ± = (|01⟩ ± |10⟩)/√2   (lab labels: 0 = H, 1 = V)

This module imports nothing: the drivers and the simulator read the order from here too, so that
a code means the same state at both ends of every wire.
"""

#: names in code order: ``BELL_STATES[code]`` is the state with that 2-bit code
BELL_STATES: tuple[str, str, str, str] = ("phi+", "phi-", "psi+", "psi-")
#: code of each name
BELL_CODES: dict[str, int] = {name: code for code, name in enumerate(BELL_STATES)}
