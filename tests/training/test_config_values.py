"""TrainConfig.validate() refuses impossible values and values of the wrong type, naming them, so that the
Python API and `simsearch train` refuse the same ones (the command line with one line and exit status 2)."""
from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError

import model
from training import ConfigError, TrainConfig, preset


@pytest.mark.parametrize("changes, message", [
    (dict(embed_dim=0), "embed_dim must be at least 1, got 0"),
    (dict(embed_dim=-4), "embed_dim must be at least 1, got -4"),
    (dict(image_size=0), "image_size must be at least 1, got 0"),
    (dict(threads=0), "threads must be at least 1, got 0"),
    (dict(threads=-1), "threads must be at least 1, got -1"),
    (dict(max_train=0), "max_train must be at least 1 (leave it out for every image), got 0"),
    (dict(max_train=-5), "max_train must be at least 1 (leave it out for every image), got -5"),
    (dict(max_test=0), "max_test must be at least 1 (leave it out for every image), got 0"),
    (dict(m_per_class=2.5), "m_per_class must be an integer, got 2.5"),
    (dict(m_per_class="abc"), "m_per_class must be an integer, got 'abc'"),
    (dict(m_per_class=1), "m_per_class must be at least 2 (images of a class in a batch), got 1"),
    (dict(epochs=True), "epochs must be an integer, got True"),
    (dict(lr="fast"), "lr must be a number, got 'fast'"),
    (dict(lr=float("nan")), "lr must be a number, got nan"),
    (dict(threads="2"), "threads must be an integer or null, got '2'"),
    (dict(teachers="t.safetensors"), "teachers must be a list of strings, got 't.safetensors'"),
    (dict(label_smoothing=2), "label_smoothing must be in [0, 1], got 2"),
    (dict(in_chans=2), "in_chans must be 1 (grey) or 3 (colour), got 2"),
    (dict(device="tpu"), "device must be cpu, cuda or cuda:N, got 'tpu'"),
    (dict(device="gpu"), "device must be cpu, cuda or cuda:N, got 'gpu'"),
    (dict(loss_kwargs="{ms_weight:2}"), "loss_kwargs must be a JSON object, got '{ms_weight:2}'"),
    (dict(loss_kwargs=[1, 2]), "loss_kwargs must be a JSON object, got [1, 2]"),
    (dict(loss_kwargs={"ms_weight": "abc"}), "loss option ms_weight must be a number, got 'abc'"),
    (dict(loss="supcon", loss_kwargs={"temperature": "hot"}), "loss option temperature must be a number, got 'hot'"),
    (dict(loss="supcon", loss_kwargs={"temperature": -1}), "loss option temperature must be positive, got -1"),
    (dict(loss="nsoftmax", loss_kwargs={"temperature": 0}), "loss option temperature must be positive, got 0"),
    (dict(loss="arcface", loss_kwargs={"scale": -64}), "loss option scale must be positive, got -64"),
    (dict(loss="circle", loss_kwargs={"gamma": 0}), "loss option gamma must be positive, got 0"),
    (dict(loss="ms", loss_kwargs={"alpha": -2}), "loss option alpha must be positive, got -2"),
    (dict(loss="ms", loss_kwargs={"beta": 0}), "loss option beta must be positive, got 0"),
    (dict(loss="pddm", loss_kwargs={"hidden": 1.5}), "loss option hidden must be an integer, got 1.5"),
    (dict(loss="triplet", loss_kwargs={"triplets": 3}), "loss option triplets must be a string, got 3"),
    (dict(loss="triplet", loss_kwargs={"margin": -0.2}), "loss option margin (a margin) must be at least 0, got -0.2"),
    (dict(loss="ms", loss_kwargs={"epsilon": -0.1}),
     "loss option epsilon (the miner's margin on cosine similarity) must be in [0, 2], got -0.1"),
    (dict(loss="ms", loss_kwargs={"base": 1.5}), "loss option base (a cosine similarity) must be in [-1, 1], got 1.5"),
    (dict(loss="contrastive", loss_kwargs={"neg_margin": 3}),
     "loss option neg_margin (a distance between unit vectors) must be in [0, 2], got 3"),
    (dict(loss="contrastive", loss_kwargs={"pos_margin": 1.2}),
     "loss option pos_margin (1.2) must be below neg_margin (1.0): positive pairs are pulled within the one, negative "
     "ones pushed beyond the other"),
    (dict(loss="circle", loss_kwargs={"m": -0.4}), "loss option m (the circle loss's relaxation) must be in [0, 1], "
     "got -0.4"),
])
def test_impossible_settings_are_refused_by_validate_naming_them(changes, message):
    with pytest.raises(ValueError) as exc:
        preset("default", **changes).validate()
    assert str(exc.value) == message


