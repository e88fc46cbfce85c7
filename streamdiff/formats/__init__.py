"""One reader module per on-disk format that is not an Orbax PyTree item read from metadata."""
