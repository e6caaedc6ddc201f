"""The embedded distiller: section rules + topic rules + embedding-based merging, no LLM.

How a human point becomes a target item:
1. Its review section decides the default aspect: strengths → reasons for acceptance, weaknesses →
   reasons for rejection, questions and limitations → suggestions, evaluative summary sentences → the
   idea; purely descriptive summary sentences are no review point and are left out of the target.
2. Topic rules move a strength or weakness whose subject is clearly novelty/prior work (aspect 2), the
   experiments (aspect 3) or the idea itself (aspect 1); presentation nits go to "other" (aspect 7).
   "Clearly" means at least two cues of that topic and more than of any other, so a weakness that merely
   mentions a table stays a reason for rejection.
3. Within an aspect, points of different reviewers that say the same thing (cosine similarity of
   all-MiniLM-L6-v2 embeddings ≥ `merge_threshold`) become one item; items are ordered by how many
   reviewers raised them, so the response budget keeps the consensus points.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from reviewstack.common.aspects import AspectSchema
from reviewstack.common.embeddings import load_embedding_model
from reviewstack.dataprep.distill import Distillation, ProgressFn
from reviewstack.dataprep.reviews import HumanPoint, PaperReviews

VERSION = "embedded-v1"

_PRIOR_WORK = re.compile(
    r"\b(novel\w*|originality|incremental|prior (?:work|art|method\w*|approach\w*)|previous (?:work|"
    r"method\w*|approach\w*|stud\w*)|existing (?:work|method\w*|approach\w*|literature|techniques)|"
    r"related work|literature|differ\w* from|similar to|extension of|builds? (?:up)?on|first to|"
    r"new (?:method|approach|framework|perspective)|contribution\w*|(?:compared|comparison) (?:to|with) "
    r"(?:prior|previous|existing|recent))",
    re.I,
)
_EXPERIMENTS = re.compile(
    r"\b(experiment\w*|empirical\w*|results?|benchmark\w*|ablation\w*|evaluat\w*|datasets?|baselines?|"
    r"outperform\w*|performance|accuracy|metrics?|tables? \d|fig(?:ure)?s?\.? ?\d|sota|simulation\w*|"
    r"statistical|seeds?|error bars?|hyperparameter\w*|settings?)\b",
    re.I,
)
_IDEA = re.compile(
    r"\b(idea|motivat\w*|intuiti\w*|elegant|principled|insight\w*|important problem|timely|"
    r"interesting (?:idea|problem|direction|approach)|conceptual\w*|well[- ]motivated|the (?:proposed )?"
    r"(?:approach|method|framework) is (?:simple|novel|sound|interesting|general))\b",
    re.I,
)
_PRESENTATION = re.compile(
    r"\b(typos?|grammar\w*|grammatical|minor (?:issue|comment|point)s?|formatting|font|caption\w*|"
    r"writing|presentation|notation\w*|readability|clarity|proofread\w*|spelling)\b",
    re.I,
)
_EVALUATIVE = re.compile(
    r"\b(novel\w*|interesting|well[- ]written|clear\w*|strong|weak\w*|limited|promising|solid|convinc\w*|"
    r"significant\w*|important|impressive|sound|rigorous|compelling|valuable|useful|incremental|unclear|"
    r"concern\w*|lack\w*|insufficient|good|well[- ]motivated|elegant|effective)\b",
    re.I,
)


def _cues(pattern: re.Pattern[str], text: str) -> int:
    return len(pattern.findall(text))


def assign_aspect(point: HumanPoint, schema: AspectSchema = AspectSchema.SEVEN) -> str | None:
    """The aspect key a human point belongs to, or None when it is no review point (a plain summary)."""
    if schema is AspectSchema.FOUR:
        return _assign_four(point)
    if point.kind == "summary":
        return "idea" if _cues(_EVALUATIVE, point.text) >= 1 else None
    if point.kind in ("question", "limitation"):
        return "suggestions"
    if point.kind == "other":
        return "other"
    topics = {
        "prior_work": _cues(_PRIOR_WORK, point.text),
        "experiments": _cues(_EXPERIMENTS, point.text),
        "idea": _cues(_IDEA, point.text),
    }
    best = max(topics, key=lambda k: topics[k])
    runner_up = max(v for k, v in topics.items() if k != best)
    if topics[best] >= 2 and topics[best] > runner_up:
        return best
    if point.kind == "weakness" and _cues(_PRESENTATION, point.text) >= 1 and topics[best] == 0:
        return "other"
    return "acceptance" if point.kind == "strength" else "rejection"


def _assign_four(point: HumanPoint) -> str | None:
    if point.kind == "summary":
        return "significance" if _cues(_EVALUATIVE, point.text) >= 1 else None
    if point.kind in ("question", "limitation", "other"):
        return "suggestions"
    if _cues(_PRIOR_WORK, point.text) + _cues(_IDEA, point.text) >= 2:
        return "significance"
    return "acceptance" if point.kind == "strength" else "rejection"


@dataclass
class _Item:
    text: str
    reviewer: str
    kind: str
    terms: frozenset[str]
    vector: np.ndarray | None = None


@dataclass
class _Cluster:
    text: str
    kind: str
    first: int
    reviewers: set[str]
    vector: np.ndarray | None


_WORD = re.compile(r"[a-z]{4,}")
_STOPWORDS = frozenset(  # words too common in reviews to signal that two points match
    """
    this that with from have been which their there these those what when where while would could should
    also more than into about such some very much most other paper authors author work method methods
    approach proposed propose results result model models using used does make makes made
    """.split()  # noqa: SIM905 - a word list reads better as text
)


def content_terms(text: str) -> frozenset[str]:
    """Crude stems (first six letters) of a point's content words, for cheap candidate blocking."""
    return frozenset(w[:6] for w in _WORD.findall(text.lower()) if w not in _STOPWORDS)


