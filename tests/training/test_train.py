"""A short real training run, resuming from a checkpoint, and evaluation of the artifact it writes."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import model
from training import evaluate_artifact, preset, train
from training._centre import CENTRE_CHOICES

REPO = Path(__file__).resolve().parents[2]

QUICK = dict(epochs=6, max_train=1200, arch_kwargs={"norm": True}, max_test=1000, threads=1, batch_size=60, lr=3e-3, val_fraction=0.1)


@pytest.fixture(scope="module")
def mnist_run(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "hybrid1-mnist.safetensors"
    result = train(preset("default", **QUICK), shared_data / "mnist", out, progress=False, log=lambda _: None)
    return result


def test_short_real_run_beats_chance_by_far(mnist_run):
    m = mnist_run.metrics
    # 10 balanced classes: a random embedding has precision@1 about 0.1
    assert m["precision_at_1"] > 0.4, m
    assert m["ce_accuracy"] > 0.3 and m["ce_loss"] < math.log(10)
    art = model.load_artifact(mnist_run.artifact)
    assert art.meta.in_chans == 1 and art.meta.image_size == 28 and len(art.meta.class_names) == 10
    assert art.meta.tta == "none" and m["tta"] == "none"  # digits are not trained with mirror images
    assert art.meta.metrics["precision_at_1"] == m["precision_at_1"]
    assert "ce_head" in art.heads and art.heads["ce_head"]["weight"].shape == (10, 256)
    assert art.meta.training["config"]["loss"] == "ce+ms" and len(art.meta.training["history"]) == QUICK["epochs"]
    # with a validation split, the share of the mean embedding taken off is the one that retrieved best there
    chosen, scores = art.meta.training["centre"], art.meta.training["centre_val_precision_at_1"]
    assert chosen in CENTRE_CHOICES and scores[str(chosen)] == max(scores.values()) and len(scores) == 5
    saved = json.loads(mnist_run.metrics_path.read_text())
    assert saved["metrics"]["ms_loss"] == m["ms_loss"]
    assert not mnist_run.artifact.with_name(mnist_run.artifact.name + ".ckpt").exists()


def test_evaluate_is_consistent_with_training(mnist_run, shared_data):
    # the stored artifact reproduces the training-time evaluation exactly on the same test subset
    same = evaluate_artifact(mnist_run.artifact, shared_data / "mnist", max_test=QUICK["max_test"])
    for k in ("precision_at_1", "mean_average_precision_at_r", "recall_at_10", "ce_loss", "ms_loss"):
        assert same[k] == pytest.approx(mnist_run.metrics[k], abs=1e-5), k
    assert same["tta"] == "none"
    mirrored = evaluate_artifact(mnist_run.artifact, shared_data / "mnist", max_test=QUICK["max_test"], tta="hflip")
    assert mirrored["tta"] == "hflip" and mirrored["ms_loss"] != pytest.approx(same["ms_loss"], abs=1e-4)
    with pytest.raises(ValueError, match="unknown test-time augmentation 'rot90'"):
        evaluate_artifact(mnist_run.artifact, shared_data / "mnist", max_test=100, tta="rot90")
    res = evaluate_artifact(mnist_run.artifact, shared_data / "mnist")
    for k in ("precision_at_1", "r_precision", "mean_average_precision_at_r", "recall_at_1", "recall_at_5",
              "recall_at_10", "ce_accuracy"):
        assert 0.0 <= res[k] <= 1.0, (k, res[k])
    assert res["recall_at_1"] == pytest.approx(res["precision_at_1"])
    assert res["recall_at_1"] <= res["recall_at_5"] <= res["recall_at_10"]
    assert res["mean_average_precision_at_r"] <= res["r_precision"] + 1e-9
    assert res["test_size"] == 10000 and res["ce_loss"] > 0 and res["ms_loss"] >= 0
    assert res["ms_loss_settings"]["batch_size"] == 64 and res["ms_loss_settings"]["m_per_class"] == 8
    assert 0 <= res["ms_loss_plain"] < res["ms_loss"] and res["ms_loss_plain_settings"]["batch_size"] == 32


def test_evaluate_refuses_a_model_of_another_shape(hybrid1_artifact, shared_data):
    from training import DatasetError

    with pytest.raises(DatasetError, match="the model expects 3x32x32"):
        evaluate_artifact(hybrid1_artifact, shared_data / "mnist")


def test_resume_continues_where_it_stopped_and_matches_an_uninterrupted_run(shared_data, tmp_path):
    cfg = preset("default", **{**QUICK, "epochs": 2, "max_train": 240, "max_test": 200, "loss": "ms", "model": "cnn3a"})
    straight = train(cfg, shared_data / "fashion-mnist", tmp_path / "a.safetensors", progress=False,
                     log=lambda _: None)
    logs: list[str] = []
    assert train(cfg, shared_data / "fashion-mnist", tmp_path / "b.safetensors", progress=False,
                 log=logs.append, stop_after=1) is None
    assert (tmp_path / "b.safetensors.ckpt").exists() and not (tmp_path / "b.safetensors").exists()
    again: list[str] = []   # without resume: said, then started afresh (seeded, so the same first epoch again)
    assert train(cfg, shared_data / "fashion-mnist", tmp_path / "b.safetensors", progress=False, log=again.append,
                 stop_after=1) is None
    assert any("b.safetensors.ckpt holds an earlier, unfinished run: starting afresh" in line for line in again)
    assert not any("holds an earlier" in line for line in logs)
    resumed = train(cfg, shared_data / "fashion-mnist", tmp_path / "b.safetensors", progress=False,
                    log=logs.append, resume=True)
    assert any("resumed" in line and "epoch 1" in line for line in logs)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    a, b = model.load_artifact(straight.artifact), model.load_artifact(resumed.artifact)
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.allclose(va, vb, atol=1e-5), k
    assert resumed.metrics["precision_at_1"] == pytest.approx(straight.metrics["precision_at_1"], abs=1e-6)
    # MS-only training has no CE head, so no CE loss is reported
    assert "ce_loss" not in resumed.metrics and "ms_loss" in resumed.metrics


def test_resume_is_exact_when_a_batch_holds_only_some_of_the_classes(tiny_cifar_folder, tmp_path):
    # 4 classes, batches of 2 classes x 8: which two comes from the class order the sampler shuffles in place
    # every epoch, which the checkpoint keeps.
    cfg = preset("default", epochs=3, batch_size=16, model="cnn3a", augment=False, val_fraction=0.0, threads=1)
    straight = train(cfg, tiny_cifar_folder, tmp_path / "a.safetensors", progress=False, log=lambda _: None)
    assert train(cfg, tiny_cifar_folder, tmp_path / "b.safetensors", progress=False, log=lambda _: None,
                 stop_after=1) is None
    resumed = train(cfg, tiny_cifar_folder, tmp_path / "b.safetensors", progress=False, log=lambda _: None,
                    resume=True)
    assert resumed.history[0]["epoch"] == 1 and len(resumed.history) == 3
    a, b = model.load_artifact(straight.artifact), model.load_artifact(resumed.artifact)
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k


def test_ema_ships_the_moving_average_and_resumes_with_it(shared_data, tmp_path):
    cfg = preset("default", **{**QUICK, "epochs": 2, "max_train": 240, "max_test": 200, "model": "cnn3a", "ema": 0.9})
    straight = train(cfg, shared_data / "fashion-mnist", tmp_path / "a.safetensors", progress=False,
                     log=lambda _: None)
    assert train(cfg, shared_data / "fashion-mnist", tmp_path / "b.safetensors", progress=False,
                 log=lambda _: None, stop_after=1) is None
    ckpt = torch.load(tmp_path / "b.safetensors.ckpt", weights_only=True)
    raw = ckpt["model"]
    averaged = {k.removeprefix("module.net."): v for k, v in ckpt["ema"].items() if k.startswith("module.net.")}
    assert averaged.keys() == raw.keys()
    assert any(not torch.allclose(averaged[k].float(), raw[k].float()) for k in raw)  # the average lags the weights
    resumed = train(cfg, shared_data / "fashion-mnist", tmp_path / "b.safetensors", progress=False,
                    log=lambda _: None, resume=True)
    a, b = model.load_artifact(straight.artifact), model.load_artifact(resumed.artifact)
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.allclose(va, vb, atol=1e-5), k
    assert resumed.metrics["ce_loss"] == pytest.approx(straight.metrics["ce_loss"], abs=1e-5)
    assert b.meta.training["config"]["ema"] == 0.9
    # the same run without the average trains the same weights but ships them, not the average
    plain = train(cfg.replace(ema=0.0), shared_data / "fashion-mnist", tmp_path / "c.safetensors", progress=False,
                  log=lambda _: None)
    c = model.load_artifact(plain.artifact)
    assert any(not torch.allclose(va, vc, atol=1e-4)
               for va, vc in zip(a.model.state_dict().values(), c.model.state_dict().values()))


def test_resume_refuses_another_configuration(shared_data, tmp_path):
    cfg = preset("default", **{**QUICK, "max_train": 100, "max_test": 100, "model": "inn2"})
    train(cfg, shared_data / "mnist", tmp_path / "c.safetensors", progress=False, log=lambda _: None,
          stop_after=1)
    with pytest.raises(ValueError, match="different configuration: lr 0.003 there, 0.1 here"):
        train(cfg.replace(lr=0.1), shared_data / "mnist", tmp_path / "c.safetensors", progress=False,
              log=lambda _: None, resume=True)


def test_resume_accepts_a_checkpoint_from_before_newer_config_fields(shared_data, tmp_path):
    cfg = preset("default", **{**QUICK, "epochs": 2, "max_train": 100, "max_test": 100, "model": "inn2"})
    out = tmp_path / "old.safetensors"
    train(cfg, shared_data / "fashion-mnist", out, progress=False, log=lambda _: None, stop_after=1)
    ckpt = out.with_name(out.name + ".ckpt")
    state = torch.load(ckpt, weights_only=True)
    stored = json.loads(state["config"])
    for field in ("rotate", "scale", "erase", "ema", "tta"):  # fields this checkpoint's writer did not know yet
        del stored[field]
    state["config"] = json.dumps(stored)
    torch.save(state, ckpt)
    logs: list[str] = []
    result = train(cfg, shared_data / "fashion-mnist", out, progress=False, log=logs.append, resume=True)
    assert any("resumed" in line for line in logs) and [h["epoch"] for h in result.history] == [1, 2]
    # a run begun before test-time augmentation existed ships without it, though this one trains with flips
    assert model.read_meta(out).tta == "none" and result.metrics["tta"] == "none"


def test_bad_config_values_are_named():
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        preset("default", loss="hinge").validate()
    with pytest.raises(ValueError, match="unknown loss 'hinge' in 'ce\\+hinge'"):
        preset("default", loss="ce+hinge").validate()
    with pytest.raises(ValueError, match="loss option 'margn' is not one that loss 'ce\\+ms' takes"):
        preset("default", loss="ce+ms", loss_kwargs={"margn": 0.2}).validate()
    with pytest.raises(ValueError, match="'label_smoothing' is not one that loss 'ms' takes"):   # no CE head to smooth
        preset("default", loss="ms", label_smoothing=0.1).validate()
    preset("default", loss="ce+ms", label_smoothing=0.1).validate()
    with pytest.raises(ValueError, match="schedule must be"):
        preset("default", schedule="linear").validate()
    with pytest.raises(ValueError, match="unknown preset 'fast'"):
        preset("fast")
    with pytest.raises(ValueError, match="rotate must be in .* got 200"):
        preset("default", rotate=200).validate()
    with pytest.raises(ValueError, match="erase is a probability .* got 1.5"):
        preset("default", erase=1.5).validate()
    with pytest.raises(ValueError, match="ema is a decay in .* got 1"):
        preset("default", ema=1.0).validate()
    with pytest.raises(ValueError, match="tta must be none or hflip, got 'rot90'"):
        preset("default", tta="rot90").validate()
    with pytest.raises(ValueError, match=r"centre is a share of the mean embedding in \[0, 1\], got 1.5"):
        preset("default", centre=1.5).validate()


def test_rotation_scaling_and_erasing_change_training_images_but_not_their_shape(shared_data):
    from training import load_dataset
    from training._trainer import _augmenter

    ds = load_dataset(shared_data / "mnist")
    images = ds.train.images[:64].float().div(255.0)
    torch.manual_seed(0)
    crop_only = _augmenter(preset("default", crop_padding=0), ds)
    assert crop_only is None  # digits: no flip, and nothing else asked for
    aug = _augmenter(preset("default", crop_padding=0, rotate=20, scale=0.2, erase=1.0), ds)
    out = aug(images)
    assert out.shape == images.shape and out.dtype == torch.float32
    assert 0 <= out.min() and out.max() <= 1
    changed = (out != images).flatten(1).any(dim=1)
    assert changed.all()
    # every image lost a rectangle to erasing: some pixel that was ink is now exactly 0
    assert ((images > 0) & (out == 0)).flatten(1).any(dim=1).float().mean() > 0.9


def test_augmentation_draws_each_image_of_a_batch_on_its_own(shared_data):
    from training import load_dataset
    from training._trainer import _augmenter

    ds = load_dataset(shared_data / "cifar10-jpeg.tar")
    one = ds.train.images[:1].float().div(255.0)
    torch.manual_seed(0)
    out = _augmenter(preset("default"), ds)(one.expand(32, -1, -1, -1).contiguous())
    # 32 copies of one photo come out as many different crops/flips, each a shifted copy of the photo
    assert len({tuple(o.flatten()[::97].tolist()) for o in out}) > 16
    padded = torch.nn.functional.pad(one, (4, 4, 4, 4), mode="reflect")[0]
    for o in out[:8]:
        found = any(torch.equal(o, padded[:, dy:dy + 32, dx:dx + 32]) or torch.equal(o.flip(2), padded[:, dy:dy + 32, dx:dx + 32])
                    for dy in range(9) for dx in range(9))
        assert found, "an augmented image is not an exact crop (or mirrored crop) of the padded photo"


def test_fold_norm_trains_with_batchnorm_and_writes_the_plain_architecture(shared_data, tmp_path):
    cfg = preset("default", **{**QUICK, "arch_kwargs": {}, "epochs": 1, "max_train": 600, "max_test": 300,
                               "fold_norm": True})
    logs: list[str] = []
    result = train(cfg, shared_data / "mnist", tmp_path / "f.safetensors", progress=False, log=logs.append)
    # trained with the extra BatchNorms (more values than the paper's model) ...
    assert "117,480 parameters" in logs[0], logs[0]
    art = model.load_artifact(result.artifact)
    # ... written as the paper's Hybrid-1: no norm arguments, its exact parameter count
    assert art.meta.arch == "hybrid1" and "norm" not in art.meta.arch_kwargs
    assert "head_norm" not in art.meta.arch_kwargs
    assert model.count_parameters(art.model) == 116_344 == result.metrics["parameters"]
    assert art.meta.training["config"]["fold_norm"] is True
    # the recorded scores are those of the folded model the artifact holds
    again = evaluate_artifact(result.artifact, shared_data / "mnist", max_test=300)
    for k in ("precision_at_1", "ms_loss", "ce_loss"):
        assert again[k] == pytest.approx(result.metrics[k], abs=1e-5), k


def test_fold_norm_is_refused_for_a_model_that_cannot_fold(shared_data, tmp_path):
    cfg = preset("default", **{**QUICK, "arch_kwargs": {}, "model": "vgg16", "epochs": 1, "max_train": 100,
                               "max_test": 100, "fold_norm": True})
    with pytest.raises(ValueError, match="fold_norm needs .* 'vgg16' cannot"):
        train(cfg, shared_data / "mnist", tmp_path / "v.safetensors", progress=False, log=lambda _: None)


def test_centring_is_refused_where_a_head_reads_the_embeddings_as_they_are(shared_data, tmp_path):
    cfg = preset("default", **{**QUICK, "epochs": 1, "max_train": 100, "max_test": 100, "loss": "pddm",
                               "centre": 0.5})
    with pytest.raises(ValueError, match="centre needs .* no head but the CE one; 'hybrid1' with loss 'pddm'"):
        train(cfg, shared_data / "mnist", tmp_path / "p.safetensors", progress=False, log=lambda _: None)


def test_evaluate_centre_writes_weights_whose_embeddings_lose_that_share_of_the_mean(mnist_run, shared_data,
                                                                                     tmp_path):
    from training import load_dataset
    from training._centre import mean_embedding
    from training._evaluate import embed_images, head_logits

    out = tmp_path / "centred.safetensors"
    plain = evaluate_artifact(mnist_run.artifact, shared_data / "mnist", max_test=QUICK["max_test"])
    res = evaluate_artifact(mnist_run.artifact, shared_data / "mnist", max_test=QUICK["max_test"], centre=0.5,
                            out=out)
    src, new = model.load_artifact(mnist_run.artifact), model.load_artifact(out)
    ds = load_dataset(shared_data / "mnist")
    m = src.meta
    mu = mean_embedding(src.model, ds.train.images, m.mean, m.std)
    assert torch.allclose(mean_embedding(new.model, ds.train.images, m.mean, m.std), 0.5 * mu, atol=1e-4)
    before = embed_images(src.model, ds.test.images[:200], m.mean, m.std)
    after = embed_images(new.model, ds.test.images[:200], m.mean, m.std)
    assert torch.allclose(after, before - 0.5 * mu, atol=1e-4)
    # the CE head moved with the embeddings: the same logits, the same CE figures; retrieval is what changes
    assert torch.allclose(head_logits(after, new.heads["ce_head"]), head_logits(before, src.heads["ce_head"]),
                          atol=1e-3)
    assert res["ce_loss"] == pytest.approx(plain["ce_loss"], abs=1e-5) and res["centre"] == 0.5
    assert res["ms_loss"] != pytest.approx(plain["ms_loss"], abs=1e-4)
    assert new.meta.metrics["precision_at_1"] == res["precision_at_1"] and new.model_id != src.model_id
    again = evaluate_artifact(out, shared_data / "mnist", max_test=QUICK["max_test"])
    assert again["precision_at_1"] == res["precision_at_1"] and "centre" not in again


def test_init_from_starts_from_the_artifacts_weights_and_keeps_its_normalisation(mnist_run, shared_data, tmp_path):
    # lr so small that one epoch cannot move the weights: what the run reports is the starting point
    still = dict(QUICK, epochs=1, max_train=240, lr=1e-9, val_fraction=0.0)
    tuned = train(preset("default", **still, init_from=str(mnist_run.artifact)), shared_data / "mnist",
                  tmp_path / "tuned.safetensors", progress=False, log=lambda _: None)
    fresh = train(preset("default", **still), shared_data / "mnist", tmp_path / "fresh.safetensors",
                  progress=False, log=lambda _: None)
    assert tuned.metrics["precision_at_1"] == pytest.approx(mnist_run.metrics["precision_at_1"], abs=0.03)
    assert fresh.metrics["precision_at_1"] < mnist_run.metrics["precision_at_1"] - 0.15
    start, art = model.load_artifact(mnist_run.artifact), model.load_artifact(tuned.artifact)
    # the normalisation the weights were trained with, not that of this run's 240 images
    assert art.meta.mean == start.meta.mean and art.meta.std == start.meta.std
    assert model.load_artifact(fresh.artifact).meta.mean != start.meta.mean
    assert art.meta.training["init_from"] == start.model_id
    assert "centre" not in art.meta.training  # no validation split, so nothing to choose a share on


def test_fine_tuning_that_beats_no_start_on_validation_hands_back_the_starting_weights(mnist_run, shared_data,
                                                                                       tmp_path):
    # a learning rate that wrecks the weights: no epoch beats the start, which is what the artifact keeps
    wreck = dict(QUICK, epochs=2, max_train=240, lr=10.0, val_fraction=0.2, centre=0,
                 init_from=str(mnist_run.artifact))
    lines: list[str] = []
    tuned = train(preset("default", **wreck), shared_data / "mnist", tmp_path / "tuned.safetensors",
                  progress=False, log=lines.append)
    assert tuned.metrics["best_epoch"] == 0
    assert all(h["val_precision_at_1"] < tuned.metrics["val_precision_at_1"] for h in tuned.history), tuned.history
    assert any(x.startswith("the starting model (init_from): validation precision@1") for x in lines), lines
    assert any(x.startswith("no epoch beat the starting model on validation") for x in lines), lines
    start, art = model.load_artifact(mnist_run.artifact), model.load_artifact(tuned.artifact)
    for (k, a), b in zip(start.model.state_dict().items(), art.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert tuned.metrics["precision_at_1"] == pytest.approx(mnist_run.metrics["precision_at_1"], abs=0.03)


def test_a_shipped_plain_model_fine_tunes_with_fold_norm_from_where_it_stands(shared_data, tmp_path):
    """The shipped models are plain (their BatchNorms folded away); the recipe that made them adds BatchNorms
    again (fold_norm), which moved the layers' places: the weights go in layer by layer (InvConvNet.load_plain)."""
    start = REPO / "model" / "weights" / "hybrid1-mnist.safetensors"
    assert model.read_meta(start).arch_kwargs == {}
    lines: list[str] = []
    run = dict(QUICK, arch_kwargs={}, epochs=1, max_train=240, lr=1e-4, val_fraction=0.2, fold_norm=True,
               init_from=str(start))
    tuned = train(preset("default", **run), shared_data / "mnist", tmp_path / "tuned.safetensors", progress=False,
                  log=lines.append)
    # 240 images and one epoch from scratch reach about 0.5: this is the shipped model's 0.99, kept
    assert tuned.metrics["precision_at_1"] > 0.95, tuned.metrics
    start_line = next(x for x in lines if x.startswith("the starting model (init_from): validation precision@1"))
    assert float(start_line.split("precision@1")[1].split()[0].strip(":,")) > 0.95, start_line
    assert model.read_meta(tuned.artifact).arch_kwargs == {}   # folded again: the plain architecture


