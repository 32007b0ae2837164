"""Lateral halves (not in the published method): heads that read the right and the left half of the demo encoder's
features with the same weights, gated halves for step 2, side and size read-outs, and the half thresholds chosen
on validation volumes. docs/demo-encoder.md."""
