"""The thin kopf layer: watch registrations and operator lifecycle, nothing that decides."""
