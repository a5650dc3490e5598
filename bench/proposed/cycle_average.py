"""Weight average of artifacts from one training trajectory (cyclic SWA), with BatchNorm statistics
recomputed on the training split by torch.optim.swa_utils.update_bn. A proposal for training/, not used
by it; the eleventh session's evidence (docs/results/training.md: the average scored below the later
cycle alone, so no averaging command was added).

    OMP_NUM_THREADS=1 .venv/bin/python bench/proposed/cycle_average.py OUT NAME DATA ARTIFACT ARTIFACT [...]
    .venv/bin/simsearch evaluate OUT DATA

The first artifact's metadata and heads are kept (its CE head does not match the averaged network, so
the CE figures `simsearch evaluate` prints for OUT mean nothing; the retrieval figures do not use it).
BatchNorm sees the training images without augmentation, normalised as the artifact says.
"""
from __future__ import annotations

import sys

import torch
from torch.optim.swa_utils import update_bn

import model
from training import load_dataset


def main() -> None:
    out, name, data, *paths = sys.argv[1:]
    torch.set_num_threads(1)
    arts = [model.load_artifact(p) for p in paths]
    base = arts[0]
    states = [a.model.state_dict() for a in arts]
    averaged = {k: (sum(s[k].double() for s in states) / len(states)).to(v.dtype) if v.is_floating_point() else v
                for k, v in states[0].items()}
    base.model.load_state_dict(averaged)
    images = load_dataset(data).train.images
    c = images.shape[1]
    mean = torch.tensor(base.meta.mean).view(1, c, 1, 1)
    std = torch.tensor(base.meta.std).view(1, c, 1, 1)
    batches = [(images[i:i + 500].float() / 255 - mean) / std for i in range(0, len(images), 500)]
    with torch.no_grad():
        update_bn(batches, base.model)
    base.model.eval()
    model.resave_artifact(base, out, base.meta.model_copy(update={"name": name}))
    print("wrote", out)


if __name__ == "__main__":
    main()
