"""Transports: the pumps that move a Replica's bytes between processes.

``memory``: a simulated network in one process (tests, simulations, the demo).
"""
