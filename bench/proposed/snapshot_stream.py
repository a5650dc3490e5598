"""Peak memory of loading an index snapshot: index/_faiss.py's read_snapshot against a streaming read.

    .venv/bin/python bench/proposed/snapshot_stream.py PATH/index.snapshot

Each way runs in a fresh subprocess (so VmHWM is its own): "current" calls index._faiss.read_snapshot
(the whole payload read into a numpy buffer, CRC checked, then faiss.deserialize_index copies it);
"streaming" reads the same file through faiss.PyCallbackIOReader, updating the CRC as FAISS reads,
and checks it at the end. Prints seconds, resident memory after loading and peak (VmHWM), and
whether both give the same vectors count and checksum verdict. A proposal for index/, not used by it.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CHILD = r'''
import json, re, sys, time, zlib
from pathlib import Path
def mem(key):
    return int(re.search(key + r":\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024
import faiss, numpy as np
import index._faiss as F
path, how = Path(sys.argv[1]), sys.argv[2]
base = mem("VmRSS")
t0 = time.perf_counter()
if how == "current":
    snap = F.read_snapshot(path)
    idx, ok = snap.index, True
else:
    with open(path, "rb") as f:
        magic, hlen, plen, crc = F._HEADER.unpack(f.read(F._HEADER.size))
        assert magic == F._MAGIC
        head = f.read(hlen)
        state = {"crc": zlib.crc32(head), "left": plen}
        def read(n):
            n = min(n, state["left"])
            b = f.read(n)
            state["left"] -= len(b)
            state["crc"] = zlib.crc32(b, state["crc"])
            return b
        idx = faiss.read_index(faiss.PyCallbackIOReader(read, 1 << 20))
        ok = state["left"] == 0 and state["crc"] == crc
dt = time.perf_counter() - t0
print(json.dumps({"how": how, "seconds": dt, "ntotal": idx.ntotal, "checksum_ok": ok,
                  "rss_before_mib": base, "rss_after_mib": mem("VmRSS"), "peak_mib": mem("VmHWM")}))
'''


def main() -> None:
    path = Path(sys.argv[1])
    repo = Path(__file__).resolve().parents[2]
    for how in ("current", "streaming"):
        out = subprocess.run([sys.executable, "-c", CHILD, str(path), how], capture_output=True, text=True, cwd=repo)
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
        if not line:
            print(how, "failed:", out.stderr[-2000:])
            continue
        r = json.loads(line[-1])
        print(f"{how:10s} {r['seconds']:6.1f} s  ntotal {r['ntotal']:,}  checksum ok {r['checksum_ok']}  "
              f"RSS {r['rss_before_mib']:.0f} -> {r['rss_after_mib']:.0f} MiB  peak {r['peak_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
