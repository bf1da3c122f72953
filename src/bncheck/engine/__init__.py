"""The verification engine: declarations, targets, the oracle, strategies, properties, mutants, the
runner."""
