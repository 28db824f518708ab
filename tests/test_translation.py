"""Translation task: attention and masking, decoding, BLEU, data loaders, every cell as
encoder and decoder, and short runs through the command line."""

from __future__ import annotations

import inspect
import itertools
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from helpers.cli import run_cli, summaries
from helpers.data import shared_data
from rnnbench import dates, parallel_data
from rnnbench.decoding import beam_search, greedy, select_rows
from rnnbench.errors import ConfigError
from rnnbench.registry import CELLS, get_task
from rnnbench.models import count_parameters
from rnnbench.seq2seq import ATTENTIONS, EncoderOutput, Seq2Seq
from rnnbench.stack import CellStack
from rnnbench.task import seeded_generator
from rnnbench.tasks.translation import TranslationTask

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir() -> Path:
    """The shared corpora (conftest: $RNNBENCH_DATA_DIR, else ../shared/data)."""
    found = shared_data("multi30k/raw/val.de.gz")
    if found is not None:
        return found
    pytest.skip("shared corpora not found (set RNNBENCH_DATA_DIR to the folder holding multi30k/ and tatoeba_eng_fra_5k/)")


def factory(cell: str = "gru", hidden: int = 12, layers: int = 1, bidirectional: bool = True, **options):
    """A stack factory like run.py's: ``make_stack(input_size, bidirectional=None)``."""
    cls = CELLS.get(cell)
    default_direction = bidirectional

    def make_stack(input_size, bidirectional=None):
        direction = default_direction if bidirectional is None else bidirectional
        return CellStack(cls, input_size, hidden, num_layers=layers, bidirectional=direction, **options)

    return make_stack


def tiny_model(attention="bahdanau", cell="gru", bidirectional=True, vocab=(11, 9), **kwargs) -> Seq2Seq:
    torch.manual_seed(0)
    model = Seq2Seq(factory(cell, bidirectional=bidirectional), *vocab, embedding_size=6, attention=attention,
                    **kwargs)
    return model.double().eval()


def random_batch(batch=4, src_len=7, tgt_len=5, vocab=(11, 9), seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, vocab[0], (batch, src_len), generator=g)
    lengths = torch.tensor([src_len, 3, 5, 1][:batch])
    src = src.masked_fill(torch.arange(src_len)[None] >= lengths[:, None], 0)
    tgt = torch.randint(4, vocab[1], (batch, tgt_len), generator=g)
    tgt[:, 0] = 1
    return src, lengths, tgt


# --- attention and masking -----------------------------------------------------------------
@pytest.mark.parametrize("attention", [a for a in ATTENTIONS if a != "none"])
def test_attention_sums_to_one_and_is_zero_on_padding(attention):
    model = tiny_model(attention)
    src, lengths, tgt = random_batch()
    _, weights = model(src, lengths, tgt)
    assert weights.shape == (4, 5, 7)
    torch.testing.assert_close(weights.sum(-1), torch.ones(4, 5, dtype=weights.dtype))
    padding = torch.arange(7)[None, None, :] >= lengths[:, None, None]
    assert (weights.masked_select(padding.expand_as(weights)) == 0).all()
    assert (weights.masked_select(~padding.expand_as(weights)) > 0).all()


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_appending_padding_changes_nothing(attention):
    model = tiny_model(attention)
    src, lengths, tgt = random_batch()
    longer = torch.cat([src, torch.zeros(4, 6, dtype=torch.long)], dim=1)
    (short, _), (long_, _) = model.encode(src, lengths), model.encode(longer, lengths)
    real = (torch.arange(7)[None] < lengths[:, None])[..., None]
    torch.testing.assert_close(short.memory * real, long_.memory[:, :7] * real)
    assert (long_.memory[:, 7:] == 0).all()
    logits_short, weights_short = model(src, lengths, tgt)
    logits_long, weights_long = model(longer, lengths, tgt)
    torch.testing.assert_close(logits_short, logits_long)
    if weights_short is not None:
        torch.testing.assert_close(weights_short, weights_long[..., :7])
        assert (weights_long[..., 7:] == 0).all()