def test_init_from_refuses_another_architecture_naming_both(mnist_run, shared_data, tmp_path):
    base = dict(QUICK, epochs=1, max_train=100, max_test=100, init_from=str(mnist_run.artifact))
    with pytest.raises(ValueError, match="it is hybrid1 .* this run trains inn2"):
        train(preset("default", **base, model="inn2"), shared_data / "mnist", tmp_path / "a.safetensors",
              progress=False, log=lambda _: None)
    with pytest.raises(ValueError, match="do not fit hybrid1"):
        train(preset("default", **{**base, "arch_kwargs": {"norm": True, "widths": [8, 16, 32]}}),
              shared_data / "mnist", tmp_path / "b.safetensors", progress=False, log=lambda _: None)
    with pytest.raises(ValueError, match="init_from: .*no such model artifact"):
        train(preset("default", **{**base, "init_from": str(tmp_path / "none.safetensors")}),
              shared_data / "mnist", tmp_path / "c.safetensors", progress=False, log=lambda _: None)


def test_evaluate_out_writes_the_same_weights_with_the_evaluated_tta_and_scores(mnist_run, shared_data, tmp_path):
    out = tmp_path / "mirrored.safetensors"
    res = evaluate_artifact(mnist_run.artifact, shared_data / "mnist", max_test=QUICK["max_test"], tta="hflip",
                            out=out)
    src, new = model.load_artifact(mnist_run.artifact), model.load_artifact(out)
    assert new.meta.tta == "hflip" and src.meta.tta == "none" and new.model_id != src.model_id
    assert all(torch.equal(a, b) for a, b in zip(src.model.state_dict().values(), new.model.state_dict().values()))
    assert torch.equal(src.heads["ce_head"]["weight"], new.heads["ce_head"]["weight"])
    assert new.meta.metrics["precision_at_1"] == res["precision_at_1"] and new.meta.metrics["tta"] == "hflip"
    assert new.meta.metrics["evaluated_from"] == src.model_id
    assert new.meta.metrics["best_epoch"] == src.meta.metrics["best_epoch"]
    assert new.meta.training == src.meta.training
    # the copy scores the same by default: the service would compute these embeddings
    again = evaluate_artifact(out, shared_data / "mnist", max_test=QUICK["max_test"])
    assert again["tta"] == "hflip" and again["ms_loss"] == pytest.approx(res["ms_loss"], abs=1e-6)


