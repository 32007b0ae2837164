"""Step 2's mirrored pairs (not in the published method): ``extras.mirror`` of the decoder stage."""
