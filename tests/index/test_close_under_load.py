"""A store closed while other threads read and write it (a gallery dropped or replaced under load, the service
stopping) ends their work with StoreClosedError, never by closing a SQLite connection under a statement another
thread is stepping: that freed the statement under it and the whole process died with SIGSEGV (fifty-second
session: every gallery of the service went down with it). The load runs in a child process, so that a crash is a
failed test with its signal, not the end of the test run."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_LOAD = textwrap.dedent('''
    import sys, tempfile, threading, time
    from pathlib import Path
    import numpy as np
    from index import Item, Store, StoreConfig, StoreClosedError

    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((400, 32)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    unexpected = []

    def work(store, kind, stop):
        i = 0
        while not stop.is_set():
            i += 1
            try:
                if kind == 0:
                    store.get(f"i{i % 400}")
                elif kind == 1:
                    store.list_positions(0, 200)
                elif kind == 2:
                    store.update(f"i{i % 400}", label=f"l{i % 7}")
                elif kind == 3:
                    store.search(vecs[i % 400], k=5, exact=True)
                else:
                    store.get_many([f"i{j}" for j in range(i % 50, i % 50 + 50)])
            except StoreClosedError:
                return
            except Exception as exc:
                unexpected.append(f"{kind}: {type(exc).__name__}: {exc}")
                return

    with tempfile.TemporaryDirectory() as tmp:
        for r in range(int(sys.argv[1])):
            store = Store.open(StoreConfig(path=Path(tmp) / f"s{r}", dim=32, model_id="m@000000000000",
                                           snapshot_every=0))
            store.upsert([Item(f"i{i}", v) for i, v in enumerate(vecs)])
            stop = threading.Event()
            threads = [threading.Thread(target=work, args=(store, k % 5, stop)) for k in range(6)]
            for t in threads:
                t.start()
            time.sleep(0.05 + 0.01 * (r % 5))
            store.close()
            stop.set()
            for t in threads:
                t.join()
    print("\\n".join(unexpected[:10]))
    sys.exit(1 if unexpected else 0)
''')


def test_closing_a_store_under_reads_and_writes_ends_them_with_store_closed_not_a_crash(tmp_path):
    # 30 rounds crashed the process 3 times out of 3 before the fix (SIGSEGV), after 1-3 s
    run = subprocess.run([sys.executable, "-c", _LOAD, "30"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, (f"the load ended with return code {run.returncode} (a negative code is the signal "
                                 f"that killed it)\nstdout: {run.stdout[-2000:]}\nstderr: {run.stderr[-2000:]}")
