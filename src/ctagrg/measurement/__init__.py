"""Measurements made on the preprocessed volume (not learned): nodule diameter (``nodule_size``)."""
