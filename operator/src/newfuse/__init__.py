"""NewFuse: a Kubernetes operator for fleets of AI agents.

The package is split in layers (enforced by import-linter): pure decision code, a thin kopf
handler layer, and I/O adapters for Kubernetes and Redis.
"""

__version__ = "0.1.0.dev0"
