"""Async orchestration: the work queue and the controller that runs reconciles."""
