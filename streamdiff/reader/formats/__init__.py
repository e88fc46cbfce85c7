"""Readers of on-disk formats, one module per format (OCDBT B-tree, zarr/n5, msgpack, JSON, refused)."""
