"""Evaluation's similarity statistics (exact over the split, and what they say about the geometry), the
plain-batch MS figure, the per-class report, the distances for a wanted precision of the top hit, and the
most confident mistakes with their files and sheet."""
from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from training._evaluate import (class_report, evaluate_embeddings, format_metrics, match_thresholds, ms_loss,
                                ms_loss_plain, similarity_stats)


def test_similarity_stats_equal_the_mean_over_every_pair():
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([3, 0, 3, 1, 1, 0, 3, 7, 7, 1, 0, 3])  # unsorted, uneven, sparse class ids
    emb = torch.randn(len(labels), 5, generator=g) * 4 + 1
    e = F.normalize(emb, dim=1)
    s = e @ e.T
    same = labels[:, None] == labels[None]
    off = ~torch.eye(len(labels), dtype=torch.bool)
    got = similarity_stats(emb, labels)
    assert got["mean_cos_same_class"] == pytest.approx(s[same & off].mean().item(), abs=1e-6)
    assert got["mean_cos_other_class"] == pytest.approx(s[~same].mean().item(), abs=1e-6)


def test_orthogonal_classes_give_one_and_zero_and_a_shared_offset_raises_both():
    labels = torch.arange(4).repeat_interleave(5)
    separated = F.one_hot(labels, 8).float()
    got = similarity_stats(separated, labels)
    assert got["mean_cos_same_class"] == pytest.approx(1.0) and got["mean_cos_other_class"] == pytest.approx(0.0)
    cone = similarity_stats(separated + 2.0, labels)  # the same classes inside a narrow cone
    assert cone["mean_cos_other_class"] > 0.9 and cone["mean_cos_same_class"] == pytest.approx(1.0)
    assert "mean_cos_other_class" in evaluate_embeddings(separated, labels)


def test_plain_ms_is_zero_for_separated_classes_and_one_batch_equals_tf_similaritys_loss_on_the_split():
    from pytorch_metric_learning import losses, miners

    labels = torch.arange(4).repeat_interleave(9)
    assert ms_loss_plain(F.one_hot(labels, 8).float(), labels)["ms_loss_plain"] == 0.0  # nothing is mined
    emb = torch.randn(len(labels), 6, generator=torch.Generator().manual_seed(1))
    whole = ms_loss_plain(emb, labels, batch_size=len(labels))
    loss = losses.MultiSimilarityLoss(alpha=2, beta=40, base=0.5)  # TF Similarity's defaults
    expected = loss(emb, labels, miners.MultiSimilarityMiner(epsilon=0.1)(emb, labels)).item()
    assert whole["ms_loss_plain"] == pytest.approx(expected, rel=1e-6) and expected > 0
    assert whole["ms_loss_plain_settings"]["beta"] == 40.0


def test_plain_batches_see_fewer_positives_so_the_same_embedding_scores_lower_than_class_balanced():
    g = torch.Generator().manual_seed(2)
    labels = torch.arange(10).repeat_interleave(60)
    emb = F.one_hot(labels, 16).float() * 1.5 + torch.randn(len(labels), 16, generator=g)  # overlapping classes
    plain = ms_loss_plain(emb, labels)["ms_loss_plain"]
    balanced = ms_loss(emb, labels)["ms_loss"]
    assert 0 < plain < balanced
    assert ms_loss_plain(emb, labels, batch_size=128)["ms_loss_plain"] > plain  # more pairs, higher figure
    assert "ms_loss_plain" in evaluate_embeddings(emb, labels)


def test_strict_ms_batches_hold_m_of_each_of_their_classes_cover_the_split_and_repeat_with_the_seed():
    from training._evaluate import _class_balanced_batches

    labels = torch.tensor([4, 1, 7, 1, 4, 9, 2, 7, 5, 3, 0, 8] * 20)  # ten classes; 1, 4 and 7 twice as common
    batches = _class_balanced_batches(labels, m=4, classes_per_batch=3, seed=0)
    assert len(batches) == len(labels) // 12
    for idx in batches:
        counts = torch.unique(labels[idx], return_counts=True)[1]
        assert len(idx) == 12 and counts.tolist() == [4, 4, 4]
    assert [b.tolist() for b in _class_balanced_batches(labels, 4, 3, seed=0)] == [b.tolist() for b in batches]
    assert [b.tolist() for b in _class_balanced_batches(labels, 4, 3, seed=1)] != [b.tolist() for b in batches]
    two_classes = torch.tensor([0, 1] * 20)  # fewer classes than asked: every batch takes both
    assert all(len(b) == 8 for b in _class_balanced_batches(two_classes, 4, 3, seed=0))


