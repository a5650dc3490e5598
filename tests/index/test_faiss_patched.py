"""FAISS patched by faiss.contrib.torch_utils (pytorch-metric-learning's inference module imports it, so importing
`training` does): a filtered search, which passes FAISS search parameters, still works in that process."""
import subprocess
import sys

from tests.conftest import REPO

_SCRIPT = """
import sys, numpy as np
import faiss.contrib.torch_utils   # what `import training` does through pytorch-metric-learning
import faiss
from index import Item, Store, StoreConfig
assert faiss.IndexFlatIP.search.__name__ == "torch_replacement_search"   # the patch is in place
rng = np.random.default_rng(0)
v = rng.standard_normal((200, 16)).astype("float32")
v /= np.linalg.norm(v, axis=1, keepdims=True)
with Store.open(StoreConfig(sys.argv[1], dim=16, model_id="test@0")) as store:
    store.upsert([Item(f"i{i}", v[i], None, {"n": i % 7}) for i in range(200)])
    for k in (3, 150):   # a few candidates (the selector's search) and many (the broad search, then the selector)
        hits = store.search(v[0], k=k, where={"n": 3})[0]
        assert hits and all(h.metadata["n"] == 3 for h in hits), hits
print("ok")
"""


def test_a_filtered_search_works_where_torch_utils_has_patched_faiss(tmp_path):
    out = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path / "store")], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
