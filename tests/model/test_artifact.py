"""The artifact file: safetensors weights plus JSON metadata, round trips exactly, never unpickles."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import model


def _images(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (40 + i, 50, 3), dtype=np.uint8)) for i in range(n)]


def test_round_trip_gives_identical_embeddings(tmp_path):
    torch.manual_seed(1)
    net = model.create_model("hybrid1", in_chans=3)
    meta = model.ArtifactMeta(name="rt", arch="hybrid1", class_names=["a", "b"], metrics={"p@1": 0.5})
    path = model.save_artifact(tmp_path / "rt.safetensors", net, meta)
    direct = model.Embedder(model.Artifact(meta, net.eval(), {}, "0" * 64), device="cpu")
    loaded = model.Embedder.from_file(path, device="cpu")
    np.testing.assert_array_equal(direct.embed(_images()), loaded.embed(_images()))
    assert loaded.meta.class_names == ["a", "b"] and loaded.meta.metrics == {"p@1": 0.5}


def test_hybrid1_artifact_is_under_one_million_bytes(hybrid1_artifact):
    assert hybrid1_artifact.stat().st_size < 1_000_000


def test_artifact_is_plain_safetensors_with_json_metadata(hybrid1_artifact):
    raw = hybrid1_artifact.read_bytes()
    size = int.from_bytes(raw[:8], "little")  # (its first byte may well be 0x80: a length, not pickle's mark)
    header = json.loads(raw[8:8 + size])
    meta = json.loads(header["__metadata__"]["simsearch"])
    assert meta["arch"] == "hybrid1" and meta["in_chans"] == 3 and meta["embed_dim"] == 256
    assert "model.embed.weight" in header
    # nothing but the JSON header and the tensors' raw bytes, end to end: no room for a pickle
    spans = sorted(t["data_offsets"] for k, t in header.items() if k != "__metadata__")
    assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert 8 + size + spans[-1][1] == len(raw) and b"pickle" not in raw


def test_extra_heads_are_stored_beside_the_model(tmp_path):
    net, head = model.create_model("hybrid1"), torch.nn.Linear(256, 10)
    meta = model.ArtifactMeta(name="h", arch="hybrid1", heads={"ce_head": {"classes": 10}})
    art = model.load_artifact(model.save_artifact(tmp_path / "h.safetensors", net, meta, heads={"ce_head": head}))
    torch.testing.assert_close(art.heads["ce_head"]["weight"], head.weight.detach())


@pytest.mark.parametrize("content,reason", [
    (b"", "too short"),
    (b"\x80\x04\x95 pickle bytes here", "not a safetensors file"),
    (b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ", "not a safetensors file"),
])
def test_unreadable_file_gives_a_clear_error(tmp_path, content, reason):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(model.ArtifactError, match=reason):
        model.load_artifact(path)


def test_safetensors_without_simsearch_metadata_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(model.ArtifactError, match="no simsearch metadata"):
        model.load_artifact(tmp_path / "plain.safetensors")


def test_weights_of_another_architecture_are_refused_at_save_and_at_load(tmp_path):
    meta = model.ArtifactMeta(name="x", arch="hybrid1")
    with pytest.raises(model.ArtifactError, match="do not fit architecture 'hybrid1'"):
        model.save_artifact(tmp_path / "x.safetensors", model.create_model("cnn3b"), meta)
    # a file written some other way (another tool, an older simsearch) is refused when loaded
    from safetensors.torch import save_file

    state = {f"model.{k}": v.contiguous() for k, v in model.create_model("cnn3b").state_dict().items()}
    save_file(state, str(tmp_path / "x.safetensors"), metadata={"simsearch": meta.model_dump_json()})
    with pytest.raises(model.ArtifactError, match="do not fit architecture 'hybrid1'"):
        model.load_artifact(tmp_path / "x.safetensors")


@pytest.mark.parametrize("kwargs", [{"stride": 1}, {"act": "relu"}, {"strides": (1, 2, 2)}])
def test_a_network_built_with_options_meta_leaves_out_is_refused_naming_them(tmp_path, kwargs):
    net = model.create_model("hybrid1", **kwargs)
    option = next(iter(kwargs))
    refusal = rf"built by create_model\('hybrid1', {option}=.*other embeddings.*arch_kwargs"
    with pytest.raises(model.ArtifactError, match=refusal):
        model.save_artifact(tmp_path / "s.safetensors", net, model.ArtifactMeta(name="s", arch="hybrid1"))
    assert not (tmp_path / "s.safetensors").exists()


def test_a_network_saved_with_its_options_reloads_computing_its_embeddings(tmp_path):
    torch.manual_seed(0)
    net = model.create_model("hybrid1", stride=1, act="relu").train()
    meta = model.ArtifactMeta(name="s1", arch="hybrid1", arch_kwargs={"stride": 1, "act": "relu"})
    path = model.save_artifact(tmp_path / "s1.safetensors", net, meta)
    assert net.training   # the check at save left the caller's network in its mode
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.load_artifact(path).model(x), net.eval()(x))


def test_a_mean_or_std_of_another_length_than_the_channels_is_refused():
    with pytest.raises(ValueError, match=r"mean \[0.5, 0.5, 0.5\] and std .* one value per channel.*in_chans=1"):
        model.ArtifactMeta(name="g", arch="hybrid1", in_chans=1)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(model.ArtifactError, match="no such model artifact"):
        model.load_artifact(tmp_path / "nope.safetensors")


def test_saved_artifact_is_readable_by_others(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        path = model.save_artifact(tmp_path / "m.safetensors", model.create_model("inn2"),
                                   model.ArtifactMeta(name="m", arch="inn2"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_an_artifact_records_what_changes_its_embeddings_and_one_a_newer_version_requires_is_refused(tmp_path):
    """`requires` names the metadata a reader must apply (tta, for a mirror-averaging model): an artifact
    requiring something this version does not apply is refused, not embedded otherwise under the same id."""
    torch.manual_seed(2)
    net = model.create_model("hybrid1", in_chans=3)
    plain = model.save_artifact(tmp_path / "plain.safetensors", net,
                                model.ArtifactMeta(name="p", arch="hybrid1"))
    assert model.read_meta(plain).requires == []
    mirrored = model.save_artifact(tmp_path / "tta.safetensors", net,
                                   model.ArtifactMeta(name="t", arch="hybrid1", tta="hflip"))
    assert model.read_meta(mirrored).requires == ["tta"]
    artifact = model.load_artifact(mirrored)
    future = model.resave_artifact(artifact, tmp_path / "future.safetensors",
                                   artifact.meta.model_copy(update={"requires": ["tta", "grey_world"]}))
    with pytest.raises(model.ArtifactError, match=r"the artifact requires \['grey_world'\], which this version of "
                                                  r"simsearch does not apply"):
        model.Embedder.from_file(future)
    with pytest.raises(model.ArtifactError, match="written by a newer simsearch"):
        model.read_meta(future)


def _edited(artifact, dest, header=None, **meta_changes):
    """A copy of `artifact` at `dest` with its safetensors header replaced by `header`, or with these metadata
    fields changed (as a hand edit or a damaged copy would leave it); the tensors' bytes are kept."""
    raw = artifact.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    if header is None:
        header = json.loads(raw[8:8 + size])
        meta = {**json.loads(header["__metadata__"]["simsearch"]), **meta_changes}
        header["__metadata__"]["simsearch"] = json.dumps(meta)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    dest.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + size:])
    return dest


