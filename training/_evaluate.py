"""Evaluation on a test split: retrieval metrics (pytorch-metric-learning's AccuracyCalculator with
FAISS k-NN) and the paper's two figures, test-set cross-entropy loss and Multi-Similarity loss.

How each number is computed is documented in docs/training.md ("Evaluation").
"""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._mistakes import confident_mistakes, mistakes_sheet

RETRIEVAL_METRICS = ("precision_at_1", "r_precision", "mean_average_precision_at_r")
RECALL_AT = (1, 5, 10)
MATCH_PRECISIONS = (0.9, 0.95, 0.99)
FEW_QUERIES = 30   # a match threshold kept by fewer queries than this is shown with how few it rests on


def _accuracy_calculator(k: int | str | None = "max_bin_count"):
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    class _Calculator(AccuracyCalculator):
        """AccuracyCalculator plus Recall@K (a query counts when any of its K nearest neighbours shares its
        label), the usual deep-metric-learning recall."""

        def determine_k(self, bin_counts, num_reference_embeddings, ref_includes_query):
            # "max_bin_count" alone asks for (largest class - 1) neighbours: with 2 test images a class, recall@5 and
            # recall@10 would look at 1 neighbour and equal precision@1. Enough for recall@10 too (R-precision and
            # MAP@R read only the first R of them).
            k = super().determine_k(bin_counts, num_reference_embeddings, ref_includes_query)
            if self.k != "max_bin_count":
                return k
            return max(k, min(max(RECALL_AT), num_reference_embeddings - int(ref_includes_query)))

    def make(r: int):
        def calc(self, knn_labels, query_labels, not_lone_query_mask, **kwargs):
            keep = not_lone_query_mask
            hits = (knn_labels[keep, :r] == query_labels[keep, None]).any(dim=1)
            return hits.float().mean().item() if len(hits) else float("nan")
        return calc

    # an integer k gives each query k neighbours: recall@r beyond them cannot be told, and is left out (it was
    # recall@k under recall@r's name)
    recalls = [r for r in RECALL_AT if not isinstance(k, int) or r <= k]
    for r in recalls:
        setattr(_Calculator, f"calculate_recall_at_{r}", make(r))
    _Calculator.requires_knn = lambda self: AccuracyCalculator.requires_knn(self) + [f"recall_at_{r}" for r in recalls]
    return _Calculator(include=RETRIEVAL_METRICS + tuple(f"recall_at_{r}" for r in recalls), k=k,
                       device=torch.device("cpu"))


@torch.inference_mode()
def embed_images(net: nn.Module, images: torch.Tensor, mean, std, device: torch.device | str = "cpu",
                 batch_size: int = 512, tta: str = "none") -> torch.Tensor:
    """Raw (not normalised) float32 embeddings of uint8 images (N, C, S, S), the way the Embedder feeds them
    (with test-time augmentation `tta`, see model.embed_tensor)."""
    import model

    device = torch.device(device)
    was_training = net.training
    net.eval()
    normalize = model.PixelNormalize(mean, std).to(device)
    out = []
    for i in range(0, len(images), batch_size):
        out.append(model.embed_tensor(net, normalize(images[i:i + batch_size].to(device)), tta).float().cpu())
    net.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, getattr(net, "embed_dim", 0))


def retrieval_metrics(embeddings, labels, k: int | str | None = "max_bin_count",
                      only_p1: bool = False) -> dict[str, float]:
    """Leave-one-out retrieval over one split: every item queries all the others (cosine, via FAISS on
    L2-normalised vectors). precision@1, R-precision, MAP@R and recall@1/5/10, each in [0, 1]. Embeddings
    and labels as evaluate_embeddings takes them (tensors or numpy arrays; labels ids or names). `k`: the
    neighbours each query is given (pml's AccuracyCalculator k); an integer leaves out the recall@r beyond it."""
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    embeddings, labels, _ = _as_tensors(embeddings, labels)
    emb = F.normalize(embeddings.float(), dim=1).numpy().astype(np.float32)
    lab = labels.numpy()
    if only_p1:
        calc = AccuracyCalculator(include=("precision_at_1",), k=1, device=torch.device("cpu"))
    else:
        calc = _accuracy_calculator(k)
    res = calc.get_accuracy(emb, lab)
    return {k2: float(v) for k2, v in res.items()}


