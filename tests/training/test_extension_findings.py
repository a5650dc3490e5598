"""What a user extending training meets (a builder of their own, a Dataset made in Python, a loss factory of their
own, settings out of range), from a hunt that extended simsearch as a pytorch-metric-learning / timm user: each
is refused in one line naming what is wrong, before a broken artifact is written or a torch error surfaces."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import model
from model import _registry
from training import ConfigError, Dataset, Split, TrainConfig, load_dataset, preset, train

REPO = Path(__file__).resolve().parents[2]
TINY = dict(epochs=1, augment=False, val_fraction=0.0, threads=1, batch_size=20)


@pytest.fixture(scope="module")
def mnist_small(shared_data) -> Dataset:
    """200 training and 100 test MNIST images, as a Dataset made in Python."""
    ds = load_dataset(shared_data / "mnist", progress=False)
    return Dataset("mnist-small", ds.layout, ds.train.subset(torch.arange(200)), ds.test.subset(torch.arange(100)),
                   ds.class_names, ds.source)


@pytest.fixture
def registry():
    """The registry as it was before the test: what a test registers does not leak into the others."""
    model.list_models()
    saved = dict(_registry._MODELS), dict(_registry._SOURCES), dict(_registry._IMPORTED)
    yield
    for table, before in zip((_registry._MODELS, _registry._SOURCES, _registry._IMPORTED), saved):
        table.clear()
        table.update(before)


class _Fixed(nn.Module):
    """A network of a user's that embeds into `out` dimensions whatever embed_dim it was given."""

    def __init__(self, in_chans: int, out: int, pool: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, out, 3, padding=1)
        self.pool = pool

    def forward(self, x):
        y = self.conv(x)
        return y.mean((2, 3)) if self.pool else y


@pytest.mark.parametrize("loss", ["ms", "ce"])
def test_a_builder_that_ignores_embed_dim_is_refused_naming_both_shapes(registry, mnist_small, tmp_path, loss):
    @model.register_model
    def users_fixed7(in_chans: int = 1, embed_dim: int = 32, **_):
        return _Fixed(in_chans, 7)

    out = tmp_path / "a.safetensors"
    with pytest.raises(ValueError, match=r"users_fixed7 with default arguments embeds 2 images of 1x28x28 as "
                                         r"\(2, 7\), not \(2, 32\): a builder must return a network whose output "
                                         r"is \(N, embed_dim\)"):
        train(preset("default", **TINY, model="users_fixed7", embed_dim=32, loss=loss), mnist_small, out,
              progress=False, log=lambda _: None)
    assert not out.exists()


def test_a_builder_whose_network_does_not_pool_is_refused(registry, mnist_small, tmp_path):
    @model.register_model
    def users_unpooled(in_chans: int = 1, embed_dim: int = 32, **_):
        return _Fixed(in_chans, embed_dim, pool=False)

    with pytest.raises(ValueError, match=r"as \(2, 32, 28, 28\), not \(2, 32\)"):
        train(preset("default", **TINY, model="users_unpooled", embed_dim=32, loss="ce"), mnist_small,
              tmp_path / "a.safetensors", progress=False, log=lambda _: None)


def test_a_builder_that_returns_no_module_is_refused(registry, mnist_small, tmp_path):
    @model.register_model
    def users_not_a_module(in_chans: int = 1, embed_dim: int = 32, **_):
        return lambda x: x.flatten(1)[:, :embed_dim]

    with pytest.raises(ValueError, match="users_not_a_module with default arguments: its builder returned "
                                         "function, not a torch nn.Module"):
        train(preset("default", **TINY, model="users_not_a_module", embed_dim=32, loss="ce"), mnist_small,
              tmp_path / "a.safetensors", progress=False, log=lambda _: None)


@pytest.mark.parametrize("field, value, says", [
    ("grad_clip", -1.0, r"grad_clip must be at least 0 \(0 or null: no clipping\), got -1.0"),  # was gradient ascent
    ("crop_padding", -3, r"crop_padding must be at least 0 .*, got -3"),             # was the crop silently off
    ("eval_ms_batch", 0, r"eval_ms_batch must be at least 4, got 0"),               # was scored as a batch of 8
    ("eval_ms_batch", 10, r"eval_ms_batch 10 must hold two classes of eval_ms_m=8 \(at least 16\)"),
    ("eval_ms_m", 1, r"eval_ms_m must be at least 2 .*, got 1"),
    ("weight_decay", -0.1, r"weight decay must be at least 0, got -0.1"),
    ("seed", -1, r"seed must be in \[0, 2\*\*32 - 1\], got -1"),                     # was a numpy error at the start
    ("step_size", 0, r"step_size must be at least 1 \(epochs\), got 0"),              # was a ZeroDivisionError
    ("warmup_epochs", -1, r"warmup_epochs must be at least 0, got -1"),
    ("test_fraction", 0, r"test_fraction must be in \(0, 1\), got 0"),
    ("test_fraction", 1.5, r"test_fraction must be in \(0, 1\), got 1.5"),
])
def test_a_setting_out_of_its_range_is_a_config_error_naming_it(field, value, says):
    with pytest.raises(ConfigError, match=says) as caught:
        preset("default", **{field: value})
    assert (caught.value.field, caught.value.value) == (field, value)


