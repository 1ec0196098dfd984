"""Services of a heralded (K-type) link: the link service and its router, quantum memories,
purification and entanglement swapping.
"""