@pytest.mark.parametrize("loss", ["proxy_anchor", "arcface"])
def test_a_short_run_with_a_proxy_loss_beats_chance_and_ships_no_proxies(shared_data, tmp_path, loss):
    out = tmp_path / f"{loss}.safetensors"
    result = train(preset("default", **{**QUICK, "loss": loss}), shared_data / "mnist", out, progress=False,
                   log=lambda _: None)
    assert result.metrics["precision_at_1"] > 0.4, result.metrics   # chance: about 0.1
    art = model.load_artifact(out)
    assert art.heads == {} and art.meta.training["config"]["loss"] == loss


@pytest.mark.parametrize("loss", ["triplet", "ce+supcon"])
def test_a_short_run_with_a_pair_loss_or_a_sum_of_losses_beats_chance(shared_data, tmp_path, loss):
    out = tmp_path / "pairs.safetensors"
    result = train(preset("default", **{**QUICK, "loss": loss}), shared_data / "mnist", out, progress=False,
                   log=lambda _: None)
    assert result.metrics["precision_at_1"] > 0.4, result.metrics   # chance: about 0.1
    art = model.load_artifact(out)
    assert art.meta.training["config"]["loss"] == loss and set(art.heads) == ({"ce_head"} if "ce" in loss else set())


def test_a_validation_split_that_cannot_measure_precision_is_left_out_and_said(tiny_cifar_folder, tmp_path):
    """12 training images a class: a tenth is 1, raised to 2 so that validation can measure precision@1.
    Three a class would give one each, which cannot: no validation then, and the log says why."""
    import shutil

    small = tmp_path / "small"
    for split, n in (("train", 3), ("test", 6)):
        for c in sorted((tiny_cifar_folder / split).iterdir()):
            (small / split / c.name).mkdir(parents=True)
            for f in sorted(c.iterdir())[:n]:
                shutil.copy(f, small / split / c.name / f.name)
    cfg = preset("default", epochs=2, batch_size=16, model="cnn3a", augment=False, threads=1)
    for folder, val, said in ((tiny_cifar_folder, 8, False), (small, 0, True)):
        lines: list[str] = []
        result = train(cfg, folder, tmp_path / f"{folder.name}.safetensors", progress=False, log=lines.append)
        assert any(f", {val} val, " in x for x in lines), lines
        assert any(x.startswith("no validation split: 0.1 of the training images") for x in lines) == said, lines
        history = result.history
        assert all(("val_precision_at_1" in h) == (val > 0) for h in history), history
        assert all(not math.isnan(h.get("val_precision_at_1", 0.0)) for h in history), history


