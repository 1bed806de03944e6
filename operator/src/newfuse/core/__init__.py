"""Pure decision code: desired state from spec plus observed state, with no I/O.

Nothing here talks to Kubernetes or Redis or reads the clock; callers pass `now` in. That keeps
every decision testable table by table (tests/unit), and import-linter keeps it that way.
"""