def test_luong_general_matches_its_equation():
    """e_j = s^T W_a h_j, softmax over real positions (Luong et al. 2015, eq. 8)."""
    model = tiny_model("luong_general")
    attention = model.attention
    memory = torch.randn(2, 4, 24, dtype=torch.double)
    query = torch.randn(2, 12, dtype=torch.double)
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    context, weights = attention.attend(query, EncoderOutput(memory, attention.keys(memory), mask))
    W = attention.key_map.weight  # (12, 24)
    for b in range(2):
        n = int(mask[b].sum())
        expected = torch.softmax(torch.stack([query[b] @ W @ memory[b, j] for j in range(n)]), 0)
        torch.testing.assert_close(weights[b, :n], expected)
        torch.testing.assert_close(context[b], expected @ memory[b, :n])


def test_teacher_forcing_ratio_zero_feeds_the_model_its_own_predictions():
    model = tiny_model("bahdanau")
    src, lengths, tgt = random_batch()
    forced, _ = model(src, lengths, tgt, teacher_forcing=1.0)
    free, _ = model(src, lengths, tgt, teacher_forcing=0.0)
    torch.testing.assert_close(forced[:, 0], free[:, 0])  # step 0 always reads <bos>
    fed = torch.cat([tgt[:, :1], free[:, :-1].argmax(-1)], dim=1)
    torch.testing.assert_close(model(src, lengths, fed, teacher_forcing=1.0)[0], free)
    assert not torch.allclose(forced, free)


# --- decoding ------------------------------------------------------------------------------
@pytest.mark.parametrize("attention", ATTENTIONS)
def test_beam_size_one_equals_greedy(attention):
    model = tiny_model(attention)
    src, lengths, _ = random_batch()
    greedy_tokens, _ = greedy(model, src, lengths, max_len=9, bos=1, eos=2)
    beam = beam_search(model, src, lengths, max_len=9, bos=1, eos=2, beam_size=1, length_penalty=0.6)
    assert torch.equal(greedy_tokens, beam)


@torch.no_grad()
def sequence_log_prob(model, src, lengths, sequence):
    """Log probability of ``sequence`` (ending in <eos> or at the length limit) by stepping the decoder."""
    encoded, state = model.encode(src, lengths)
    tokens, total = torch.tensor([1]), 0.0
    for token in sequence:
        logits, state, _ = model.step(tokens, state, encoded)
        total += float(torch.log_softmax(logits, -1)[0, token])
        tokens = torch.tensor([token])
    return total


def test_wide_beam_finds_the_exhaustive_best():
    """With beam >= every prefix, beam search is exhaustive: it must return the most
    probable output among all sequences up to the length limit (independent oracle)."""
    vocab = (8, 6)  # target: 4 specials + 2 words; outputs use tokens 2 (eos), 4, 5
    model = tiny_model("bahdanau", vocab=vocab)
    src, lengths, _ = random_batch(batch=1, src_len=4, vocab=vocab, seed=3)
    lengths = torch.tensor([4])
    max_len, words = 3, [3, 4, 5]  # <unk> and the two words; <pad> and <bos> are never produced
    candidates = [[*prefix, 2] for n in range(max_len) for prefix in itertools.product(words, repeat=n)]
    candidates += [list(prefix) for prefix in itertools.product(words, repeat=max_len)]  # cut at the limit
    best = max(candidates, key=lambda seq: sequence_log_prob(model, src, lengths, seq))
    found = beam_search(model, src, lengths, max_len=max_len, bos=1, eos=2, beam_size=64, length_penalty=0.0)
    found = found[0].tolist()
    found = found[:found.index(2) + 1] if 2 in found else found
    assert found == best