def test_class_report_agrees_with_pmls_per_class_precision_and_counts_every_wrong_neighbour():
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    g = torch.Generator().manual_seed(3)
    labels = torch.tensor([5, 2, 9] * 40 + [2] * 10)  # uneven, sparse, unsorted class ids
    emb = F.one_hot(labels, 12).float() + 0.8 * torch.randn(len(labels), 12, generator=g)
    got = class_report(emb, labels, class_names=[f"c{i}" for i in range(12)])
    expected = AccuracyCalculator(include=("precision_at_1",), k=1, return_per_class=True).get_accuracy(
        F.normalize(emb, dim=1).numpy(), labels.numpy())["precision_at_1"]
    assert [c["class"] for c in got["per_class"]] == ["c2", "c5", "c9"]
    assert [c["count"] for c in got["per_class"]] == [50, 40, 40]
    assert [c["precision_at_1"] for c in got["per_class"]] == pytest.approx(expected, abs=1e-6)
    assert 0 < min(expected) < 1  # the noise makes mistakes, so there is something to report
    wrong = {c["class"]: round(c["count"] * (1 - c["precision_at_1"])) for c in got["per_class"]}
    reported = {}
    for c in got["confusions"]:
        assert c["query_class"] != c["neighbour_class"]
        reported[c["query_class"]] = reported.get(c["query_class"], 0) + c["count"]
    assert reported == {k: v for k, v in wrong.items() if v}  # 3 classes: at most 6 pairs, all listed
    counts = [c["count"] for c in got["confusions"]]
    assert counts == sorted(counts, reverse=True)


def test_a_class_with_one_item_has_no_precision_and_no_confusions_as_pml_leaves_it_out():
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2])
    emb = F.one_hot(torch.tensor([0, 0, 0, 1, 1, 1, 0]), 3).float()  # the lone item sits among class 0
    got = class_report(emb, labels)
    assert [c["precision_at_1"] for c in got["per_class"]] == [1.0, 1.0, None]
    assert got["confusions"] == []
    assert "lowest precision@1 by class: 0 1.000, 1 1.000\n" in format_metrics(got) + "\n"


def test_class_report_of_separated_classes_has_no_confusions_and_names_default_to_the_label():
    labels = torch.arange(3).repeat_interleave(4)
    got = class_report(F.one_hot(labels, 4).float(), labels)
    assert got["confusions"] == []
    assert [(c["class"], c["precision_at_1"]) for c in got["per_class"]] == [("0", 1.0), ("1", 1.0), ("2", 1.0)]
    assert "per_class" in evaluate_embeddings(F.one_hot(labels, 4).float(), labels)


def _noisy_classes(seed=5, classes=6, per_class=30, noise=0.4):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(per_class)
    return F.one_hot(labels, 16).float() + noise * torch.randn(len(labels), 16, generator=g), labels


def test_a_match_threshold_is_the_largest_cut_that_keeps_the_wanted_precision():
    emb, labels = _noisy_classes()
    idx = (F.normalize(emb) @ F.normalize(emb).T).fill_diagonal_(-2).argmax(1)
    dist = (2 - 2 * (F.normalize(emb) * F.normalize(emb)[idx]).sum(1)).clamp_min(0).sqrt()
    right = labels[idx] == labels
    assert 0.5 < right.float().mean() < 0.9  # so that a cut is needed, and can be found
    for row in match_thresholds(emb, labels, precisions=(0.9, 0.95, 0.99))["match_thresholds"]:
        kept = dist <= row["max_distance"]
        assert right[kept].float().mean().item() == pytest.approx(row["precision"], abs=1e-6)
        assert row["precision"] >= row["target_precision"]
        assert kept.float().mean().item() == pytest.approx(row["answered"])
        # every larger cut, up to the farthest neighbour, falls below the wanted precision
        for d in dist[dist > row["max_distance"]].tolist():
            assert right[dist <= d].float().mean() < row["target_precision"]


def test_match_thresholds_are_what_a_store_search_with_that_max_distance_answers(tmp_path):
    from index import Item, Store, StoreConfig

    emb, labels = _noisy_classes(seed=6)
    rows = match_thresholds(emb, labels, precisions=(0.8, 0.9))["match_thresholds"]
    store = Store.open(StoreConfig(tmp_path / "store", dim=16, model_id="test"))
    store.upsert([Item(str(i), v.numpy(), label=str(int(y))) for i, (v, y) in enumerate(zip(emb, labels))])
    for row in rows:
        top = [store.search_by_id(str(i), k=1, max_distance=row["max_distance"]) for i in range(len(labels))]
        answered = [i for i, hits in enumerate(top) if hits]
        assert 0 < len(answered) < len(labels)
        assert len(answered) / len(labels) == pytest.approx(row["answered"])
        right = sum(top[i][0].label == str(int(labels[i])) for i in answered)
        assert right / len(answered) == pytest.approx(row["precision"])
    store.close()


