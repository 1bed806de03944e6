"""The wire contract between the operator, the agents and clients: Redis keys and message shapes.

Both the operator and the agent runtime import this package, so a key or field is defined once.
It is pure (no I/O), like newfuse.core.
"""