# --- BLEU ------------------------------------------------------------------------------------
def test_references_against_themselves_score_100():
    task = TranslationTask(synthetic_val_size=50)
    val = task.corpus.splits(0)["val"]
    scores = task.score("val", {i: val.tgt[i][1:] for i in range(len(val))}, data_seed=0)
    assert scores == pytest.approx({"bleu": 100.0, "chrf": 100.0, "exact_match": 1.0})
    assert task._signatures["bleu_signature"].startswith("nrefs:1|case:lc|")
    # A wrong year in every hypothesis costs BLEU and every exact match.
    _, tgt_vocab = task.corpus.vocabularies()
    wrong = {i: [tgt_vocab.stoi["0" if tgt_vocab.itos[val.tgt[i][1]] != "0" else "1"], *val.tgt[i][2:]]
             for i in range(len(val))}
    degraded = task.score("val", wrong, data_seed=0)
    assert degraded["exact_match"] == 0.0 and degraded["bleu"] < 90


def test_tokenize_and_detokenize():
    assert parallel_data.tokenize("Don't stop, Mr. Smith! (Now)") == ["don", "'", "t", "stop", ",", "mr", ".", "smith", "!",
                                                           "(", "now", ")"]
    assert parallel_data.detokenize(parallel_data.tokenize("A well-known man's dog, (it barks).", lowercase=False)) == \
        "A well-known man's dog, (it barks)."


def test_detokenized_multi30k_references_score_near_100(data_dir):
    """Tokenise -> detokenise loses only spacing details that sacrebleu's 13a tokeniser ignores."""
    import sacrebleu

    references = [t for _, t in parallel_data.read_multi30k("de", "en", data_dir)["val"]]
    texts = [parallel_data.detokenize(parallel_data.tokenize(r)) for r in references]
    assert sacrebleu.corpus_bleu(texts, [references], lowercase=True).score > 99.0


# --- data ------------------------------------------------------------------------------------
def test_multi30k_splits_have_the_published_sizes(data_dir):
    splits = parallel_data.read_multi30k("de", "en", data_dir)
    assert {k: len(v) for k, v in splits.items()} == {"train": 29000, "val": 1014, "test": 1000}
    assert splits["train"][0] == ("Zwei junge weiße Männer sind im Freien in der Nähe vieler Büsche.",
                                  "Two young, White males are outside near many bushes.")
    assert len(parallel_data.read_multi30k("fr", "cs", data_dir)["test"]) == 1000


def test_multi30k_task_vocabularies_and_lengths(data_dir):
    task = TranslationTask(dataset="multi30k", data_dir=str(data_dir), min_freq=2)
    splits = task.corpus.splits(0)
    src_vocab, tgt_vocab = task.corpus.vocabularies()
    assert len(splits["val"]) == 1014 and len(splits["test"]) == 1000 and len(splits["train"]) >= 28900
    assert 5000 < len(src_vocab) < 10000 and 4000 < len(tgt_vocab) < 8000  # de and en, min_freq 2
    assert src_vocab.itos[:4] == list(parallel_data.SPECIALS)


def test_tatoeba_and_small_fr_en_files(data_dir):
    tatoeba = parallel_data.read_tsv_pairs(data_dir / "tatoeba_eng_fra_5k" / "eng-fra.txt")
    assert len(tatoeba) == 5000 and tatoeba[0] == ("Go.", "Va !")
    reverse = parallel_data.read_tsv_pairs(data_dir / "tatoeba_eng_fra_5k" / "eng-fra.txt", reverse=True)
    assert reverse[0] == ("Va !", "Go.")
    small = parallel_data.read_tsv_pairs(data_dir / "d2l_fr_en_small" / "fr-en-small.txt")
    assert len(small) == 20 and small[0] == ("elle est vieille .", "she is old .")
    task = TranslationTask(dataset="tsv", path="tatoeba_eng_fra_5k/eng-fra.txt", data_dir=str(data_dir),
                           reverse=True)
    assert {k: len(v) for k, v in task.corpus.splits(0).items()} == {"val": 500, "test": 500, "train": 4000}


