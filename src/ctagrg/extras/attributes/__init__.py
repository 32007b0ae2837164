"""Supervision from the sides and sizes report sentences state (not in the published method)."""