class EmbeddedDistiller:
    """Rules + embeddings; deterministic for given inputs.

    Embedding every point costs ~14 ms each on two CPU cores, the bulk of a 400-paper build, and most
    points have no possible duplicate. So only *candidates* are embedded: points that share at least
    `min_shared_terms` content words with a point of another reviewer under the same aspect (blocking,
    as record-linkage systems do before their expensive comparison). Pairs that share fewer words
    rarely reach the merge threshold; they stay separate items.
    """

    def __init__(
        self,
        schema: AspectSchema = AspectSchema.SEVEN,
        merge_threshold: float = 0.8,
        max_item_words: int = 80,
        min_shared_terms: int = 3,
        model_path: str | None = None,
        batch_size: int = 64,
    ) -> None:
        self.schema = schema
        self.merge_threshold = merge_threshold
        self.max_item_words = max_item_words
        self.min_shared_terms = min_shared_terms
        self.model_path = model_path
        self.batch_size = batch_size
        self._model = None

    def describe(self) -> dict[str, object]:
        return {
            "name": "embedded",
            "version": VERSION,
            "embedding_model": "all-MiniLM-L6-v2",
            "merge_threshold": self.merge_threshold,
            "max_item_words": self.max_item_words,
            "min_shared_terms": self.min_shared_terms,
        }

    @property
    def model(self):
        if self._model is None:
            self._model = load_embedding_model(self.model_path)
        return self._model

    def distill(
        self,
        papers: Sequence[PaperReviews],
        points: dict[str, list[HumanPoint]],
        progress: ProgressFn | None = None,
    ) -> dict[str, Distillation]:
        groups: dict[tuple[str, str], list[_Item]] = {}  # (paper, aspect) → items in review order
        for paper in papers:
            for point in points.get(paper.paper_id, []):
                aspect = assign_aspect(point, self.schema)
                if aspect is not None:
                    text = _shorten(point.text, self.max_item_words)
                    item = _Item(text, point.reviewer_id, point.kind, content_terms(text))
                    groups.setdefault((paper.paper_id, aspect), []).append(item)
        candidates = [item for group in groups.values() for item in self._candidates(group)]
        for item, vector in zip(
            candidates, self._encode([c.text for c in candidates], progress), strict=True
        ):
            item.vector = vector
        results = {p.paper_id: Distillation(p.paper_id, {k: [] for k in self.schema.keys}) for p in papers}
        for (paper_id, aspect), group in groups.items():
            results[paper_id].aspects[aspect] = self._merge(group)
        return results

    def _candidates(self, group: list[_Item]) -> list[_Item]:
        return [
            item
            for item in group
            if any(
                other.reviewer != item.reviewer
                and other.kind == item.kind
                and len(item.terms & other.terms) >= self.min_shared_terms
                for other in group
            )
        ]

    def _merge(self, group: list[_Item]) -> list[str]:
        """Greedy clustering in review order; items are ranked by how many reviewers raised them.

        Only points of the same kind merge: a strength and a weakness about the same experiment are
        two points, however similar their words."""
        clusters: list[_Cluster] = []
        for order, item in enumerate(group):
            match = None
            if item.vector is not None:
                scored = [
                    (float(c.vector @ item.vector), c)
                    for c in clusters
                    if c.vector is not None and c.kind == item.kind
                ]
                best = max(scored, key=lambda pair: pair[0], default=None)
                if best is not None and best[0] >= self.merge_threshold:
                    match = best[1]
            if match is not None:
                match.reviewers.add(item.reviewer)
            else:
                clusters.append(_Cluster(item.text, item.kind, order, {item.reviewer}, item.vector))
        clusters.sort(key=lambda c: (-len(c.reviewers), c.first))
        return [c.text for c in clusters]

    def _encode(self, texts: list[str], progress: ProgressFn | None) -> np.ndarray:
        if not texts:
            if progress:
                progress(0, 0)
            return np.zeros((0, 384), dtype=np.float32)
        chunks = []
        step = max(self.batch_size * 8, 1)
        for start in range(0, len(texts), step):
            chunks.append(
                self.model.encode(
                    texts[start : start + step],
                    batch_size=self.batch_size,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                )
            )
            if progress:
                progress(min(start + step, len(texts)), len(texts))
        return np.concatenate(chunks)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(])")


def _shorten(text: str, max_words: int) -> str:
    """Keep whole sentences up to `max_words` words: a target item is a point, not a paragraph."""
    words = text.split()
    if len(words) <= max_words:
        return " ".join(words)
    kept: list[str] = []
    for sentence in _SENTENCE_END.split(" ".join(words)):
        if kept and len(" ".join(kept).split()) + len(sentence.split()) > max_words:
            break
        kept.append(sentence)
    result = " ".join(kept)
    return result if len(result.split()) <= max_words else " ".join(result.split()[:max_words]) + " …"