@pytest.mark.parametrize("content, options, message", [
    (b"a\tb\nno tab here\n", {}, r"line 2: expected 'source<TAB>target', found no tab"),
    (b"src\ttgt\nsource\n", {}, r"line 2: expected"),
    (b"a\tb\n\t x\n", {}, r"line 2: an empty source sentence"),
    (b"a\tb\nc\td\r\ne\tf\n", {"line_endings": "lf"}, r"line 2: a line ending other than"),
    (b"a\tb\n\xff\xfe\tc\n", {}, r"line 2: not valid UTF-8"),
    (b"header\n", {"header_lines": 1}, r"no sentence pairs found"),
])
def test_messy_tsv_files_fail_with_the_line_number(tmp_path, content, options, message):
    path = tmp_path / "pairs.tsv"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        parallel_data.read_tsv_pairs(path, **options)


def test_messy_but_valid_tsv_files_load(tmp_path):
    path = tmp_path / "pairs.tsv"
    # BOM, a header, CRLF and lone CR endings, blank lines, extra columns, stray spaces.
    path.write_bytes("\ufeffen\tfr\r\nHi.\tSalut !\tCC-BY\r\n\r\n Go. \tVa !\rRun!\tCours !".encode())
    assert parallel_data.read_tsv_pairs(path, header_lines=1) == [("Hi.", "Salut !"), ("Go.", "Va !"), ("Run!", "Cours !")]


def test_synthetic_dates_words_and_splits():
    assert dates.date_in_words(2005, 3, 3, 0) == "the third of march two thousand and five"
    assert dates.date_in_words(1984, 11, 22, 1) == "november twenty second nineteen eighty four"
    assert dates.date_in_words(1905, 6, 30, 2) == "30 june nineteen oh five"
    assert dates.ordinal_words(30) == "thirtieth" and dates.year_words(1900) == "nineteen hundred"
    assert dates.iso_target(2005, 3, 3) == "2 0 0 5 - 0 3 - 0 3"
    task = TranslationTask(synthetic_train_size=3000, synthetic_val_size=200, synthetic_test_size=200)
    splits = task.corpus.splits(7)
    assert all(3 not in s for data in splits.values() for s in data.src)  # no <unk>: the vocabulary is complete
    raw = {k: set(zip(v.sources, v.references)) for k, v in splits.items() if k != "train"}
    assert not raw["val"] & raw["test"]
    again = TranslationTask(synthetic_train_size=3000, synthetic_val_size=200, synthetic_test_size=200).corpus.splits(7)
    assert again["val"].sources == splits["val"].sources  # a pure function of the data seed
    assert task.corpus.splits(8)["val"].sources != splits["val"].sources


def test_vocabulary_min_freq_and_specials():
    vocab = parallel_data.SentenceVocabulary.build([["a", "b", "a"], ["c", "a", "b"]], min_freq=2)
    assert vocab.itos == [*parallel_data.SPECIALS, "a", "b"]
    assert vocab.encode(["a", "c"]) == [4, 3]
    assert vocab.decode([4, 5, 3, 2, 4]) == ["a", "b", "<unk>"]


def test_training_batches_are_bucketed_disjoint_across_ranks_and_resumable():
    task = TranslationTask(synthetic_train_size=1000, synthetic_val_size=50, synthetic_test_size=50,
                           batch_size=32)
    ranks = [list(task.train_dataloader(0, rank=r, world_size=2, num_batches=10)) for r in range(2)]
    seen = [set(b[3].tolist()) for rank in ranks for b in rank[:15]]
    assert sum(len(s) for s in seen) == len(set().union(*seen))  # an epoch's batches are disjoint
    resumed = list(task.train_dataloader(0, rank=0, world_size=2, start_step=4, num_batches=6))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(ranks[0][4:], resumed))
    src, lengths, tgt, _ = ranks[0][0]
    assert src.shape == (32, int(lengths.max())) and tgt[:, 0].eq(1).all()
    spread = [int(b[1].max() - b[1].min()) for b in ranks[0]]
    assert sum(spread) / len(spread) <= 2  # length-bucketed: similar lengths within a batch


