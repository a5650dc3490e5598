"""Artifact's docstring says what calling `artifact.model` directly needs to give the artifact's vectors: the
recipe it gives is checked here against Embedder, and plain x / 255 input shown to be far off."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

import model


def test_the_recipe_for_calling_artifact_model_directly_gives_the_embedders_vectors(shared_data):
    import io
    import tarfile

    from PIL import Image

    embedder = model.Embedder.from_file(model.default_artifact_path(), device="cpu", trace=False)
    artifact, meta = embedder.artifact, embedder.meta
    images = []
    with tarfile.open(shared_data / "cifar10-jpeg.tar") as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".jpg"):
                images.append(Image.open(io.BytesIO(tar.extractfile(member).read())))
                if len(images) == 32:
                    break
    pixels = np.stack([model.to_model_array(im, meta.in_chans, meta.image_size) for im in images])
    right = embedder.embed_arrays(pixels)
    x = torch.from_numpy(pixels).float() / 255
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (meta.mean, meta.std))
    with torch.inference_mode():
        recipe = F.normalize(model.embed_tensor(artifact.model, (x - mean) / std, meta.tta), dim=1).numpy()
        plain = F.normalize(artifact.model(x), dim=1).numpy()
    assert np.abs(recipe - right).max() < 1e-4
    assert (plain * right).sum(1).mean() < 0.9   # not a little off: other vectors
