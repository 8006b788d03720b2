"""Specification of the pure core: spec/README.md and the model checker."""
