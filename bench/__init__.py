"""ws_stream's benchmark suite: ``python -m bench`` (see bench/suite.py)."""
