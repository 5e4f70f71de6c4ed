"""statetap.interp: interpretability methods built on statetap's public API.

Contrastive activation addition with state steering, the tuned lens and ELK probes
land here; the package uses only ``statetap``'s public API, never the kernels directly.
"""