@pytest.mark.parametrize("changes,said", [
    ({"image_size": 0}, r"image_size: Input should be greater than or equal to 1 \(found 0\)"),
    ({"image_size": -5}, r"image_size: .* \(found -5\)"),
    ({"embed_dim": 0}, r"embed_dim: .* \(found 0\)"),
    ({"std": [0, 0, 0]}, r"std \[0.0, 0.0, 0.0\] must be positive"),
    ({"arch_kwargs": {"stride": "x"}}, r"cannot embed a 3x32x32 image \(image_size 32\) with arch_kwargs stride='x'"),
])
def test_a_hand_edited_artifact_is_refused_at_load_naming_the_file_and_the_field(hybrid1_artifact, tmp_path,
                                                                                  changes, said):
    edited = _edited(hybrid1_artifact, tmp_path / "edited.safetensors", **changes)
    with pytest.raises(model.ArtifactError, match=rf"^{tmp_path / 'edited.safetensors'}: .*{said}"):
        model.Embedder.from_file(edited, device="cpu")


@pytest.mark.parametrize("header,said", [
    ([], "not a safetensors file: its header is a JSON list, not an object"),
    ({"__metadata__": "x"}, "the safetensors file has no simsearch metadata"),
    ({"__metadata__": {"simsearch": 7}}, "invalid artifact metadata: a JSON int where"),
])
def test_a_header_of_another_shape_is_refused_naming_the_file(hybrid1_artifact, tmp_path, header, said):
    edited = _edited(hybrid1_artifact, tmp_path / "odd.safetensors", header=header)
    for read in (model.read_meta, model.load_artifact):
        with pytest.raises(model.ArtifactError, match=rf"^{tmp_path / 'odd.safetensors'}: {said}"):
            read(edited)
