"""Applications of the in-memory network: the demo and many-replica simulations.

Not part of the sans-IO core: they time themselves and drive a network.
"""
