"""Written by ember-agent next to the ember_monitor package in a private directory put first on the
PYTHONPATH of a command it launches: starts the asyncio task monitor without any change to
the program, then runs the sitecustomize this file shadows, if there is one."""

import importlib.machinery
import importlib.util
import os
import sys

try:
    import ember_monitor

    ember_monitor.start()
except Exception as error:  # never break the program being profiled
    sys.stderr.write(f"ember: asyncio task monitor not started: {error}\n")

_here = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.machinery.PathFinder.find_spec(
    "sitecustomize", [p for p in sys.path if os.path.abspath(p or ".") != _here]
)
if _spec is not None and _spec.loader is not None:
    _module = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_module)
