"""The default point matcher ("embedded"): which generated points cover which human points, with no LLM
and no network.

Every (generated, human) pair gets a logit from a logistic combiner over a few cheap features:
- semantic: cosine of static embeddings distilled from all-MiniLM-L6-v2 (`static_model`), and how far the
  pair is from the best pair of its human point and of its generated point (GPT-4 aligns each comment to
  the closest one or two of the other list, not to everything on the topic), and the cosine's z-score
  within the call;
- lexical: overlap of word pieces weighted by the distilled model's own token weights (rare, specific
  words count, "the paper" does not), which no IDF table has to be shipped for;
- sizes: how many points each side has and how long they are (GPT-4 aligns a given pair less often
  when the generated review has many points, or when the human point is long and specific).
A one-to-one assignment (Hungarian) maximises the summed logits; a second logistic stage turns each
assigned pair into the probability that its human point is hit (`Calibration`), and the pairs whose
probability reaches the threshold are the matches, with it as their score.

Weights and threshold live in `matcher_calibration.json`, fitted by bench/matcher_agreement.py on GPT-4's
alignments of the MARG data, with a generated review matched against all the human points of its paper
at once, as the evaluation calls the matcher (the bench also reports matching against one human review at
a time, as MARG's alignments were made). How well it agrees with GPT-4, and how much better than plain
cosine, is in bench/results/matcher_agreement.json.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, cached_property
from importlib.resources import files
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from scipy.special import expit

from reviewstack.common.errors import FailedPrecondition, InvalidArgument
from reviewstack.evaluation.model import Match

if TYPE_CHECKING:
    from model2vec import StaticModel

FEATURES = (
    "cos",
    "cos_gap_reference",  # cos minus the best cos of this human point over all generated points
    "cos_gap_generated",  # cos minus the best cos of this generated point over all human points
    "cos_z",
    "overlap",
    "overlap_gap_reference",
    "log_n_generated",
    "log_n_reference",
    "log_len_generated",
    "log_len_reference",
)
CALIBRATION = "matcher_calibration.json"


@dataclass(frozen=True)
class Encoded:
    """Texts as the features need them; row i of each field is text i."""

    vectors: np.ndarray  # unit-length static embeddings (all zero for a text with no tokens)
    bags: sparse.csr_matrix  # token sets, each token weighted by sqrt(its weight), rows unit-length
    lengths: np.ndarray  # tokens per text

    def take(self, rows: Sequence[int]) -> Encoded:
        index = np.asarray(rows, dtype=np.int64)
        return Encoded(self.vectors[index], self.bags[index], self.lengths[index])


class StaticEncoder:
    """Static embeddings and weighted token bags of texts, from the distilled model."""

    def __init__(self, model: StaticModel) -> None:
        self.model = model
        # model2vec scales each token's vector by its SIF weight: the norm is how much a token says
        self.token_weights = np.linalg.norm(model.embedding.astype(np.float32), axis=1)

    def encode(self, texts: Sequence[str]) -> Encoded:
        texts = list(texts)
        if not texts:  # model2vec cannot encode an empty batch
            empty = sparse.csr_matrix((0, len(self.token_weights)), dtype=np.float32)
            return Encoded(np.zeros((0, self.model.dim), np.float32), empty, np.zeros(0, np.float32))
        vectors = self.model.encode(texts, use_multiprocessing=False, normalize=False).astype(np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
        tokens = self.model.tokenize(texts)
        ids = [np.unique(np.asarray(t, dtype=np.int64)) for t in tokens]
        lengths = np.array([len(t) for t in tokens], dtype=np.float32)
        rows = np.repeat(np.arange(len(ids)), [len(t) for t in ids])
        cols = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
        bags = sparse.csr_matrix(
            (np.sqrt(self.token_weights[cols]), (rows, cols)), shape=(len(ids), len(self.token_weights))
        )
        size = np.sqrt(np.asarray(bags.multiply(bags).sum(axis=1)).ravel())
        bags = sparse.diags(np.divide(1.0, size, out=np.zeros_like(size), where=size > 0)) @ bags
        return Encoded(vectors, bags.tocsr(), lengths)


def pair_features(generated: Encoded, reference: Encoded) -> np.ndarray:
    """The `FEATURES` of every pair: shape (n_generated, n_reference, len(FEATURES))."""
    cos = generated.vectors @ reference.vectors.T
    overlap = (generated.bags @ reference.bags.T).toarray()
    n_gen, n_ref = cos.shape
    spread = cos.std()
    columns = [
        cos,
        cos - cos.max(axis=0, keepdims=True),
        cos - cos.max(axis=1, keepdims=True),
        (cos - cos.mean()) / spread if spread > 0 else np.zeros_like(cos),
        overlap,
        overlap - overlap.max(axis=0, keepdims=True),
        np.full(cos.shape, np.log(n_gen)),
        np.full(cos.shape, np.log(n_ref)),
        np.repeat(np.log1p(generated.lengths)[:, None], n_ref, axis=1),
        np.repeat(np.log1p(reference.lengths)[None, :], n_gen, axis=0),
    ]
    return np.stack(columns, axis=-1)


@dataclass(frozen=True)
class Logistic:
    """A fitted logistic regression over standardised inputs."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    def logit(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.scale) @ self.coef + self.intercept

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Logistic:
        mean, scale, coef = (np.asarray(data[k], dtype=np.float64) for k in ("mean", "scale", "coef"))
        return cls(mean, scale, coef, float(data["intercept"]))

    def to_dict(self) -> dict[str, Any]:
        rounded = {k: [round(float(v), 6) for v in getattr(self, k)] for k in ("mean", "scale", "coef")}
        return {**rounded, "intercept": round(float(self.intercept), 6)}


