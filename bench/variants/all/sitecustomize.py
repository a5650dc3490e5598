"""Benchmark variant (never imported by the project): every proposed change at once (the
involution forward and small decodes on the event loop); run with OMP_NUM_THREADS=1."""
import os
import runpy

_here = os.path.dirname(os.path.abspath(__file__))
for _name in ("involution", "inline_decode"):
    runpy.run_path(os.path.join(_here, "..", _name, "sitecustomize.py"))
