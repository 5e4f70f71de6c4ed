"""The site names every architecture shares, without importing torch or a model.

``"residual"`` and ``"mixer"`` exist on every layer of every model; ``"state"`` names the
group of all recurrent-state components of an architecture (its adapter's ``state_sites``).
The command line checks ``--sites`` against these before any model or library loads.
"""

#: sites on every layer of every architecture (:mod:`statetap.adapters.base`)
COMMON_SITES = ("residual", "mixer")
#: every recurrent-state component of the architecture, as one site group
STATE_GROUP = "state"