def test_no_cut_reaches_a_precision_when_the_nearest_neighbour_is_always_wrong_and_lone_queries_do_not_count():
    labels = torch.tensor([0, 1, 0, 1, 2])
    emb = F.one_hot(torch.tensor([0, 0, 1, 1, 2]), 3).float()  # every neighbour is of the other class
    rows = match_thresholds(emb, labels)["match_thresholds"]
    assert [(r["max_distance"], r["answered"]) for r in rows] == [(None, 0.0)] * 3
    said = format_metrics(evaluate_embeddings(emb, labels))
    assert "max_distance for" not in said
    assert "no max_distance reaches a precision of 0.90, 0.95, 0.99 for the top hit on this test split" in said
    # item 4 is alone in its class: it is left out, so the other four alone decide
    labels = torch.tensor([0, 0, 1, 1, 2])
    rows = match_thresholds(emb, labels)["match_thresholds"]
    assert [(r["precision"], r["answered"]) for r in rows] == [(1.0, 1.0)] * 3
    assert "0.90 -> 0.000 (answers 100.0 %; rests on 4 queries only" in format_metrics({"match_thresholds": rows})
    assert "no max_distance reaches" not in format_metrics({"match_thresholds": rows})


def test_the_console_ends_with_the_max_distance_to_search_with_even_when_the_ce_loss_was_left_out():
    # docs/service.md and own-photos.md: `simsearch evaluate` "ends with" the calibration line
    rows = [{"target_precision": 0.9, "max_distance": 0.5, "precision": 0.9, "answered": 0.4},
            {"target_precision": 0.99, "max_distance": None, "precision": None, "answered": 0.0}]
    said = format_metrics({"match_thresholds": rows, "ce_left_out": "ce_loss left out: the artifact has no head"})
    assert said.splitlines()[-2].startswith("max_distance for a top hit")
    assert said.splitlines()[-1].startswith("no max_distance reaches a precision of 0.99")
    assert "ce_loss left out" in said


def test_a_cut_that_keeps_a_few_queries_of_thousands_says_so_rather_than_zero_percent():
    rows = [{"target_precision": 0.9, "max_distance": 0.194, "precision": 1.0, "answered": 0.0003}]
    assert "0.90 -> 0.194 (answers under 0.05 %)" in format_metrics({"match_thresholds": rows})


def _with_a_duplicate_filed_twice(tiny_cifar_folder, tmp_path):
    """A copy of the tiny real ImageFolder where one test cat is also filed, as the same file, under ship."""
    root = tmp_path / "photos"
    shutil.copytree(tiny_cifar_folder, root)
    cat = sorted((root / "test" / "cat").iterdir())[2]
    shutil.copyfile(cat, root / "test" / "ship" / "filed-twice.jpg")
    return root, f"test/cat/{cat.name}"


def test_the_most_confident_mistake_is_a_duplicate_filed_under_two_classes_and_names_both_files(
        tiny_cifar_folder, tmp_path):
    import model
    from training import evaluate_artifact
    from training._mistakes import QUERY, RIGHT, WRONG

    root, cat = _with_a_duplicate_filed_twice(tiny_cifar_folder, tmp_path)
    sheet = tmp_path / "mistakes.png"
    res = evaluate_artifact(model.default_artifact_path("cifar10"), root, device="cpu", sheet=sheet, sheet_rows=3)
    first, second = res["confident_mistakes"][:2]
    # the same pixels under two labels: each is the other's nearest neighbour, at cosine 1
    assert {first["query_file"], first["neighbour_file"]} == {cat, "test/ship/filed-twice.jpg"}
    assert (second["query_file"], second["neighbour_file"]) == (first["neighbour_file"], first["query_file"])
    assert {first["query_class"], first["neighbour_class"]} == {"cat", "ship"} and first["cosine"] > 0.9999
    cosines = [m["cosine"] for m in res["confident_mistakes"]]
    assert cosines == sorted(cosines, reverse=True)
    # the queries precision@1 counts as wrong, the ten nearest of them
    wrong = round((1 - res["precision_at_1"]) * res["test_size"])
    assert len(cosines) == min(10, wrong) and wrong >= 3
    assert all(m["query_class"] != m["neighbour_class"] for m in res["confident_mistakes"])
    # the sheet: a title, then three rows of the query and six neighbours, framed by whether each is of its class
    assert res["mistakes_sheet"] == {"path": str(sheet), "rows": 3}
    im = Image.open(sheet).convert("RGB")
    cell, pad = 96 + 2 * 3, 6
    assert im.size == (pad + 7 * (cell + pad), 20 + pad + 3 * (cell + 36 + pad))
    top = 20 + pad
    assert im.getpixel((pad + 1, top + 1)) == QUERY
    assert im.getpixel((pad + cell + pad + 1, top + 1)) == WRONG   # the duplicate, under the other class
    frames = {im.getpixel((pad + c * (cell + pad) + 1, top + 1)) for c in range(1, 7)}
    assert frames <= {RIGHT, WRONG}