def head_logits(embeddings: torch.Tensor, head_state: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits of a stored linear head (its state dict: weight, bias) on raw embeddings, in float32 on the
    embeddings' device."""
    e = embeddings.float()
    return e @ head_state["weight"].to(e).T + head_state["bias"].to(e)


def ce_loss(embeddings: torch.Tensor, labels: torch.Tensor, head_state: dict[str, torch.Tensor]) -> dict[str, float]:
    """Mean cross-entropy of the stored linear head over the whole split (and its accuracy)."""
    logits = head_logits(embeddings, head_state)
    return {"ce_loss": float(F.cross_entropy(logits, labels).item()),
            "ce_accuracy": float((logits.argmax(1) == labels).float().mean().item())}


def _ce_of_learnt(embeddings: torch.Tensor, labels: torch.Tensor, head_state: dict[str, torch.Tensor],
                  ce_classes: Sequence[int] | None, class_names: list[str] | None) -> dict[str, Any]:
    """ce_loss over the items of the classes the head learnt (`ce_classes`, the classes with training images; None:
    every class), with `ce_left_out` saying how many items of which other classes were left out (a classifier
    cannot have learnt a class it saw no image of); no ce_loss when no item is of a class it learnt."""
    if ce_classes is None:
        return ce_loss(embeddings, labels, head_state)
    keep = torch.isin(labels, torch.as_tensor(list(ce_classes), dtype=torch.long))
    if bool(keep.all()):
        return ce_loss(embeddings, labels, head_state)
    absent = sorted(set(labels[~keep].tolist()))
    said = [class_names[c] if class_names and c < len(class_names) else str(c) for c in absent[:8]]
    classes = f"{len(absent)} class{'es' if len(absent) != 1 else ''} with no training images " \
              f"({', '.join(said)}{' ...' if len(absent) > 8 else ''})"
    if not bool(keep.any()):
        return {"ce_left_out": f"no ce_loss or ce_accuracy: the {len(labels)} test images are all of {classes}, "
                               "which the classifier cannot have learnt"}
    out: dict[str, Any] = ce_loss(embeddings[keep], labels[keep], head_state)
    out["ce_left_out"] = (f"ce_loss and ce_accuracy over {int(keep.sum())} of the {len(labels)} test images: the "
                          f"{int((~keep).sum())} of {classes} left out (the classifier cannot have learnt them)")
    return out


def _ms_batch_losses(embeddings: torch.Tensor, labels: torch.Tensor, batches, alpha: float, beta: float,
                     base: float, epsilon: float, mined: bool) -> list[float]:
    """pml's MultiSimilarityLoss on each batch of indices, after its MultiSimilarityMiner when `mined`:
    the mean over the batch's anchors (anchors with no mined pair count as 0)."""
    from pytorch_metric_learning import losses, miners

    loss_fn = losses.MultiSimilarityLoss(alpha=alpha, beta=beta, base=base)
    miner = miners.MultiSimilarityMiner(epsilon=epsilon)
    out = []
    with torch.no_grad():
        for idx in batches:
            e, y = embeddings[idx].float(), labels[idx]
            out.append(loss_fn(e, y, miner(e, y) if mined else None).item())
    return out


def _class_balanced_batches(labels: torch.Tensor, m: int, classes_per_batch: int, seed: int) -> list[torch.Tensor]:
    """The strict MS figure's batches: index tensors of `m` items of each of `classes_per_batch` classes (fewer
    when the split has fewer classes), from pml's MPerClassSampler seeded with `seed`, covering the split once."""
    from pytorch_metric_learning.samplers import MPerClassSampler

    batch = m * min(classes_per_batch, len(torch.unique(labels)))
    state = np.random.get_state()
    np.random.seed(seed)  # MPerClassSampler draws from numpy's global generator
    try:
        order = list(iter(MPerClassSampler(labels.numpy(), m, batch_size=batch,
                                           length_before_new_iter=max(len(labels), batch))))
    finally:
        np.random.set_state(state)
    return [torch.tensor(order[i:i + batch]) for i in range(0, len(order) - batch + 1, batch)]


def ms_loss(embeddings: torch.Tensor, labels: torch.Tensor, m: int = 8, classes_per_batch: int = 8,
            alpha: float = 2.0, beta: float = 50.0, base: float = 0.5, epsilon: float = 0.1,
            seed: int = 0) -> dict[str, Any]:
    """Multi-Similarity loss on the test split, averaged over class-balanced batches.

    Batches: pml MPerClassSampler with `m` images of each of `classes_per_batch` classes (fewer when the
    split has fewer classes), seeded, as many batches as cover the split once. Per batch: pml
    MultiSimilarityMiner(epsilon) then MultiSimilarityLoss(alpha, beta, base) on cosine similarity,
    mean over all anchors in the batch (anchors with no mined pair count as 0). Result: mean over batches.
    """
    batches = _class_balanced_batches(labels, m, classes_per_batch, seed)
    batch = m * min(classes_per_batch, len(torch.unique(labels)))
    values = _ms_batch_losses(embeddings, labels, batches, alpha, beta, base, epsilon, mined=True)
    raw = _ms_batch_losses(embeddings, labels, batches, alpha, beta, base, epsilon, mined=False)
    return {"ms_loss": float(np.mean(values)), "ms_loss_unmined": float(np.mean(raw)),
            "ms_loss_settings": {"batch_size": batch, "m_per_class": m, "batches": len(values), "alpha": alpha,
                                 "beta": beta, "base": base, "miner_epsilon": epsilon, "seed": seed}}


def ms_loss_plain(embeddings: torch.Tensor, labels: torch.Tensor, batch_size: int = 32, alpha: float = 2.0,
                  beta: float = 40.0, base: float = 0.5, epsilon: float = 0.1, seed: int = 0) -> dict[str, Any]:
    """Multi-Similarity loss over plain batches: the figure Keras's `model.evaluate` would print for a model
    compiled with TensorFlow Similarity's MultiSimilarityLoss at its defaults (alpha 2, beta 40, epsilon 0.1,
    lambda 0.5), the paper's toolkit.

    Batches of `batch_size` consecutive items of the split in a seeded random order (Keras keeps the
    array's order, which for the Keras datasets is not sorted by class; an ImageFolder split is, so the
    order is shuffled once), the last batch short; per batch pml's miner and loss (the same formula as TF
    Similarity's); the mean over items, as Keras averages. Far fewer positives per anchor than `ms_loss`'s
    class-balanced batches, hence a far lower figure for the same model (docs/training.md, "Evaluation").
    """
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    batches = order.split(batch_size)
    values = _ms_batch_losses(embeddings, labels, batches, alpha, beta, base, epsilon, mined=True)
    total = sum(v * len(idx) for v, idx in zip(values, batches, strict=True))
    return {"ms_loss_plain": total / max(len(order), 1),
            "ms_loss_plain_settings": {"batch_size": batch_size, "order": "seeded shuffle", "alpha": alpha,
                                       "beta": beta, "base": base, "miner_epsilon": epsilon, "seed": seed}}


def similarity_stats(embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Mean cosine similarity over all pairs of distinct items of the same class and of different classes.

    Exact over the whole split, from per-class sums of the unit vectors (the sum over pairs of a set is
    |sum|^2 less the set's size). They say where the similarities sit, which the MS loss's absolute threshold
    (base 0.5) responds to beside their order: both means high is a narrow cone, a same-class mean far below
    0.5 costs MS dearly however well the items rank."""
    e = F.normalize(embeddings.double(), dim=1)
    n = len(labels)
    classes, counts = torch.unique(labels, return_counts=True)
    sums = torch.zeros(len(classes), e.shape[1], dtype=torch.float64).index_add_(
        0, torch.searchsorted(classes, labels), e)
    same = float((sums.pow(2).sum(1) - counts).sum())
    every = float(e.sum(0).pow(2).sum() - n)
    n_same = float((counts * (counts - 1)).sum())
    n_other = float(n * (n - 1)) - n_same
    return {"mean_cos_same_class": same / n_same if n_same else float("nan"),
            "mean_cos_other_class": (every - same) / n_other if n_other else float("nan")}


def _nearest_neighbours(embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every item's leave-one-out nearest neighbour, the one precision@1 counts (pml's FaissKNN on L2-normalised
    embeddings): its index, and its distance in the service's units (Euclidean between unit vectors)."""
    from pytorch_metric_learning.utils.inference import FaissKNN

    emb = F.normalize(embeddings.float(), dim=1)
    squared, idx = FaissKNN()(emb, 1, emb, ref_includes_query=True)
    return idx[:, 0].long(), squared[:, 0].clamp_min(0).sqrt()


def class_report(embeddings: torch.Tensor, labels: torch.Tensor, class_names: list[str] | None = None,
                 top: int = 10, *, neighbours: tuple[torch.Tensor, torch.Tensor] | None = None
                 ) -> dict[str, list[dict[str, Any]]]:
    """Where retrieval goes wrong, from the same leave-one-out nearest neighbour as precision@1 (pml's FaissKNN
    on L2-normalised embeddings): `per_class`, each class's size and precision@1, and `confusions`, the `top`
    most frequent (query class, class of its nearest neighbour) pairs that differ, with their count and
    their share of the query class. A class with one item has no precision@1 (None) and no confusions: there
    is nothing of its class to find, and pml leaves such queries out of precision@1 too. `neighbours`: the
    result of `_nearest_neighbours(embeddings)` when the caller has it already."""
    idx, _ = neighbours if neighbours is not None else _nearest_neighbours(embeddings)
    classes, sizes = torch.unique(labels, return_counts=True)
    n = len(classes)
    query = torch.searchsorted(classes, labels)
    found = torch.searchsorted(classes, labels[idx])
    right = torch.bincount(query[query == found], minlength=n)
    names = [class_names[c] if class_names and c < len(class_names) else str(c) for c in classes.tolist()]
    per_class = [{"class": names[i], "count": int(sizes[i]),
                  "precision_at_1": int(right[i]) / int(sizes[i]) if sizes[i] > 1 else None} for i in range(n)]
    # only the pairs that occur are counted: a dense n x n table would not fit for tens of thousands of classes
    miss = (query != found) & (sizes[query] > 1)
    pairs, counts = torch.unique(query[miss] * n + found[miss], return_counts=True)
    counts, at = torch.topk(counts, min(top, len(counts)))
    confusions = [{"query_class": names[j // n], "neighbour_class": names[j % n], "count": c,
                   "share_of_class": c / int(sizes[j // n])}
                  for c, j in zip(counts.tolist(), pairs[at].tolist(), strict=True)]
    return {"per_class": per_class, "confusions": confusions}


def match_thresholds(embeddings: torch.Tensor, labels: torch.Tensor, precisions=MATCH_PRECISIONS, *,
                     neighbours: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, list[dict[str, Any]]]:
    """The `max_distance` to search with for a wanted precision of the top hit, calibrated on the split.

    For each wanted precision p: the largest distance d such that, of the queries whose leave-one-out nearest
    neighbour lies within d, a share of at least p found their own class (scikit-learn's
    precision_recall_curve, the neighbour's distance as the score); `max_distance` lies halfway from d to the
    next query's distance, so it keeps the same queries. Beside it `precision`, that share, and
    `answered`, the share of the queries that keep their hit, and `queries`, how many that is (what the
    threshold rests on). `max_distance` is None where no distance reaches p. Queries whose class has no other
    item are left out, as in precision@1.
    """
    from sklearn.metrics import precision_recall_curve

    idx, dist = neighbours if neighbours is not None else _nearest_neighbours(embeddings)
    _, inverse, sizes = torch.unique(labels, return_inverse=True, return_counts=True)
    keep = sizes[inverse] > 1
    right, dist = (labels[idx] == labels)[keep].numpy(), dist[keep].double().numpy()
    rows = [{"target_precision": p, "max_distance": None, "precision": None, "answered": 0.0, "queries": 0}
            for p in precisions]
    if not right.any():
        return {"match_thresholds": rows}
    precision, _, thresholds = precision_recall_curve(right, -dist)
    distances = np.unique(dist)
    for row in rows:
        reached = np.flatnonzero(precision[:-1] >= row["target_precision"])
        if len(reached):  # the thresholds ascend, so the first that reaches p keeps the most queries
            last = -thresholds[reached[0]]
            beyond = distances[distances > last]
            # halfway to the next query's distance, so that rounding in another search cannot move the cut
            cut = float((last + beyond[0]) / 2 if len(beyond) else last)
            row.update(max_distance=cut, precision=float(precision[reached[0]]), answered=float((dist <= cut).mean()),
                       queries=int((dist <= cut).sum()))
    return {"match_thresholds": rows}


def evaluate_embeddings(embeddings, labels, ce_head: dict | None = None,
                        ms_m: int = 8, ms_classes: int = 8, class_names: list[str] | None = None, *,
                        neighbours: tuple[torch.Tensor, torch.Tensor] | None = None,
                        precisions: Sequence[float] = MATCH_PRECISIONS, reference=None,
                        reference_labels=None, ce_classes: Sequence[int] | None = None) -> dict[str, Any]:
    """All test metrics from embeddings (N, D): retrieval metrics, ce_loss (when a CE head is given), ms_loss,
    ms_loss_plain, the per-class report (class_report; `class_names[label]` names the classes) and the
    distances for each wanted precision of the top hit in `precisions` (match_thresholds; each in (0, 1]).
    `neighbours`: the result of `_nearest_neighbours(embeddings)` when the caller has it already.
    `ce_classes`: the class ids the CE head learnt (those with training images; None: all): ce_loss and
    ce_accuracy count only the items of these, and `ce_left_out` says how many others were left out (all of
    them: no ce_loss, and `ce_left_out` says why).

    `embeddings`: a torch tensor or a numpy array (what model.Embedder.embed returns); `labels`: N integer
    class ids or N class names (str), as a tensor, an array or a list. Names are numbered in sorted order
    and, without `class_names`, name the classes in the report. Raises TypeError for other kinds and
    ValueError for lengths that differ or a precision outside (0, 1], naming them.

    `reference` and `reference_labels` (M, D) and (M,), given together, of the same kinds: score the
    embeddings as queries against this separate reference set (a gallery) instead of each against the others
    (leave-one-out): the retrieval metrics of pml's AccuracyCalculator with `ref_includes_query=False`, as
    `retrieval_metrics` computes them; ce_loss of the queries; `test_size` (the queries) and `reference_size`;
    `unscored_classes`, the queries' classes that no reference item has (pml leaves such queries out), and
    `scored_queries`. The MS losses, the similarity means, the per-class report and the match thresholds
    describe one set scored against itself and are left out (so `ms_m`, `ms_classes` and `precisions` are
    not used). Raises ValueError for a reference of another dimension than the queries, or labels of
    another length than the reference, naming them, and TypeError for names in one set and ids in the other.
    """
    if reference is not None or reference_labels is not None:
        if neighbours is not None:
            raise ValueError("neighbours are the leave-one-out ones of a set scored against itself: give them "
                             "without reference")
        return _evaluate_against(embeddings, labels, reference, reference_labels, ce_head, class_names, ce_classes)
    embeddings, labels, names = _as_tensors(embeddings, labels)
    class_names = class_names if class_names is not None else names
    precisions = tuple(precisions)
    bad = [p for p in precisions if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1]
    if bad or not precisions:
        raise ValueError(f"precisions {list(precisions)}: give target precisions of the top hit in (0, 1], e.g. "
                         f"{list(MATCH_PRECISIONS)}")
    out: dict[str, Any] = retrieval_metrics(embeddings, labels)
    if ce_head is not None:
        out.update(_ce_of_learnt(embeddings, labels, ce_head, ce_classes, class_names))
    out.update(ms_loss(embeddings, labels, m=ms_m, classes_per_batch=ms_classes))
    out.update(ms_loss_plain(embeddings, labels))
    out.update(similarity_stats(embeddings, labels))
    neighbours = neighbours if neighbours is not None else _nearest_neighbours(embeddings)
    out.update(class_report(embeddings, labels, class_names, neighbours=neighbours))
    out.update(match_thresholds(embeddings, labels, precisions, neighbours=neighbours))
    out["test_size"] = int(len(labels))
    out.update(unscored_classes(labels, class_names))
    return out


def _as_tensors(embeddings, labels, what: str = "embeddings",
                what_labels: str = "labels") -> tuple[torch.Tensor, torch.Tensor, list[str] | None]:
    """(embeddings as a float tensor (N, D), labels as int64 (N,), the class names when labels were names);
    `what` and `what_labels`: the arguments as the messages name them."""
    if isinstance(embeddings, np.ndarray):
        embeddings = torch.from_numpy(np.ascontiguousarray(embeddings))
    if not isinstance(embeddings, torch.Tensor):
        raise TypeError(f"{what}: a torch tensor or numpy array (N, D), got {type(embeddings).__name__}")
    if embeddings.dim() != 2 or not embeddings.is_floating_point():
        raise ValueError(f"{what} of shape {tuple(embeddings.shape)} and dtype {embeddings.dtype}: expected "
                         "floats (N, D)")
    names = None
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu()
    else:
        if isinstance(labels, (str, bytes)) or not hasattr(labels, "__len__"):
            raise TypeError(f"{what_labels}: N class ids or names (a tensor, array or list), got "
                            f"{type(labels).__name__}")
        values = np.asarray(labels)
        if values.dtype.kind in "US" or (values.dtype == object and all(isinstance(v, str) for v in labels)):
            names = sorted({str(v) for v in labels})
            number = {n: i for i, n in enumerate(names)}
            values = np.array([number[str(v)] for v in labels], dtype=np.int64)
        elif values.dtype.kind not in "iu" and len(values):
            raise TypeError(f"{what_labels} of dtype {values.dtype}: give integer class ids or class names (str)")
        labels = torch.from_numpy(values.astype(np.int64).reshape(-1))
    if labels.dim() != 1 or len(labels) != len(embeddings):
        raise ValueError(f"{what_labels} of shape {tuple(labels.shape)} for {len(embeddings)} {what}: one label "
                         "each")
    finite = torch.isfinite(embeddings).all(dim=1)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten()
        raise ValueError(f"{what}: {len(bad)} of {len(embeddings)} rows hold NaN or infinity (the first: row "
                         f"{int(bad[0])}); a network whose weights diverged embeds so")
    return embeddings.cpu(), labels.long(), names


def _evaluate_against(queries, labels, reference, reference_labels, ce_head: dict | None,
                      class_names: list[str] | None, ce_classes: Sequence[int] | None = None) -> dict[str, Any]:
    """evaluate_embeddings of `queries` against a separate reference set (see there)."""
    if reference is None or reference_labels is None:
        given, missing = ("reference", "reference_labels") if reference is not None else \
            ("reference_labels", "reference")
        raise TypeError(f"{given} without {missing}: give the reference vectors and their labels together")
    queries, labels, reference, reference_labels, names = _queries_and_reference(queries, labels, reference,
                                                                                 reference_labels)
    class_names = class_names if class_names is not None else names
    if not bool(torch.isin(labels, reference_labels).any()):   # pml would ask FAISS for 0 neighbours (an assert)

        def shown(ids):
            ids = sorted(set(ids.tolist()))
            said = [class_names[c] if class_names and c < len(class_names) else str(c) for c in ids[:5]]
            return ", ".join(said) + (f", ... ({len(ids)} in all)" if len(ids) > 5 else "")
        raise ValueError(f"no query's class is in the reference (queries: {shown(labels)}; reference: "
                         f"{shown(reference_labels)}): there is nothing of its class for any query to find")
    out: dict[str, Any] = _retrieval_against(queries, labels, reference, reference_labels)
    if ce_head is not None:
        out.update(_ce_of_learnt(queries, labels, ce_head, ce_classes, class_names))
    out["test_size"] = int(len(labels))
    out["reference_size"] = int(len(reference_labels))
    absent = sorted(set(labels.tolist()) - set(reference_labels.tolist()))
    out["unscored_classes"] = {class_names[c] if class_names and c < len(class_names) else str(c):
                               "not in the reference" for c in absent}
    out["scored_queries"] = int(torch.isin(labels, reference_labels).sum())
    return out


def _queries_and_reference(queries, labels, reference, reference_labels):
    """(queries, labels, reference, reference_labels, the class names) as tensors, checked to go together:
    vectors of one dimension; class names in both sets (numbered together, in sorted order) or ids in both."""
    queries, labels, names = _as_tensors(queries, labels)
    reference, reference_labels, reference_names = _as_tensors(reference, reference_labels, "reference vectors",
                                                               "reference_labels")
    if reference.shape[1] != queries.shape[1]:
        raise ValueError(f"reference vectors of dimension {reference.shape[1]} for queries of dimension "
                         f"{queries.shape[1]}: both must be the same model's embeddings")
    if not len(reference):
        raise ValueError("reference vectors: none given (0 rows); the queries need a reference set to be scored "
                         "against")
    if (names is None) != (reference_names is None):
        kinds = ("class names", "class ids") if names is not None else ("class ids", "class names")
        raise TypeError(f"labels are {kinds[0]} and reference_labels {kinds[1]}: give both as names or both as ids")
    if names is not None:
        joint = sorted(set(names) | set(reference_names))
        labels, reference_labels = _renumbered(labels, names, joint), _renumbered(reference_labels,
                                                                                  reference_names, joint)
        names = joint
    return queries, labels, reference, reference_labels, names


def _renumbered(labels: torch.Tensor, names: list[str], joint: list[str]) -> torch.Tensor:
    """Labels numbered in `names` numbered in `joint` instead (names numbered over both sets)."""
    place = {n: i for i, n in enumerate(joint)}
    return torch.tensor([place[n] for n in names], dtype=torch.long)[labels]


def _retrieval_against(queries: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor,
                       reference_labels: torch.Tensor) -> dict[str, float]:
    """retrieval_metrics of the queries against the reference set: each query's nearest reference items by
    cosine (FAISS on L2-normalised vectors), no query counted as its own reference (ref_includes_query=False)."""
    calc = _accuracy_calculator()
    query = F.normalize(queries.float(), dim=1).numpy().astype(np.float32)
    ref = F.normalize(reference.float(), dim=1).numpy().astype(np.float32)
    res = calc.get_accuracy(query, labels.numpy(), ref, reference_labels.numpy(), ref_includes_query=False)
    return {k: float(v) for k, v in res.items()}


def unscored_classes(labels: torch.Tensor, class_names: list[str] | None = None) -> dict[str, Any]:
    """What leave-one-out retrieval cannot score on a split: `unscored_classes`, {class: why} for each class with
    fewer than two items (one item has no other of its class to find; with `class_names`, a class with none is
    named too), and `scored_queries`, the items precision@1 and the other retrieval metrics count."""
    classes, sizes = torch.unique(labels, return_counts=True)
    count = dict(zip(classes.tolist(), sizes.tolist(), strict=True))
    ids = range(len(class_names)) if class_names else classes.tolist()
    unscored = {}
    for c in ids:
        n = count.get(c, 0)
        if n < 2:
            unscored[class_names[c] if class_names and c < len(class_names) else str(c)] = \
                "no test image" if n == 0 else "1 test image"
    return {"unscored_classes": unscored, "scored_queries": int(sizes[sizes > 1].sum())}


def evaluate_artifact(artifact: str | os.PathLike, data: str | os.PathLike, *, device: str | None = None,
                      batch_size: int = 512, test_fraction: float | None = None, split_seed: int = 0,
                      max_test: int | None = None, seed: int | None = None, tta: str | None = None,
                      out: str | os.PathLike | None = None, out_name: str | None = None,
                      centre: float | None = None, mistakes: int = 10, sheet: str | os.PathLike | None = None,
                      sheet_rows: int = 12, map_path: str | os.PathLike | None = None, map_points: int = 2000,
                      log: Callable[[str], None] | None = None, progress: bool = True,
                      precisions: Sequence[float] = MATCH_PRECISIONS) -> dict[str, Any]:
    """Evaluate a model artifact on the test split of the dataset at `data` (any layout load_dataset reads).

    The images are decoded at the artifact's channels and size; labels are mapped to the artifact's
    class names when it has them, so the CE head's classes line up. A folder of class folders without a
    test/ folder has `test_fraction` of each class held out (seeded by `split_seed`, 0 as in training) as
    its test split. `max_test` evaluates a seeded stratified subset (the same one `simsearch train
    --max-test` with that `seed` uses). `test_fraction` and `seed` left out (None) are the ones the
    artifact records it was trained with (its `training["config"]`; 0.2 and 0 when it records none), so
    that evaluating a model on its own training data scores the images its training held out; `log`
    receives a line saying which were used and where they came from, when they chose the images. `tta`
    overrides the artifact's test-time augmentation (None: the artifact's own, which is what the service
    computes).

    `out`: also write a copy of the artifact (same weights and heads) whose `tta` is the one evaluated here
    and whose recorded scores are these, e.g. to turn mirror-image averaging on for a trained model;
    `out_name` renames the copy (its `training.trained_as` keeps the name it was trained under).

    `centre`: first take this share of the mean embedding of the dataset's training images off every
    embedding (training/_centre.py), folded into the weights that are evaluated and that `out` writes.

    `confident_mistakes` in the result: the `mistakes` test queries whose nearest neighbour is of another
    class, the most similar pair first, with their files for an ImageFolder (training/_mistakes.py).
    `sheet`: also draw the first `sheet_rows` of them with their neighbours into this PNG.
    `map_path`: also draw a map of `map_points` of the test images, placed by t-SNE of their embeddings, into
    this PNG (training/_map.py); `map` in the result says how far it can be trusted.
    `log` receives a line naming the dataset's images that could not be decoded, when there are any.
    `progress`: a progress bar on stderr while a large ImageFolder is decoded (False: none).
    `precisions`: the precisions of the top hit to calibrate a `max_distance` for (match_thresholds).

    Raises ValueError for a `max_test` below 1 (None, the default, evaluates every test image) or an unknown `tta`.
    """
    import model

    _check_evaluate_options(max_test, tta)
    art = model.load_artifact(artifact)
    meta = art.meta
    tta = meta.tta if tta is None else tta
    split = _split_settings(meta, test_fraction, seed)
    # the training images are read for --centre alone (a dataset without a test/ folder is read whole)
    ds = _dataset_for(art, data, split["test_fraction"], split_seed, progress, log, test_only=not centre)
    dev = torch.device(device) if device else model.default_device()
    net = art.model.to(dev)
    test = _test_subset(ds.test, max_test, split["seed"])
    _say_split(ds, split, max_test, len(test), log)
    if centre:
        _centre_weights(art, artifact, net, ds.train.images, centre, dev, tta)
    emb = embed_images(net, test.images, meta.mean, meta.std, dev, batch_size, tta)
    head, ce_left_out = _ce_head(art, ds.class_names)
    neighbours = _nearest_neighbours(emb)   # for the metrics and the mistakes alike
    res = evaluate_embeddings(emb, test.labels, head, class_names=list(ds.class_names), neighbours=neighbours,
                              precisions=precisions, ce_classes=_learnt_classes(art, ds.class_names))
    found = confident_mistakes(test.labels, neighbours, max(mistakes, sheet_rows if sheet else 0),
                               list(ds.class_names), test.names)
    res["confident_mistakes"] = found[:mistakes]
    if ce_left_out:
        res["ce_left_out"] = ce_left_out
    if sheet is not None:
        res["mistakes_sheet"] = _draw_mistakes(sheet, sheet_rows, found, art, ds, test, emb)
    if map_path is not None:
        from ._map import embedding_map

        res["map"] = embedding_map(map_path, test.images, test.labels, emb, class_names=list(ds.class_names),
                                   points=map_points, seed=split["seed"],
                                   title=f"{art.model_id} on {ds.name}: test images placed by t-SNE of their "
                                         "embeddings")
    res["dataset"] = ds.describe()
    res["test_split"] = split
    res["model_id"] = art.model_id
    res["tta"] = tta
    res["parameters"] = model.count_parameters(art.model)
    if centre:
        res["centre"] = centre
    if out is not None:
        _write_evaluated_copy(art, out, out_name, tta, res)
    return res


def _check_evaluate_options(max_test: int | None, tta: str | None) -> None:
    """evaluate_artifact's refusals of a `max_test` or `tta` it cannot use, before anything is read."""
    import model

    if max_test is not None and (isinstance(max_test, bool) or not isinstance(max_test, int) or max_test < 1):
        raise ValueError(f"max_test must be an integer of at least 1 (None for every test image), got {max_test!r}")
    if tta is not None and tta not in model.TTA_MODES:
        raise ValueError(f"unknown test-time augmentation {tta!r}; known: {', '.join(model.TTA_MODES)}")


def _split_settings(meta, test_fraction: float | None, seed: int | None) -> dict[str, Any]:
    """{"test_fraction", "seed", "from": {each: where it came from}}: the values given, else those of the
    training config the artifact records (what `simsearch train` held out and drew its --max-test subset with),
    else the defaults, 0.2 and 0."""
    config = meta.training.get("config") if isinstance(meta.training, dict) else None
    config = config if isinstance(config, dict) else {}
    recorded = {"test_fraction": config.get("test_fraction"), "seed": config.get("seed")}
    usable = {"test_fraction": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1,
              "seed": lambda v: isinstance(v, int) and not isinstance(v, bool)}
    given, default = {"test_fraction": test_fraction, "seed": seed}, {"test_fraction": 0.2, "seed": 0}
    split: dict[str, Any] = {"from": {}}
    for key in ("test_fraction", "seed"):
        if given[key] is not None:
            split[key], split["from"][key] = given[key], "given"
        elif usable[key](recorded[key]):
            split[key], split["from"][key] = recorded[key], "the artifact's training config"
        else:
            split[key], split["from"][key] = default[key], "the default (the artifact records none)"
    return split


def _say_split(ds, split: dict[str, Any], max_test: int | None, scored: int,
               log: Callable[[str], None] | None) -> None:
    """A line for each value that chose the test images: the share held out of a dataset without a test/
    folder, and the seed of a --max-test subset, with where each came from."""
    if log is None:
        return
    if "split_seed" in ds.info:   # held out by load_dataset, not a test/ folder's
        log(f"test split: {split['test_fraction']:g} of each class held out (test_fraction {split['test_fraction']:g}"
            f", {split['from']['test_fraction']}; split seed {ds.info['split_seed']})")
    if max_test and scored < len(ds.test):
        log(f"max_test {max_test}: a stratified subset of {scored} of the {len(ds.test)} test images drawn with "
            f"seed {split['seed']} ({split['from']['seed']})")


def _dataset_for(art, data: str | os.PathLike, test_fraction: float, split_seed: int, progress: bool,
                 log: Callable[[str], None] | None, test_only: bool = False):
    """The dataset at `data` decoded at the artifact's channels and size (refused when its images cannot be),
    its notes (images not decoded, ...) given to `log`; `test_only`: its test/ folder alone, where it has one."""
    from ._data import DatasetError, load_dataset

    meta = art.meta
    ds = load_dataset(data, in_chans=meta.in_chans, image_size=meta.image_size, test_fraction=test_fraction,
                      split_seed=split_seed, progress=progress, test_only=test_only)
    if ds.image_size != meta.image_size or ds.in_chans != meta.in_chans:
        raise DatasetError(f"{data}: images are {ds.in_chans}x{ds.image_size}x{ds.image_size} but the model "
                           f"expects {meta.in_chans}x{meta.image_size}x{meta.image_size}")
    for line in ds.notes() if log is not None else []:
        log(line)
    return ds


def _test_subset(test, max_test: int | None, seed: int):
    """The test split, or its seeded stratified subset of `max_test` images when it holds more."""
    from ._data import stratified_split

    if max_test and max_test < len(test):
        keep, _ = stratified_split(test.labels, 1 - max_test / len(test), seed)
        test = test.subset(keep)
    return test


def _centre_weights(art, artifact: str | os.PathLike, net: nn.Module, train_images: torch.Tensor, centre: float,
                    dev: torch.device, tta: str) -> None:
    """Take `centre` of the training images' mean embedding off `net`'s output, folded into its weights and the
    artifact's CE head (what `out` writes)."""
    from ._centre import can_centre, fold_shift, mean_embedding  # here: _centre imports this module

    if not can_centre(net, art.heads):
        raise ValueError(f"cannot centre {artifact}: it needs a Linear embedding layer and no head but the CE "
                         f"one (its heads: {sorted(art.heads) or 'none'})")
    shift = mean_embedding(net, train_images, art.meta.mean, art.meta.std, dev, tta)
    head = fold_shift(net, centre * shift, art.heads.get("ce_head"))
    if head is not None:
        art.heads = {**art.heads, "ce_head": head}  # what `out` writes


def _ce_head(art, class_names: list[str]) -> tuple[dict | None, str | None]:
    """(the artifact's CE head, or None where there is none or its classes are not the dataset's; why there is
    no CE loss then, for the result)."""
    meta = art.meta
    head = art.heads.get("ce_head")
    if head is None:
        loss = (meta.training or {}).get("config", {}).get("loss")
        return None, ("no ce_loss or ce_accuracy: the model has no classifier head"
                      + (f" (trained with loss {loss})" if loss else ""))
    if meta.class_names and meta.class_names != class_names:
        # classes differ: a CE loss against this head would be meaningless; said, not left out unseen
        return None, (f"no ce_loss or ce_accuracy: the model's classifier has {_classes(meta.class_names)} and this "
                      f"dataset {_classes(class_names)}"
                      + (" (the same, in another order)" if sorted(meta.class_names) == sorted(class_names) else ""))
    return head, None


def _learnt_classes(art, class_names: list[str]) -> list[int] | None:
    """The ids (in `class_names`) of the classes the artifact's training run had training images of, as its
    metadata records them (training.dataset.class_counts); None where it does not record them."""
    counts = ((art.meta.training or {}).get("dataset") or {}).get("class_counts")
    if not isinstance(counts, dict):
        return None
    return [i for i, name in enumerate(class_names)
            if not isinstance(counts.get(name), dict) or counts[name].get("train", 1) > 0]


def _draw_mistakes(sheet: str | os.PathLike, sheet_rows: int, found: list[dict[str, Any]], art, ds, test,
                   emb: torch.Tensor) -> dict[str, Any]:
    """The first `sheet_rows` confident mistakes drawn with their neighbours into the PNG `sheet`; what the
    result says of it."""
    title = (f"{art.model_id} on {ds.name}: the {min(sheet_rows, len(found))} test images whose nearest "
             f"neighbour is of another class, the nearest first")
    mistakes_sheet(sheet, test.images, test.labels, emb, found[:sheet_rows], class_names=list(ds.class_names),
                   names=test.names, title=title)
    return {"path": str(sheet), "rows": min(sheet_rows, len(found))}


def _write_evaluated_copy(art, out: str | os.PathLike, out_name: str | None, tta: str, res: dict[str, Any]) -> None:
    """A copy of the artifact at `out` that embeds with `tta` and records the scores in `res`, renamed
    `out_name` when given."""
    import model

    meta = art.meta
    # Scores measured here replace the recorded ones; what only training knew stays.
    kept = {k: v for k, v in meta.metrics.items() if k in ("best_epoch", "val_precision_at_1", "size_kb_float32")}
    # the mistakes name this dataset's images: the copy keeps the scores only
    scores = {k: v for k, v in res.items() if k not in ("dataset", "test_split", "model_id", "confident_mistakes",
                                                         "mistakes_sheet", "map")}
    update: dict[str, Any] = {"tta": tta, "metrics": {**kept, **scores, "evaluated_from": art.model_id}}
    if out_name and out_name != meta.name:
        update.update(name=out_name, training={**meta.training, "trained_as": meta.training.get("trained_as",
                                                                                             meta.name)})
    new_meta = meta.model_copy(update=update)
    model.resave_artifact(art, out, new_meta)


def _classes(names: list[str]) -> str:
    """'10 classes (airplane, automobile, bird, ...)' for a message."""
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return f"{len(names)} class{'es' if len(names) != 1 else ''} ({shown})"


def _share(x: float) -> str:
    """A share as a percentage for the console; a few queries out of thousands are not "0.0 %"."""
    return f"{100 * x:.1f} %" if x >= 0.0005 or x == 0 else "under 0.05 %"


def format_metrics(m: dict[str, Any]) -> str:
    """One line per headline metric, for the console, under a line saying what was measured: the number of
    test images and the test-time augmentation (the same weights score differently with and without mirror
    images, so a figure is only comparable with one measured the same way)."""
    keys = list(RETRIEVAL_METRICS) + [f"recall_at_{r}" for r in RECALL_AT] + [
        "ce_loss", "ce_accuracy", "ms_loss", "ms_loss_plain", "mean_cos_same_class", "mean_cos_other_class"]
    what = _measured(m)
    lines = ([", ".join(what)] if what else []) + [f"{k:30s} {m[k]:.4f}" for k in keys if k in m]
    if unscored := m.get("unscored_classes"):   # said: an average that leaves rare classes out must say so
        shown = [f"{c} ({why})" for c, why in list(unscored.items())[:8]]
        why = ("none in the reference" if "reference_size" in m else
               "fewer than 2 test images, nothing of the class to find")
        lines.append(f"{len(unscored)} class{'es' if len(unscored) != 1 else ''} not scored ({why}): "
                     f"{', '.join(shown)}{' ... (all in the metrics file)' if len(unscored) > 8 else ''}")
    worst = sorted((c for c in m.get("per_class", []) if c["precision_at_1"] is not None),
                   key=lambda c: c["precision_at_1"])[:5]
    if worst:
        lines.append("lowest precision@1 by class: " + ", ".join(
            f"{c['class']} {c['precision_at_1']:.3f}" for c in worst))
    if m.get("confusions"):
        lines.append("most frequent wrong nearest neighbours (query class -> its neighbour's, count): " + ", ".join(
            f"{c['query_class']} -> {c['neighbour_class']} {c['count']}" for c in m["confusions"][:5]))
    if m.get("confident_mistakes"):
        lines.append("most confident mistakes (a query -> its nearest neighbour, of another class; cosine):")
        lines += [f"  {_image(c, 'query')} -> {_image(c, 'neighbour')}  {c['cosine']:.3f}"
                  for c in m["confident_mistakes"][:5]]
    if m.get("ce_left_out"):
        lines.append(m["ce_left_out"])
    # the calibration last: the docs say the console "ends with" the max_distance to search with
    targets = m.get("match_thresholds", [])
    found = [t for t in targets if t["max_distance"] is not None]
    if found:
        lines.append("max_distance for a top hit of the right class with a precision of: " + ", ".join(
            f"{t['target_precision']:.2f} -> {t['max_distance']:.3f} (answers {_share(t['answered'])}"
            f"{_few(t.get('queries'))})" for t in found))
    if targets and len(found) < len(targets):   # said, not left out: no distance keeps the top hits that right
        lines.append("no max_distance reaches a precision of " + ", ".join(
            f"{t['target_precision']:.2f}" for t in targets if t["max_distance"] is None)
            + " for the top hit on this test split (the nearest are too often of another class at every distance)")
    return "\n".join(lines)


def _measured(m: dict[str, Any]) -> list[str]:
    """What format_metrics's first line says was measured: how many test images (queries, against how large a
    reference set), scored how."""
    what = []
    if "test_size" in m:
        scored = m.get("scored_queries", m["test_size"])
        if "reference_size" in m:
            what.append(f"{m['test_size']} queries against {m['reference_size']} reference items"
                        + (f" ({scored} scored; the other {m['test_size'] - scored} have no reference item of their "
                           "class)" if scored != m["test_size"] else ""))
        else:
            alone = m["test_size"] - scored
            said = "is alone in its" if alone == 1 else "are alone in their"
            what.append(f"{m['test_size']} test images" + (f" ({scored} scored; the other {alone} {said} class)"
                                                            if alone else ""))
    if "tta" in m:
        what.append(f"test-time augmentation {m['tta']}")
    if m.get("centre"):
        what.append(f"centred by {m['centre']:g} of the mean embedding")
    return what


def _few(queries: int | None) -> str:
    """For a match threshold kept by few queries: how many it rests on (a precision measured on 2 says little)."""
    if queries is None or queries >= FEW_QUERIES:
        return ""
    return f"; rests on {queries} quer{'ies' if queries != 1 else 'y'} only, too few to trust"


def _image(mistake: dict[str, Any], which: str) -> str:
    """One side of a confident mistake for the console: its file (or its index in the split) and class."""
    where = mistake.get(f"{which}_file", f"test image {mistake[which]}")
    return f"{where} ({mistake[f'{which}_class']})"
