"""Pre-training a source network: ``graft pretrain`` (end to end, or greedy layer-wise)."""
