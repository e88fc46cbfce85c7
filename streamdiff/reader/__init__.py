"""The reader: from a user's path to a tree of leaves, metadata only (see ARCHITECTURE.md)."""
