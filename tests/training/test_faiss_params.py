"""Importing `training` (and with it pytorch-metric-learning, which patches FAISS for torch tensors) leaves FAISS's
`params` keyword working in the process: Milvus Lite's in-process IVF search passes it, as index.Store does."""
import subprocess
import sys

from tests.conftest import REPO

_SCRIPT = """
import numpy as np, torch
import training
from pytorch_metric_learning.utils import inference   # imports faiss.contrib.torch_utils
import faiss
x = np.random.default_rng(0).standard_normal((500, 8)).astype("float32")
ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(8), 8, 4)
ivf.train(x)
ivf.add(x)
D, I = ivf.search(x[:3], 2, params=faiss.SearchParametersIVF(nprobe=4))   # as milvus_lite's faiss_ivf_flat does
assert I[:, 0].tolist() == [0, 1, 2], I
D, I = ivf.search(torch.from_numpy(x[:3]), 2)                               # as pml does: torch in, torch out
assert isinstance(I, torch.Tensor) and I[:, 0].tolist() == [0, 1, 2], I
print("ok")
"""


def test_faiss_search_takes_params_and_torch_tensors_once_training_is_imported():
    out = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
