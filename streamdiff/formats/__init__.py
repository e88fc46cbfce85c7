"""Readers for stores that are not Orbax checkpoints, one module per on-disk format."""
