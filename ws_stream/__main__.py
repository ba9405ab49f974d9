"""``python -m ws_stream``: the ``ws-stream`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
