"""Key post-processing of an M link (BBM92): error correction, verification, privacy
amplification and the finite-key length. Pure: numpy and the ``ldpc`` decoders, no I/O.
"""