# --- every cell as encoder and decoder ----------------------------------------------------------
@pytest.mark.parametrize("cell", CELLS.names())
@pytest.mark.parametrize("bidirectional", [False, True])
def test_every_cell_serves_as_encoder_and_decoder(cell, bidirectional):
    torch.manual_seed(0)
    model = Seq2Seq(factory(cell, hidden=8, layers=2, bidirectional=bidirectional), 11, 9, embedding_size=5,
                    attention="luong_general" if bidirectional else "bahdanau")
    src, lengths, tgt = random_batch()
    logits, _ = model(src, lengths, tgt)
    logits.sum().backward()
    for part in (model.encoder, model.decoder, model.bridge):
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)
    model.eval()
    tokens, weights = greedy(model, src, lengths, max_len=6, bos=1, eos=2)
    assert tokens.shape[0] == 4 and tokens.shape[1] <= 6 and weights.shape[:2] == tokens.shape


# --- configuration ------------------------------------------------------------------------------
def test_yaml_lists_every_constructor_kwarg_with_its_default():
    cfg = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "task" / "translation.yaml"))
    assert cfg.pop("name") == "translation"
    defaults = {k: p.default for k, p in inspect.signature(TranslationTask.__init__).parameters.items()
                if k != "self"}
    assert cfg == defaults
    assert get_task("translation") is TranslationTask


def test_a_bidirectional_decoder_is_refused():
    with pytest.raises(ConfigError, match="task.decoder_bidirectional=True is invalid: expected false"):
        TranslationTask(decoder_bidirectional=True)

    def ignores_direction(input_size, bidirectional=None):
        return CellStack(CELLS.get("gru"), input_size, 8, bidirectional=True)

    with pytest.raises(ConfigError, match="decoder must be unidirectional"):
        TranslationTask().build_model(ignores_direction)


