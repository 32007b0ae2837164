"""Nodule measurement on the preprocessed volume (not learned): the diameter of the largest isolated solid sphere
(:mod:`ctagrg.extras.nodule.measure`)."""