def assigned_pairs(features: np.ndarray, pair: Logistic) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The one-to-one assignment with the largest summed pair logit, and what the hit stage reads of each
    assigned pair: its features and its logit. Rows index generated points, columns human points."""
    logits = pair.logit(features)
    if logits.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, len(FEATURES) + 1))
    rows, cols = linear_sum_assignment(logits, maximize=True)
    return rows, cols, np.column_stack([features[rows, cols], logits[rows, cols]])


@dataclass(frozen=True)
class Calibration:
    """The two fitted stages and the threshold. The pair stage scores every pair (fitted on GPT-4's
    aligned pairs) and drives the assignment; the hit stage rescores each assigned pair as the chance
    that its human point is hit at all (fitted on GPT-4's hits): GPT-4 often hits a human point through
    another generated point than the one a one-to-one assignment can give it, and deciding on what is
    actually decided (assigned pairs, hits) agrees better with GPT-4 than thresholding the pair stage."""

    pair: Logistic
    hit: Logistic
    threshold: float
    digest: str = "unsaved"  # of the fitted numbers (not the file's dates): part of the matcher's version
    agreement: dict[str, Any] | None = None  # measured against GPT-4, quoted by every report

    @classmethod
    def load(cls) -> Calibration:
        raw = files("reviewstack.evaluation").joinpath(CALIBRATION).read_bytes()
        data = json.loads(raw)
        if tuple(data["features"]) != FEATURES:
            raise FailedPrecondition(
                f"{CALIBRATION} was fitted on features {data['features']}, the matcher computes "
                f"{list(FEATURES)}: refit it with `python bench/matcher_agreement.py --write-calibration`"
            )
        try:
            return cls(
                pair=Logistic.from_dict(data["pair"]),
                hit=Logistic.from_dict(data["hit"]),
                threshold=float(data["threshold"]),
                digest=_digest({k: data[k] for k in ("features", "pair", "hit", "threshold")}),
                agreement=data.get("agreement"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise FailedPrecondition(
                f"{CALIBRATION} is not a calibration this matcher can read ({exc!r}): refit it with "
                "`python bench/matcher_agreement.py --write-calibration`"
            ) from None

    def hit_probabilities(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(generated, reference, probability) of every assigned pair, before the threshold."""
        rows, cols, chosen = assigned_pairs(features, self.pair)
        return rows, cols, expit(self.hit.logit(chosen))

    def matches(self, features: np.ndarray) -> list[Match]:
        rows, cols, probability = self.hit_probabilities(features)
        return [
            Match(int(g), int(r), round(float(p), 4))
            for g, r, p in zip(rows, cols, probability, strict=True)
            if p >= self.threshold
        ]


def _digest(fitted: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fitted, sort_keys=True).encode()).hexdigest()[:8]


class EmbeddedMatcher:
    """The default matcher: static MiniLM embeddings + token overlap, calibrated combiners, Hungarian."""

    name = "embedded"

    def __init__(self, model: StaticModel | None = None, calibration: Calibration | None = None) -> None:
        self._model = model
        if calibration is not None:
            self.calibration = calibration

    @cached_property
    def calibration(self) -> Calibration:
        return Calibration.load()

    @cached_property
    def encoder(self) -> StaticEncoder:
        from reviewstack.evaluation.static_model import load_static_model

        return StaticEncoder(self._model or load_static_model())

    @property
    def version(self) -> str:
        from reviewstack.evaluation.static_model import NAME

        return f"{NAME}+cal-{self.calibration.digest}"

    def describe(self) -> dict[str, Any]:
        """What a report records besides name and version: how far its decisions can be trusted."""
        return {"threshold": self.calibration.threshold, "agreement": self.calibration.agreement}

    def match_many(self, pairs: Sequence[tuple[Sequence[str], Sequence[str]]]) -> list[list[Match]]:
        """Each (generated, reference) pair's matches; every distinct text is encoded once."""
        index: dict[str, int] = {}
        for generated, reference in pairs:
            for text in (*generated, *reference):
                if not isinstance(text, str):
                    raise InvalidArgument(f"points must be strings, got {type(text).__name__}: {text!r}")
                index.setdefault(text, len(index))
        encoded = self.encoder.encode(list(index))
        results = []
        for generated, reference in pairs:
            if not generated or not reference:
                results.append([])
                continue
            features = pair_features(
                encoded.take([index[t] for t in generated]), encoded.take([index[t] for t in reference])
            )
            results.append(self.calibration.matches(features))
        return results


@cache
def default_matcher() -> EmbeddedMatcher:
    """One per process, loaded at once so that a server's preload does the slow part before SERVING: the
    static model takes a second to load (up to minutes the first time, when it is built)."""
    matcher = EmbeddedMatcher()
    _ = matcher.encoder, matcher.calibration
    return matcher


def match_points(generated: list[str], reference: list[str]) -> list[tuple[int, int, float]]:
    """(generated index, reference index, score) of the default matcher's one-to-one matches."""
    (matches,) = default_matcher().match_many([(generated, reference)])
    return [(m.generated, m.reference, m.score) for m in matches]
