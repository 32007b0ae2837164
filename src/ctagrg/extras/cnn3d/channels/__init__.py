"""The cnn3d stem's optional channels, one module each: its config section and its measurement.

``context`` (solid tissue surrounded by lung, on the patch grid), ``blob`` (an isolated solid blob, at full
resolution), ``sphere`` (an isolated solid sphere) and ``node`` (a soft-tissue ball ringed by fat). The stem
(:mod:`ctagrg.extras.cnn3d.stem`) measures them after the HU-bin statistics, in that order: blob, sphere, node, and
appends the context channels last.
"""