def test_every_bundled_models_recorded_config_and_both_presets_are_still_accepted():
    import json

    from safetensors import safe_open

    for path in sorted(REPO.glob("model/weights/*.safetensors")):
        with safe_open(str(path), "pt") as f:
            config = json.loads(f.metadata()["simsearch"])["training"]["config"]
        TrainConfig.from_dict(config)
    preset("paper")
    preset("default", grad_clip=0, crop_padding=0, warmup_epochs=0.0, weight_decay=0.0)


def _with_train(ds: Dataset, images: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> Dataset:
    train_split = Split(ds.train.images if images is None else images, ds.train.labels if labels is None else labels)
    return Dataset(ds.name, ds.layout, train_split, ds.test, ds.class_names, ds.source)


def test_a_dataset_of_float_images_is_refused_with_the_conversion(mnist_small, tmp_path):
    # ToTensor's floats in [0, 1] were divided by 255 again: trained on inputs 255 times too small
    floats = _with_train(mnist_small, images=mnist_small.train.images.float() / 255)
    with pytest.raises(ValueError, match=r"dataset 'mnist-small': train images are torch.float32 \(200, 1, 28, 28\), "
                                         r"expected uint8 \(N, C, S, S\) pixels 0..255; floats in \[0, 1\]: "
                                         r"\(images \* 255\).round\(\).to\(torch.uint8\)"):
        train(preset("default", **TINY, model="cnn3a", loss="ce"), floats, tmp_path / "a.safetensors",
              progress=False, log=lambda _: None)


def test_a_dataset_of_non_square_images_is_refused(mnist_small, tmp_path):
    # trained, and the artifact recorded image_size 20 for 28x20 images
    wide = _with_train(mnist_small, images=mnist_small.train.images[..., :20].contiguous())
    with pytest.raises(ValueError, match=r"train images of shape \(200, 1, 28, 20\): expected 1 or 3 channels and "
                                         r"square images"):
        train(preset("default", **TINY, model="cnn3a", loss="ce"), wide, tmp_path / "a.safetensors",
              progress=False, log=lambda _: None)


def test_a_dataset_whose_labels_run_past_its_class_names_is_refused(mnist_small, tmp_path):
    # was a bare IndexError
    labels = mnist_small.train.labels.clone()
    labels[0] = 12
    with pytest.raises(ValueError, match=r"train labels run from 0 to 12, but there are 10 class_names: labels are "
                                         r"ids 0..9"):
        train(preset("default", **TINY, model="cnn3a", loss="ce"), _with_train(mnist_small, labels=labels),
              tmp_path / "a.safetensors", progress=False, log=lambda _: None)


def test_a_torch_dataset_is_refused_saying_what_train_takes(mnist_small, tmp_path):
    # was "TypeError: expected str, bytes or os.PathLike object, not TensorDataset"
    plain = torch.utils.data.TensorDataset(mnist_small.train.images, mnist_small.train.labels)
    with pytest.raises(TypeError, match=r"data: a path load_dataset reads, or a training.Dataset of uint8 image "
                                        r"tensors; got TensorDataset \(a torch Dataset: stack its images"):
        train(preset("default", **TINY, model="cnn3a", loss="ce"), plain, tmp_path / "a.safetensors",
              progress=False, log=lambda _: None)


def test_a_dataset_made_in_python_of_uint8_images_still_trains(mnist_small, tmp_path):
    result = train(preset("default", **TINY, model="cnn3a", loss="ce"), mnist_small, tmp_path / "a.safetensors",
                   progress=False, log=lambda _: None)
    assert result.metrics["precision_at_1"] > 0


def test_a_run_whose_weights_diverge_stops_at_that_epoch_naming_lr(mnist_small, tmp_path):
    # ended in pml's "the first len(query) elements of reference must be equal to query" (NaN != NaN)
    cfg = preset("default", **{**TINY, "epochs": 2}, model="cnn3a", loss="ce", lr=1e8, grad_clip=None,
                 schedule="none", optimizer="adam", weight_decay=0.0)
    lines: list[str] = []
    with pytest.raises(ValueError, match=r"the training loss became nan in epoch 1 and the weights hold NaN or "
                                         r"infinity: they diverged \(lr 1e\+08, grad_clip None\); lower lr, or clip "
                                         r"gradients"):
        train(cfg, mnist_small, tmp_path / "a.safetensors", progress=False, log=lines.append)
    assert not (tmp_path / "a.safetensors").exists()


def test_retrieval_metrics_refuses_nan_embeddings_naming_the_rows():
    from training import evaluate_embeddings, retrieval_metrics

    emb = torch.randn(20, 8, generator=torch.Generator().manual_seed(0))
    emb[3, 0] = float("nan")
    emb[7] = float("inf")
    labels = torch.arange(20) % 4
    for fn in (retrieval_metrics, evaluate_embeddings):
        with pytest.raises(ValueError, match=r"embeddings: 2 of 20 rows hold NaN or infinity \(the first: row 3\)"):
            fn(emb, labels)


@pytest.fixture
def losses():
    """The loss registry as it was before the test."""
    from training import _losses

    saved = dict(_losses._LOSSES)
    yield
    _losses._LOSSES.clear()
    _losses._LOSSES.update(saved)


def test_a_loss_factory_returning_a_pml_loss_itself_is_refused_before_the_data_is_read(losses, tmp_path):
    # was AttributeError: 'NTXentLoss' object has no attribute 'heads', after the data was decoded
    from pytorch_metric_learning import losses as pml

    from training import register_loss

    @register_loss("users_ntxent_raw")
    def users_ntxent_raw(embed_dim, num_classes, **_):
        return pml.NTXentLoss()

    with pytest.raises(ConfigError, match=r"loss 'users_ntxent_raw' cannot be made: TypeError: loss "
                                          r"'users_ntxent_raw': its factory .*users_ntxent_raw returned NTXentLoss, "
                                          r"not a training.MetricLoss; wrap a pytorch-metric-learning loss \(and "
                                          r"miner\) as training.PairLoss\(loss, miner\)"):
        train(preset("default", **TINY, model="cnn3a", loss="users_ntxent_raw"), tmp_path / "no-such-data",
              tmp_path / "a.safetensors", progress=False, log=lambda _: None)


def test_a_loss_factory_without_options_wrapping_a_pml_loss_in_pair_loss_trains(losses, mnist_small, tmp_path):
    # a factory without **options got TypeError: unexpected keyword argument 'label_smoothing' (the trainer's 0)
    from pytorch_metric_learning import losses as pml

    from training import PairLoss, register_loss

    @register_loss("users_ntxent")
    def users_ntxent(embed_dim, num_classes):
        return PairLoss(pml.NTXentLoss(temperature=0.1))

    result = train(preset("default", **TINY, model="cnn3a", loss="users_ntxent"), mnist_small,
                   tmp_path / "a.safetensors", progress=False, log=lambda _: None)
    assert result.history[0]["train_loss"] > 0


def test_a_loss_factory_that_raises_is_a_config_error_naming_the_loss(losses, tmp_path):
    from training import register_loss

    @register_loss("users_broken")
    def users_broken(embed_dim, num_classes, **_):
        raise RuntimeError("needs a margin")

    with pytest.raises(ConfigError, match=r"loss 'users_broken' cannot be made: RuntimeError: needs a margin"):
        preset("default", loss="users_broken").validate()


def test_a_misspelt_model_name_is_a_config_error_from_validate_before_the_data_is_read(tmp_path):
    # was "bad model arguments {}: unknown model ..." from the trainer, after the data was read
    with pytest.raises(ConfigError, match=r"unknown model 'hybrdi1' \(nearest: hybrid1.*\); known: "
                                          r".*model.import_models") as caught:
        train(preset("default", **TINY, model="hybrdi1"), tmp_path / "no-such-data", tmp_path / "a.safetensors",
              progress=False, log=lambda _: None)
    assert (caught.value.field, caught.value.value) == ("model", "hybrdi1")


def test_retrieval_metrics_with_an_integer_k_leaves_out_the_recalls_beyond_it():
    # k=5 reported recall_at_10 computed from 5 neighbours (equal to recall_at_5)
    from training import retrieval_metrics

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(120) % 4
    emb = torch.randn(120, 8, generator=g) + 0.6 * torch.nn.functional.one_hot(labels, 8).float()
    five = retrieval_metrics(emb, labels, k=5)
    assert "recall_at_10" not in five and {"recall_at_1", "recall_at_5"} <= set(five)
    every = retrieval_metrics(emb, labels)
    assert every["recall_at_10"] > every["recall_at_5"] and every["recall_at_5"] == five["recall_at_5"]


def test_model_validate_and_model_copy_check_values_as_a_new_config_does():
    # model_validate raised pydantic's ValidationError; model_copy(update=...) took lr=-1 unchecked
    with pytest.raises(ConfigError, match=r"learning rate must be positive, got -1") as caught:
        TrainConfig.model_validate({"lr": -1})
    assert caught.value.field == "lr"
    with pytest.raises(ConfigError, match=r"learning rate must be positive, got -1"):
        TrainConfig().model_copy(update={"lr": -1})
    assert TrainConfig.model_validate({"lr": 0.01}).lr == 0.01
    assert TrainConfig().model_copy(update={"epochs": 3}).epochs == 3 and TrainConfig().model_copy() == TrainConfig()
