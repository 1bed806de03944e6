"""I/O adapters: the only code that talks to the Kubernetes API and Redis."""
