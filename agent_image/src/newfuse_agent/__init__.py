"""The NewFuse agent runtime: the process inside every agent pod the operator creates."""

__version__ = "0.1.0.dev0"