def test_settings_of_the_right_kind_still_pass():
    preset("default", warmup_epochs=1, lr=1, threads=1, image_size=16, in_chans=1, max_train=1, max_test=1,
           m_per_class=2, label_smoothing=0.1, device="cpu", hflip=None, centre=None, teachers=["t.safetensors"],
           loss="ce+supcon", loss_kwargs={"temperature": 0.2, "supcon_weight": 2, "label_smoothing": 0.1}).validate()
    preset("default", loss="pddm", loss_kwargs={"hidden": 64, "per": "batch", "detach": False}).validate()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_is_refused_where_there_is_no_gpu():
    with pytest.raises(ValueError, match="device 'cuda': no CUDA GPU is available here"):
        preset("default", device="cuda").validate()


# A config as the dataclass TrainConfig (before pydantic) recorded it in checkpoints and metrics.json: json.dumps of
# to_dict() of preset("default", lr=1, rotate=10, centre=0, grad_clip=None, teachers=["a", "b"], in_chans=1,
# loss_kwargs={"ms_weight": 2}, arch_kwargs={"widths": [8, 16]}, tta="hflip"). Resuming and reusing a finished
# experiment compare the recorded JSON with the config's own.
RECORDED_BEFORE = (
    '{"model": "hybrid1", "arch_kwargs": {"widths": [8, 16]}, "fold_norm": false, "init_from": null, "teachers": '
    '["a", "b"], "distill_views": "clean", "distill_weight": 1.0, "distill_temperature": 0.1, '
    '"distill_logits_weight": 0.0, "distill_logits_temperature": 4.0, "embed_dim": 256, "loss": "ce+ms", '
    '"loss_kwargs": {"ms_weight": 2}, "epochs": 30, "batch_size": 128, "m_per_class": 8, "optimizer": "adamw", "lr": '
    '1, "weight_decay": 0.02, "schedule": "cosine", "warmup_epochs": 1.0, "step_size": 10, "augment": true, '
    '"crop_padding": 4, "hflip": null, "rotate": 10, "scale": 0.0, "erase": 0.0, "label_smoothing": 0.0, "tta": '
    '"hflip", "ema": 0.0, "centre": 0, "val_fraction": 0.1, "grad_clip": null, "seed": 0, "threads": null, "device": '
    'null, "amp": true, "in_chans": 1, "image_size": null, "test_fraction": 0.2, "max_train": null, "max_test": null, '
    '"eval_ms_batch": 64, "eval_ms_m": 8}')


def test_a_config_recorded_before_loads_and_is_recorded_again_the_same():
    recorded = json.loads(RECORDED_BEFORE)
    cfg = TrainConfig.from_dict(recorded)
    assert json.dumps(cfg.to_dict()) == RECORDED_BEFORE   # the same keys, order and numbers (1 stays 1, not 1.0)
    assert cfg == preset("default", lr=1, rotate=10, centre=0, grad_clip=None, teachers=["a", "b"], in_chans=1,
                         loss_kwargs={"ms_weight": 2}, arch_kwargs={"widths": [8, 16]}, tta="hflip")
    assert cfg.replace(epochs=2).to_dict() == {**recorded, "epochs": 2} and cfg.epochs == 30
    # a record from before a field existed: the field takes its default
    assert TrainConfig.from_dict({k: v for k, v in recorded.items() if k != "eval_ms_m"}).eval_ms_m == 8


@pytest.mark.parametrize("path", sorted(model.default_artifact_path("mnist").parent.glob("*.safetensors")),
                         ids=lambda p: p.name)
def test_the_bundled_artifacts_training_configs_load_as_recorded(path):
    recorded = model.read_meta(path).training["config"]
    again = TrainConfig.from_dict(recorded).to_dict()
    assert json.dumps({k: again[k] for k in recorded}) == json.dumps(recorded)


def test_a_config_is_checked_when_made_and_refusals_carry_the_field():
    with pytest.raises(ConfigError) as exc:
        TrainConfig(embed_dim=0)
    assert (exc.value.field, exc.value.value, str(exc.value)) == ("embed_dim", 0, "embed_dim must be at least 1, got 0")
    with pytest.raises(ConfigError, match="val fraction must be in \\[0, 1\\), got 1"):
        preset("default").replace(val_fraction=1)
    with pytest.raises(ConfigError, match=r"unknown TrainConfig fields: \['epoch', 'lrate'\]"):
        TrainConfig.from_dict({"epoch": 3, "lrate": 0.1})
    with pytest.raises(ConfigError, match=r"distill logits weight needs a teacher \(teachers is empty\)"):
        preset("default", distill_logits_weight=0.5)
    for changes, message in [(dict(in_chans=True), "in_chans must be an integer or null, got True"),
                             (dict(optimizer="sgd"), "optimizer must be adam or adamw, got 'sgd'"),
                             (dict(teachers=["a", 1]), "teachers must be a list of strings, got ['a', 1]"),
                             (dict(hflip="yes"), "hflip must be true or false or null, got 'yes'"),
                             (dict(tta=None, centre=float("inf")), "centre must be a number or null, got inf")]:
        with pytest.raises(ConfigError) as exc:
            preset("default", **changes)
        assert str(exc.value) == message
    with pytest.raises(ValidationError, match="frozen"):   # a change is a replace(), checked
        preset("default").epochs = 0
