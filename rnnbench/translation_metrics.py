"""Corpus metrics of translations: BLEU and chrF, exact match, and BLEU by source length.

BLEU (Papineni et al. 2002) and chrF (Popović 2015) are computed with sacrebleu (Post
2018, arXiv:1804.08771) on detokenised hypotheses against the raw references, one
reference per sentence; ``lowercase=True`` scores case-insensitively (``case:lc`` in
sacrebleu's signature), for models that see lower-cased text. Exact match compares
tokens: a hypothesis matches when its tokens are the reference's tokens.
"""

from __future__ import annotations

from typing import Callable, Sequence

from .parallel_batches import EncodedSplit
from .parallel_data import SentenceVocabulary


def corpus_scores(hypotheses: Sequence[str], references: Sequence[str],
                  lowercase: bool) -> tuple[dict[str, float], dict[str, str]]:
    """``({"bleu", "chrf"}, {"bleu_signature", "chrf_signature"})`` of the corpus."""
    import sacrebleu

    bleu = sacrebleu.metrics.BLEU(lowercase=lowercase)
    chrf = sacrebleu.metrics.CHRF(lowercase=lowercase)
    scores = {"bleu": float(bleu.corpus_score(list(hypotheses), [list(references)]).score),
              "chrf": float(chrf.corpus_score(list(hypotheses), [list(references)]).score)}
    return scores, {"bleu_signature": str(bleu.get_signature()), "chrf_signature": str(chrf.get_signature())}


def exact_match(hypotheses: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> float:
    """The fraction of hypotheses whose tokens equal their reference's tokens."""
    return sum(list(h) == list(r) for h, r in zip(hypotheses, references, strict=True)) / len(hypotheses)


def bleu_by_source_length(hypotheses: Sequence[str], references: Sequence[str], source_lengths: Sequence[int],
                          bucket_width: int, lowercase: bool) -> list[dict]:
    """Corpus BLEU per bucket of ``bucket_width`` source tokens (``1-5``, ``6-10``, ...), with
    the number of sentences in each; buckets without a sentence are left out."""
    import sacrebleu

    buckets: dict[int, list[int]] = {}
    for i, length in enumerate(source_lengths):
        buckets.setdefault((length - 1) // bucket_width, []).append(i)
    rows = []
    for bucket in sorted(buckets):
        members = buckets[bucket]
        score = sacrebleu.metrics.BLEU(lowercase=lowercase).corpus_score(
            [hypotheses[i] for i in members], [[references[i] for i in members]])
        rows.append({"source_tokens": f"{bucket * bucket_width + 1}-{(bucket + 1) * bucket_width}",
                     "sentences": len(members), "bleu": round(score.score, 2)})
    return rows


def score_split(hypotheses: dict[int, list[int]], split: EncodedSplit, vocab: SentenceVocabulary,
                detokenize: Callable[[list[str]], str], lowercase: bool) -> tuple[dict[str, float], dict[str, str]]:
    """BLEU, chrF and exact match of ``{sentence index: token ids}`` against the sentences of
    ``split`` (each scored once, whatever the order the hypotheses came in), and sacrebleu's
    signatures."""
    order = sorted(hypotheses)
    tokens = [vocab.decode(hypotheses[i]) for i in order]
    scores, signatures = corpus_scores([detokenize(t) for t in tokens], [split.references[i] for i in order],
                                       lowercase)
    scores["exact_match"] = exact_match(tokens, [vocab.decode(split.tgt[i][1:]) for i in order])
    return scores, signatures