def test_evaluate_prints_the_confident_mistakes_and_refuses_a_sheet_that_is_not_a_png(tiny_cifar_folder, tmp_path,
                                                                                     capsys):
    import cli
    import model

    root, cat = _with_a_duplicate_filed_twice(tiny_cifar_folder, tmp_path)
    artifact = str(model.default_artifact_path("cifar10"))
    assert cli.main(["evaluate", artifact, str(root), "--device", "cpu", "--mistakes-sheet",
                     str(tmp_path / "m.png"), "--mistakes-rows", "2"]) == 0
    out = capsys.readouterr().out
    assert "most confident mistakes (a query -> its nearest neighbour, of another class; cosine):" in out
    assert f"  {cat} (cat) -> test/ship/filed-twice.jpg (ship)  1.000" in out or \
        f"  test/ship/filed-twice.jpg (ship) -> {cat} (cat)  1.000" in out
    assert f"wrote {tmp_path / 'm.png'}: 2 queries with their neighbours" in out
    for args, message in [(["--mistakes-sheet", str(tmp_path / "m.jpg")], "give a name ending in .png"),
                          (["--mistakes-sheet", str(tmp_path / "m.png"), "--mistakes-rows", "0"],
                           "--mistakes-rows must be 1..1000, got 0")]:
        assert cli.main(["evaluate", artifact, str(root), *args]) == 2
        assert message in capsys.readouterr().err


def test_the_map_places_each_test_image_near_its_class_and_says_how_far_it_can_be_trusted(shared_data, tmp_path):
    import numpy as np

    import model
    from training import evaluate_artifact
    from training._map import PALETTE, embedding_map

    path = tmp_path / "map.png"
    res = evaluate_artifact(model.default_artifact_path("mnist"), shared_data / "mnist", device="cpu", max_test=500,
                            map_path=path, map_points=300)
    m = res["map"]
    assert m["path"] == str(path) and m["points"] == 300
    # the bundled MNIST model separates the digits: on the map too, nearly every image's nearest is of its class
    assert m["same_class_nearest_in_embedding"] > 0.95 and m["same_class_nearest_on_map"] > 0.9
    assert m["trustworthiness"] > 0.9
    im = Image.open(path).convert("RGB")
    assert im.size == (1400 + 240, 1400 + 28)
    colours = {tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) for c in PALETTE[:10]}
    seen = {px for _, px in im.getcolors(1 << 20)}
    assert colours <= seen, "every digit's frame colour is drawn"
    # the checks measure something: the same images placed by random vectors find their class by chance only
    rng = np.random.default_rng(0)
    labels = torch.arange(300) % 10
    images = torch.zeros(300, 1, 28, 28, dtype=torch.uint8)
    noise = embedding_map(tmp_path / "noise.png", images, labels, torch.from_numpy(rng.standard_normal((300, 64))),
                          points=300)
    assert noise["same_class_nearest_on_map"] < 0.3 and noise["same_class_nearest_in_embedding"] < 0.3


def test_evaluate_draws_the_map_and_refuses_a_map_that_is_not_a_png(shared_data, tmp_path, capsys):
    import cli
    import model

    artifact, data = str(model.default_artifact_path("mnist")), str(shared_data / "mnist")
    assert cli.main(["evaluate", artifact, data, "--device", "cpu", "--max-test", "200", "--map",
                     str(tmp_path / "m.png"), "--map-points", "100"]) == 0
    assert f"wrote {tmp_path / 'm.png'}: 100 test images; trustworthiness " in capsys.readouterr().out
    for args, message in [(["--map", str(tmp_path / "m.jpg")], "--map writes a PNG: give a name ending in .png"),
                          (["--map", str(tmp_path / "m.png"), "--map-points", "5"],
                           "--map-points must be 10..5000, got 5")]:
        assert cli.main(["evaluate", artifact, data, *args]) == 2
        assert message in capsys.readouterr().err


@pytest.mark.parametrize("value", [-3, 0, 2.5, True])
def test_evaluate_artifact_refuses_a_max_test_below_one_naming_it(hybrid1_artifact, tiny_cifar_folder, value):
    from training import evaluate_artifact

    with pytest.raises(ValueError, match=rf"max_test must be an integer of at least 1 \(None for every test "
                                         rf"image\), got {value!r}"):
        evaluate_artifact(hybrid1_artifact, tiny_cifar_folder, max_test=value)
