"""Top-k accuracy as a local `evaluate` metric module.

Why a local module: `evaluate.load("accuracy")` fetches its script from the Hugging Face Hub, which is not reachable
offline, and the stock metrics have no top-k variant anyway. This folder follows the layout `evaluate.load(path)`
expects for a local module (``<folder>/<folder name>.py`` holding one `evaluate.Metric` subclass), so it is loaded
with ``evaluate.load(str(Path(avbert.training.__file__).parent / "metrics" / "top_k_accuracy"))``. It must stay
self-contained (numpy, datasets, evaluate only): `evaluate` copies the file into its module cache and imports it
from there, outside the `avbert` package.
"""

from collections.abc import Iterable

import datasets
import evaluate
import numpy as np

_CITATION = """\
@inproceedings{lee2021avbert,
  title     = {Parameter Efficient Multimodal Transformers for Video Representation Learning},
  author    = {Lee, Sangho and Yu, Youngjae and Kim, Gunhee and Breuel, Thomas and Kautz, Jan and Song, Yale},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2021}
}
"""

_DESCRIPTION = """\
Top-k accuracy: the fraction of examples whose reference class is among the k highest-scoring classes of the
prediction. Top-1 accuracy is ordinary accuracy. Video classification papers (AVBERT among them) report top-1 and
top-5 accuracy of the ensembled (summed or averaged) class scores of several views of each video. The scores may be
logits, probabilities or summed probabilities: only their order matters. Ties are broken towards the lower class
index (a stable sort), so a constant score vector predicts class 0.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`, shape (N, C)): class scores for each of the N examples.
    references (`list` of `int`, length N): the true class index of each example, in [0, C).
    k (`int` or iterable of `int`, defaults to `(1, 5)`): the k values to report; a k larger than the number of
        classes C counts as C (every class is then "in the top k", so the accuracy is 1).

Returns:
    `dict`: `top{k}_accuracy` for each requested k, a float in [0, 1].

Examples:
    >>> metric = evaluate.load("path/to/top_k_accuracy")
    >>> metric.compute(predictions=[[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]], references=[2, 0], k=(1, 2))
    {'top1_accuracy': 0.5, 'top2_accuracy': 1.0}
"""


def _as_k_tuple(k: int | Iterable[int]) -> tuple[int, ...]:
    """Accept a single k as well as several; reject k < 1, which has no meaning."""
    values = (int(k),) if isinstance(k, int | np.integer) else tuple(int(value) for value in k)
    if not values or min(values) < 1:
        raise ValueError(f"k must be one or more integers >= 1, got {k!r}")
    return values


def top_k_correct(scores: np.ndarray, references: np.ndarray, k: int) -> np.ndarray:
    """Boolean (N,): is the reference among the ``min(k, C)`` highest scores of each row (stable tie-breaking)."""
    k = min(k, scores.shape[1])
    ranking = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return (ranking == references[:, None]).any(axis=1)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TopKAccuracy(evaluate.Metric):
    """Top-k accuracy over class-score vectors (several k in one call)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float32")),
                    "references": datasets.Value("int64"),
                }
            ),
            reference_urls=["https://openreview.net/forum?id=6UdQLhqJyFD"],
        )

    def _compute(
        self, predictions: list[list[float]], references: list[int], k: int | Iterable[int] = (1, 5)
    ) -> dict[str, float]:
        scores = np.asarray(predictions, dtype=np.float64)
        labels = np.asarray(references, dtype=np.int64)
        if scores.ndim != 2 or scores.shape[0] != labels.shape[0]:
            raise ValueError(f"predictions must be (N, C) and references (N,), got {scores.shape} and {labels.shape}")
        if scores.shape[0] == 0:
            raise ValueError("top-k accuracy of zero examples is undefined")
        if labels.min() < 0 or labels.max() >= scores.shape[1]:
            raise ValueError(f"references must lie in [0, {scores.shape[1]}), got {labels.min()}..{labels.max()}")
        return {f"top{value}_accuracy": float(top_k_correct(scores, labels, value).mean()) for value in _as_k_tuple(k)}
