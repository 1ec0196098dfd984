"""Time tags to counts: the tagger pipeline, cross-node coincidence counting and polarisation
compensation.
"""