def test_a_val_folder_beside_train_and_test_validates_and_every_training_image_trains(tiny_cifar_folder, tmp_path):
    import shutil

    folder = tmp_path / "three"
    shutil.copytree(tiny_cifar_folder, folder)
    for c in sorted((folder / "test").iterdir()):   # 3 of each class's 6 test images move to val/
        (folder / "val" / c.name).mkdir(parents=True)
        for f in sorted(c.iterdir())[:3]:
            f.rename(folder / "val" / c.name / f.name)
    cfg = preset("default", epochs=2, batch_size=16, model="cnn3a", augment=False, threads=1)
    lines: list[str] = []
    result = train(cfg, folder, tmp_path / "three.safetensors", progress=False, log=lines.append)
    assert any("(48 train, 12 val, 12 test) of 3x32x32 on" in x for x in lines), lines   # no share of train held out
    assert "validation split: val/ (12 images), not a share of the training images" in lines
    assert all("val_precision_at_1" in h for h in result.history), result.history
    dataset = model.load_artifact(result.artifact).meta.training["dataset"]
    assert dataset["val_from"] == "val/" and dataset["val_size"] == 12 and dataset["train_size"] == 48

    lines.clear()   # --val-fraction 0 still means no validation: the last epoch
    train(cfg.replace(val_fraction=0.0), folder, tmp_path / "last.safetensors", progress=False, log=lines.append)
    assert any("(48 train, 0 val, 12 test)" in x for x in lines), lines
