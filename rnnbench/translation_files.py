"""The files a translation run leaves in its directory.

- ``vocab.json``: both vocabularies (``{"source": [...], "target": [...]}``, id = position);
- ``test_translations.tsv``: source, reference and hypothesis of every test sentence;
- ``attention/``: attention maps of decoded sentences, one heat map ``val_<i>.png`` per
  sentence and all weights in ``attention.json``.

A map's rows are the output tokens (the ``<eos>`` step too, when it was produced), its
columns the source tokens (``<eos>`` included, padding left out); entry ``(t, j)`` is the
weight output step ``t`` gave source position ``j`` (each row sums to 1).
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from .files import write_json_atomic
from .parallel_data import EOS, SentenceVocabulary

VOCAB_FILE = "vocab.json"
TRANSLATIONS_FILE = "test_translations.tsv"
ATTENTION_FOLDER = "attention"
ATTENTION_FILE = "attention.json"


def write_vocabularies(run_dir: Path, source: SentenceVocabulary, target: SentenceVocabulary) -> dict[str, int]:
    """``run_dir/vocab.json``; returns the two vocabulary sizes."""
    write_json_atomic(run_dir / VOCAB_FILE, {"source": source.to_json(), "target": target.to_json()})
    return {"source": len(source), "target": len(target)}


def write_translations(run_dir: Path, sources: list[str], references: list[str], hypotheses: list[str]) -> str:
    """``run_dir/test_translations.tsv`` (with a header line); returns its name."""
    with open(run_dir / TRANSLATIONS_FILE, "w", encoding="utf-8") as f:
        f.write("source\treference\thypothesis\n")
        f.writelines(f"{s}\t{r}\t{h}\n" for s, r, h in zip(sources, references, hypotheses, strict=True))
    return TRANSLATIONS_FILE


def sentence_maps(src: Tensor, src_lengths: Tensor, tokens: Tensor, weights: Tensor, references: list[str],
                  src_vocab: SentenceVocabulary, tgt_vocab: SentenceVocabulary) -> list[dict]:
    """One entry per row of a decoded batch: ``index``, ``source`` and ``output`` tokens, the
    ``reference`` text and the ``weights`` (output steps x source tokens) as lists."""
    entries = []
    for row in range(src.shape[0]):
        source = [src_vocab.itos[i] for i in src[row, :src_lengths[row]].tolist()]
        output = tgt_vocab.decode(tokens[row].tolist())
        steps = min(len(output) + 1, tokens.shape[1])  # the <eos> step too, when produced
        target = output + [EOS] if steps > len(output) else output
        matrix = weights[row, :steps, :len(source)].float().cpu()
        entries.append({"index": row, "source": source, "output": target, "reference": references[row],
                        "weights": matrix.tolist()})
    return entries


def write_maps(run_dir: Path, attention: str, entries: list[dict]) -> str:
    """``run_dir/attention/val_<index>.png`` for every entry, and ``attention.json`` with them
    all; returns the folder's name."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    folder = run_dir / ATTENTION_FOLDER
    folder.mkdir(exist_ok=True)
    for entry in entries:
        source, target = entry["source"], entry["output"]
        figure = Figure(figsize=(1.2 + 0.35 * len(source), 1.0 + 0.3 * len(target)))
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        image = axes.imshow(entry["weights"], cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        axes.set_xticks(range(len(source)), source, rotation=90)
        axes.set_yticks(range(len(target)), target)
        axes.set_xlabel("source")
        axes.set_ylabel("output")
        figure.colorbar(image, ax=axes, fraction=0.04)
        figure.tight_layout()
        figure.savefig(folder / f"val_{entry['index']}.png", dpi=100)
    write_json_atomic(folder / ATTENTION_FILE, {"attention": attention, "sentences": entries})
    return ATTENTION_FOLDER