@pytest.mark.parametrize("options, message", [
    ({"attention": "luong"}, "task.attention='luong' is invalid"),
    ({"dataset": "tsv"}, "task.path=None is invalid"),
    ({"dataset": "multi30k", "target_lang": "de"}, "task.target_lang='de' is invalid"),
    ({"teacher_forcing": 1.5}, "task.teacher_forcing"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        TranslationTask(**options)


# --- what the run record counts (issue 12.4) -------------------------------------------------------
def gru_bahdanau_groups(src_vocab: int, tgt_vocab: int, hidden: int, embedding: int) -> dict[str, int]:
    """Parameters of a one-layer GRU encoder-decoder with Bahdanau attention, written out by
    hand (GRU: W_ih (3H, I), W_hh (3H, H), two biases (3H); Bahdanau et al.'s W, U, v, W_s)."""
    gru = lambda inputs: 3 * hidden * (inputs + hidden) + 2 * 3 * hidden  # noqa: E731
    return {"encoder": gru(embedding), "decoder": gru(embedding + hidden),  # decoder reads [E y; c_t]
            "bridge": hidden * hidden + hidden,  # tanh(W s_enc + b)
            "attention": hidden * hidden + (hidden * hidden + hidden) + hidden + (hidden * hidden + hidden),
            "embeddings": (src_vocab + tgt_vocab) * embedding,
            "output": (hidden + hidden + embedding) * tgt_vocab + tgt_vocab}  # W_o [s_t; c_t; E y_{t-1}]


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("cell, bidirectional", [("gru", False), ("lstm", True)])
def test_parameter_groups_partition_the_model(attention, cell, bidirectional):
    task = TranslationTask(attention=attention, synthetic_train_size=50, synthetic_val_size=10,
                           synthetic_test_size=10)
    model = task.build_model(factory(cell, hidden=12, layers=2, bidirectional=bidirectional))
    groups = {name: {id(p) for p in part.parameters()} for name, part in task.parameter_groups(model).items()}
    assert set(groups) == {"encoder", "decoder", "bridge", "attention", "embeddings", "output"}
    assert sum(len(ids) for ids in groups.values()) == len(set().union(*groups.values()))  # disjoint
    assert set().union(*groups.values()) == {id(p) for p in model.parameters()}  # and complete
    counts = {name: count_parameters(part) for name, part in task.parameter_groups(model).items()}
    assert sum(counts.values()) == count_parameters(model)


def test_parameter_groups_match_a_count_by_hand():
    task = TranslationTask(synthetic_train_size=50, synthetic_val_size=10, synthetic_test_size=10)
    src_vocab, tgt_vocab = (len(v) for v in task.corpus.vocabularies())
    model = task.build_model(factory("gru", hidden=64, bidirectional=False))
    counts = {name: count_parameters(part) for name, part in task.parameter_groups(model).items()}
    assert counts == gru_bahdanau_groups(src_vocab, tgt_vocab, hidden=64, embedding=64)


# --- end to end ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_short_synthetic_run_translates_dates(workdir):
    """GRU + Bahdanau attention learns the date task to high exact match in a few hundred steps on a CPU
    (measured: 250 steps, 15 s of training, test BLEU 99.6, exact match 0.98). One thread: on a
    shared, loaded CPU torch's default two threads ran this same run more than 30x slower."""
    proc = run_cli(["task=translation", "cell=gru", "cell.hidden_size=64", "task.synthetic_val_size=200",
                    "task.synthetic_test_size=200", "task.beam_size=2", "trainer.max_steps=250",
                    "trainer.val_check_interval=125", "trainer.stop_when_solved=true", "trainer.progress_bar=none",
                    "trainer.threads=1", "diagnostics=true"],
                   workdir, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (record,) = summaries(workdir / "results")
    # The record counts the whole model and each part (encoder, decoder, attention ...), both stacks'
    # cells and states: here a one-layer GRU of 64 each way, so 64 + 64 floats of state.
    vocab_sizes = record["artifacts"]["vocab_sizes"]
    groups = gru_bahdanau_groups(vocab_sizes["source"], vocab_sizes["target"], hidden=64, embedding=64)
    assert record["param_groups"] == groups and record["params"] == sum(groups.values())
    assert record["cell_params"] == groups["encoder"] + groups["decoder"] and record["state_size"] == 64 + 64
    test = record["metrics"]["test"]
    assert test["exact_match"] >= 0.8 and test["bleu"] >= 85, test
    assert record["artifacts"]["bleu_signature"].startswith("nrefs:1|case:lc|eff:no|tok:13a")
    assert record["artifacts"]["bleu_by_source_length"] and record["artifacts"]["attention_maps"] == "attention"
    run_dir = Path(record["run_dir"])
    if not run_dir.is_absolute():
        run_dir = workdir / run_dir
    maps = json.loads((run_dir / "attention" / "attention.json").read_text())
    assert len(maps["sentences"]) == 4 and (run_dir / "attention" / "val_0.png").stat().st_size > 1000
    assert json.loads((run_dir / "vocab.json").read_text())["target"][:4] == list(parallel_data.SPECIALS)
    # diagnostics=true works after a translation run: the encoder's gradients through time.
    diagnostics = json.loads((run_dir / record["diagnostics"]).read_text())
    assert diagnostics["grad_norm"] and all(g > 0 for g in diagnostics["grad_norm"])
    assert diagnostics["retention"]["gate"] == "l0.fwd.z"


@pytest.mark.slow
def test_cli_refuses_a_bidirectional_decoder(workdir):
    proc = run_cli(["task=translation", "task.decoder_bidirectional=true"], workdir)
    assert proc.returncode == 2 and "task.decoder_bidirectional" in proc.stderr
    assert not summaries(workdir / "results")  # refused before any run record was written
