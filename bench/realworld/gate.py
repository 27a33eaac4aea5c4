"""Runs a script once the corpus driver says so: `gate.py SCRIPT ARGS...` prints `ready`,
waits for a line on stdin (the profilers are attached by then), then runs SCRIPT as
`__main__`, so a profile holds the workload and not the interpreter's start-up."""

import runpy
import sys

script, args = sys.argv[1], sys.argv[2:]
print("ready", flush=True)
sys.stdin.readline()
sys.argv = [script, *args]
runpy.run_path(script, run_name="__main__")
