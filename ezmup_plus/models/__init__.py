"""Reference models written in plain PyTorch, with a ``width`` (and ``depth``) argument."""
