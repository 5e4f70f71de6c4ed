"""statetap.interp: interpretability methods built on statetap's public API.

Contrastive activation addition with state steering, the tuned lens, ELK probes, and
activation patching / causal tracing / state transplants (``statetap.interp.patching``)
land here; the package uses only ``statetap``'s public API, never the kernels directly.
"""
