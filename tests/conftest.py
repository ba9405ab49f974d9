"""Settings for the whole suite."""

from __future__ import annotations

import signal

# The ws-stream processes the tests start must see SIGHUP's default action. Run
# under ``nohup`` (or any parent that ignores SIGHUP), they would inherit the
# ignored signal, keep it, and say so on their first stderr line (README: "Signals")
# - which the tests of SIGHUP and of that first line do not expect. Reset once,
# here: every child inherits the default.
if hasattr(signal, "SIGHUP"):
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
