"""Hand-written rules of the report labeler: per-label concept patterns and ConText-style assertion triggers."""
