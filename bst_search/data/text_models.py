"""Text classifiers over a sound's metadata (``meta.model``), the models behind ``meta_probs``.

Each is a small class registered by name in :data:`TEXT_MODELS` with
``from_config(cfg) -> model``, ``inputs(ds) -> X`` (what it reads of a dataset, one row per
sound), ``fit(X, y)`` and ``predict_proba(X) -> (n, 23)``. Both are scikit-learn pipelines;
nothing here is a hand-written classifier. The cross-fitting that keeps them honest is
:mod:`bst_search.data.meta_probs`; a model here only ever sees the rows it is given.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pandas as pd

from bst_search.data.errors import DataError
from bst_search.data.loading import Dataset
from bst_search.data.texts import TEXT_FIELDS
from bst_search.registry import Registry
from bst_search.taxonomy import N_CLASSES

TEXT_MODELS = Registry("meta.model")
register_text_model = TEXT_MODELS.register

Inputs = pd.DataFrame | np.ndarray  # the rows a model reads: texts, or an embedding matrix
CHAR_FIELDS = ("title", "tags")  # tfidf_lr: the short fields, also as character n-grams


def take(X: Inputs, rows: np.ndarray) -> Inputs:
    """Rows of a model's inputs, whichever kind they are."""
    return X.iloc[rows].reset_index(drop=True) if isinstance(X, pd.DataFrame) else X[rows]


def stack(parts: list[Inputs]) -> Inputs:
    """Inputs of several datasets one after the other (development and crowd rows)."""
    if isinstance(parts[0], pd.DataFrame):
        return pd.concat(parts, ignore_index=True)
    return np.concatenate(parts)


class TextModel:
    """A scikit-learn estimator behind the interface the cross-fit uses.

    ``needs``: backbones the model reads besides the text (loaded with the dataset).
    ``predict_proba`` maps the estimator's classes onto the 23 taxonomy columns, so a class
    absent from a small training part is a column of zeros, not a shifted index.
    """

    needs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, C: float) -> None:
        self.C = float(C)
        self.estimator: Any = None

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> TextModel:
        return cls(cfg["meta"]["C"])

    def inputs(self, ds: Dataset) -> Inputs:  # pragma: no cover - every model defines it
        raise NotImplementedError

    def make_estimator(self) -> Any:  # pragma: no cover - every model defines it
        raise NotImplementedError

    def fit(self, X: Inputs, y: np.ndarray) -> TextModel:
        self.estimator = self.make_estimator().fit(X, np.asarray(y, dtype=np.int64))
        return self

    def predict_proba(self, X: Inputs) -> np.ndarray:
        p = self.estimator.predict_proba(X)
        out = np.zeros((p.shape[0], N_CLASSES), dtype=np.float64)
        out[:, self.estimator.classes_] = p
        return out


def _logreg(C: float) -> Any:
    from sklearn.linear_model import LogisticRegression

    # the multinomial loss; newton-cg takes 7 to 17 iterations here, 2 to 4 times faster than lbfgs
    return LogisticRegression(C=C, max_iter=1000, solver="newton-cg")


@register_text_model("tfidf_lr")
class TfidfLR(TextModel):
    """TF-IDF of each field's word 1-2-grams, and of the title's and tags' character
    2-4-grams (inside word boundaries), side by side, then a multinomial logistic regression.

    Fields are vectorised apart because a word means something else in a title than in a
    tag list; character n-grams catch the spellings short fields vary (``dog``/``dogs``,
    ``field-recording``/``fieldrecording``). A description is long prose, where words carry
    it and character n-grams would double the cost. ``min_df=2`` drops what only one sound
    says.
    """

    def inputs(self, ds: Dataset) -> Inputs:
        return ds.text_rows()

    def make_estimator(self) -> Any:
        from sklearn.compose import ColumnTransformer
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.pipeline import make_pipeline

        def words() -> TfidfVectorizer:
            return TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True,
                                   dtype=np.float32)

        def chars() -> TfidfVectorizer:
            return TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), min_df=2,
                                   sublinear_tf=True, dtype=np.float32)

        parts = [(f"{f}_words", words(), f) for f in TEXT_FIELDS]
        parts += [(f"{f}_chars", chars(), f) for f in CHAR_FIELDS]
        return make_pipeline(ColumnTransformer(parts), _logreg(self.C))


@register_text_model("minilm_lr")
class MiniLMLR(TextModel):
    """The MiniLM sentence embedding of the metadata (the ``minilm_text`` backbone that
    ``bst-search extract`` writes), standardised, then a multinomial logistic regression."""

    needs = ("minilm_text",)

    def inputs(self, ds: Dataset) -> Inputs:
        if "minilm_text" not in ds.features:
            raise DataError(f"{ds.root}: meta.model=minilm_lr reads the minilm_text embeddings, "
                            f"which are not loaded (features/minilm_text_embeddings; loaded: "
                            f"{', '.join(ds.features) or 'none'})")
        return ds.features["minilm_text"]

    def make_estimator(self) -> Any:
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), _logreg(self.C))
