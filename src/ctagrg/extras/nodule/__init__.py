"""Nodule measurement (not in the published method): the diameter the Reporter states for a detected lung nodule."""
