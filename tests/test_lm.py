"""Language modelling: corpora (counts, PTB rules, checksummed downloads), the BPTT
pipeline (windows, carried and detached state, DDP split, resume), metrics, the
model, the step schedule, and end-to-end runs and generation through the CLI."""

import inspect
import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from rnnbench import corpora
from rnnbench.cells.gru import GRU
from rnnbench.corpora import DATASETS, EOS, UNK, TextVocabulary, load_corpus
from rnnbench.download import DataError, sha256_of
from rnnbench.errors import ConfigError
from rnnbench.lit import build_optimizer
from rnnbench.registry import get_task
from rnnbench import config as config_schema
from rnnbench.experiment import check_plugin_options, load_run
from rnnbench.stack import CellStack
from rnnbench.bptt import Windows, batchify, fixed_windows, variable_windows
from rnnbench.tasks.lm import LMTask
from rnnbench.task import seeded_generator

from helpers.cli import compose_config, run_cli, summaries
from helpers.data import shared_data

REPO = Path(__file__).resolve().parents[1]


DATA = shared_data("ptb")
needs_data = pytest.mark.skipif(DATA is None, reason="shared corpora not found (set RNNBENCH_DATA_DIR or put "
                                                     "them in ../shared/data)")


@pytest.fixture
def text_file(tmp_path) -> Path:
    """A small user corpus (word and char level)."""
    lines = [f"the cat number {i % 7} sat on the mat {i % 3}" for i in range(300)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def make_stack_factory(hidden_size=16, num_layers=1, **options):
    return lambda input_size: CellStack(GRU, input_size, hidden_size, num_layers=num_layers, **options)


# --- config -----------------------------------------------------------------------------------
def test_registered_and_yaml_lists_every_constructor_kwarg_with_its_default():
    assert get_task("lm") is LMTask and LMTask.causal
    cfg = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "task" / "lm.yaml"))
    assert cfg.pop("name") == "lm"
    defaults = {k: p.default for k, p in inspect.signature(LMTask.__init__).parameters.items() if k != "self"}
    defaults["split"] = list(defaults["split"])
    assert cfg == defaults


@pytest.mark.parametrize("options, message", [
    (dict(dataset="ptb"), "task.dataset='ptb' is invalid"),
    (dict(dataset="ptb_word", level="char"), "task.level='char' is invalid"),
    (dict(dataset="text"), "task.files=None is invalid"),
    (dict(dataset="demo", files=["a.txt"]), "null unless task.dataset=text"),
    (dict(split=[0.5, 0.5, 0.5]), "task.split"),
    (dict(bptt=0), "task.bptt=0"),
    (dict(dropout=1.0), "task.dropout=1.0"),
])
def test_bad_options_are_refused_before_reading_anything(options, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        LMTask(**options)


def test_metric_is_bpc_at_char_level_and_ppl_at_word_level():
    assert LMTask(dataset="demo").metric == "bpc" and LMTask(dataset="demo", level="word").metric == "ppl"
    assert LMTask.metric == "ppl"  # the instance choice does not leak into the class


# --- corpora on the shared files ------------------------------------------------------------
@needs_data
def test_ptb_word_token_counts_include_eos():
    corpus = load_corpus("ptb_word", data_dir=str(DATA))
    assert (corpus.train.numel(), corpus.valid.numel(), corpus.test.numel()) == (929_589, 73_760, 82_430)
    assert len(corpus.vocab) == 10_000 and EOS in corpus.vocab.index and UNK in corpus.vocab.index


@needs_data
def test_tinyshakespeare_has_65_distinct_characters():
    corpus = load_corpus("tinyshakespeare", data_dir=str(DATA))
    text = (DATA / "tinyshakespeare" / "input.txt").read_text()
    assert len(set(text)) == 65 and len(corpus.vocab) == 65 and UNK not in corpus.vocab.index
    assert corpus.vocab.decode(torch.cat([corpus.train, corpus.valid, corpus.test]).tolist()) == text
    # 90 / 5 / 5 by characters
    assert corpus.train.numel() == int(len(text) * 0.9) and corpus.valid.numel() == int(len(text) * 0.05)


@needs_data
@pytest.mark.parametrize("split", ["valid", "test", "train"])
def test_ptb_char_files_follow_the_rule_from_the_word_files(split):
    """The published char files are the word files with every character separated by a
    space, `_` between words, and each line ending in " \\n " (shared data README)."""
    words = (DATA / "ptb" / f"ptb.{split}.txt").read_text()
    rule = "".join(" ".join("_".join(line.split())) + " \n " for line in words.splitlines())
    assert (DATA / "ptb" / f"ptb.char.{split}.txt").read_text() == rule


@needs_data
def test_ptb_char_loader_reads_characters_underscores_and_eos():
    corpus = load_corpus("ptb_char", data_dir=str(DATA))
    assert len(corpus.vocab) == 50  # 49 symbols and <eos>
    for split in ("valid", "test"):
        words = (DATA / "ptb" / f"ptb.{split}.txt").read_text()
        expected = [t for line in words.splitlines() for t in [*"_".join(line.split()), EOS]]
        # The files end in " \n ": the last, blank line gets its <eos> too, as in the
        # reference readers (pytorch/examples, AWD-LSTM's pennchar).
        expected.append(EOS)
        assert [corpus.vocab.tokens[i] for i in corpus.split(split).tolist()] == expected


@needs_data
def test_wikitext2_valid_and_test_counts():
    if not (DATA / "wikitext-2" / "train.txt").is_file():
        pytest.skip("WikiText-2 train.txt is not in the shared data (not obtainable offline); counting valid/test only")
    corpus = load_corpus("wikitext2", data_dir=str(DATA))
    assert (corpus.valid.numel(), corpus.test.numel()) == (217_646, 245_569)


@needs_data
def test_wikitext2_valid_and_test_files_read_by_the_line_rule():
    # pytorch/examples' counts (words + <eos> per line): valid 217,646, test 245,569.
    for split, count in (("valid", 217_646), ("test", 245_569)):
        assert len(corpora.line_tokens((DATA / "wikitext-2" / f"{split}.txt").read_text())) == count


@needs_data
def test_checksums_in_the_corpus_table_match_the_published_files():
    checked = 0
    for dataset in DATASETS.values():
        for f in dataset.files.values():
            if f.sha256 is not None and (DATA / f.path).is_file():
                assert sha256_of(DATA / f.path) == f.sha256, f.path
                checked += 1
    assert checked == 10  # ptb (6), wikitext-2 valid and test, tinyshakespeare, timemachine
    assert DATASETS["wikitext2"].files["train"].url.endswith("wikitext-2/train.txt")


@needs_data
def test_corpus_table_downloads_verify_checksums(tmp_path, monkeypatch):
    """Through a file:// URL (no network): a good file lands in the cache; a tampered
    one is refused, deleted, and the error says why."""
    monkeypatch.delenv("RNNBENCH_DATA_DIR", raising=False)
    monkeypatch.setenv("RNNBENCH_CACHE_DIR", str(tmp_path / "cache"))
    original = DATASETS["timemachine"].files["all"]
    local = corpora.CorpusFile(original.path, (DATA / original.path).as_uri(), original.sha256)
    monkeypatch.setitem(DATASETS, "timemachine", corpora.CorpusSpec({"all": local}, ("char", "word"), normalise="d2l"))
    corpus = load_corpus("timemachine")
    assert (tmp_path / "cache" / original.path).is_file() and len(corpus.vocab) == 27
    tampered = tmp_path / "tampered.txt"
    tampered.write_text((DATA / original.path).read_text() + "x")
    monkeypatch.setenv("RNNBENCH_CACHE_DIR", str(tmp_path / "cache2"))
    bad = corpora.CorpusFile(original.path, tampered.as_uri(), original.sha256)
    monkeypatch.setitem(DATASETS, "timemachine", corpora.CorpusSpec({"all": bad}, ("char", "word"), normalise="d2l"))
    with pytest.raises(DataError, match="SHA-256"):
        load_corpus("timemachine")
    assert not (tmp_path / "cache2" / original.path).exists()


def test_missing_corpus_offline_names_the_file_and_the_option(tmp_path, monkeypatch):
    monkeypatch.delenv("RNNBENCH_DATA_DIR", raising=False)
    monkeypatch.setenv("RNNBENCH_CACHE_DIR", str(tmp_path / "cache"))
    spec = DATASETS["ptb_word"]
    unreachable = {k: corpora.CorpusFile(f.path, (tmp_path / "nowhere" / k).as_uri(), f.sha256)
                   for k, f in spec.files.items()}
    monkeypatch.setitem(DATASETS, "ptb_word", corpora.CorpusSpec(unreachable, spec.levels, lines=True))
    with pytest.raises(DataError, match=r"ptb/ptb\.train\.txt.*task\.data_dir"):
        load_corpus("ptb_word", data_dir=str(tmp_path / "empty"))


# --- user text and the demo corpus ----------------------------------------------------------
def test_user_text_one_file_cut_by_fractions_or_three_files(text_file, tmp_path):
    words = load_corpus("text", "word", files=[str(text_file)])
    n = 300 * 10  # 9 words + <eos> per line
    assert words.train.numel() == int(n * 0.9) and words.valid.numel() == int(n * 0.05)
    assert words.vocab.tokens[:3] == ["the", "cat", "number"] and UNK not in words.vocab.index
    parts = []
    for name, text in (("a", "x y z\n"), ("b", "x q\n"), ("c", "y\n")):
        parts.append(tmp_path / f"{name}.txt")
        parts[-1].write_text(text)
    three = load_corpus("text", "word", files=[str(p) for p in parts])
    assert three.vocab.tokens == ["x", "y", "z", EOS, UNK]  # q is only in valid: <unk>
    assert three.valid.tolist() == [0, 4, 3]


def test_vocabulary_cap_and_min_freq_map_the_rest_to_unk(text_file):
    capped = load_corpus("text", "word", files=[str(text_file)], max_vocab=5)
    assert len(capped.vocab) == 5 and capped.vocab.tokens[-1] == UNK
    # "the" (600) and, among the tokens seen 300 times, the first to appear.
    assert capped.vocab.tokens == ["the", "cat", "number", "sat", UNK]
    rare = load_corpus("text", "char", files=[str(text_file)], min_freq=10_000)
    assert rare.vocab.tokens == [UNK]


def test_demo_corpus_needs_no_download():
    corpus = load_corpus("demo", "char")
    assert corpus.train.numel() > 100_000 and len(corpus.vocab) > 50


def test_ptb_char_prompt_and_text_round_trip():
    vocab = TextVocabulary(["a", "b", "_", EOS], "char", "", {"_": " ", EOS: "\n"})
    assert vocab.tokenize("ab a\n") == ["a", "b", "_", "a", EOS]
    assert vocab.decode(vocab.encode(vocab.tokenize("ab a\n")).tolist()) == "ab a\n"


# --- pipeline -------------------------------------------------------------------------------
def test_batchify_and_fixed_windows_cover_every_target_once():
    rows = batchify(torch.arange(103), 4)
    assert rows.shape == (4, 25) and rows[1, 0] == 25  # contiguous streams, tail of 3 dropped
    windows = fixed_windows(25, 7)
    assert windows == [(0, 7), (7, 7), (14, 7), (21, 3)]
    loader = Windows(rows, lambda epoch: windows)
    batches = list(loader)
    assert [b[2] for b in batches] == [True, False, False, False]
    targets = torch.cat([b[1] for b in batches], dim=1)
    inputs = torch.cat([b[0] for b in batches], dim=1)
    assert torch.equal(targets, rows[:, 1:]) and torch.equal(inputs, rows[:, :-1])


def test_full_windows_only_leave_out_the_short_last_window(text_file):
    assert fixed_windows(25, 7, full_only=True) == [(0, 7), (7, 7), (14, 7)]
    assert fixed_windows(22, 7, full_only=True) == fixed_windows(22, 7) == [(0, 7), (7, 7), (14, 7)]
    # Zaremba et al.'s PTB epoch: 46,479 tokens per stream, floor(46,479 / 20) = 2,323 windows of 20.
    windows = fixed_windows(929_589 // 20, 20, full_only=True)
    assert len(windows) == 2323 and {n for _, n in windows} == {20}
    drawn = variable_windows(500, 35, seeded_generator(0, 1, 0), full_only=True)
    every = variable_windows(500, 35, seeded_generator(0, 1, 0))
    assert drawn == every[:len(drawn)] and len(drawn) in (len(every), len(every) - 1)
    task = LMTask(dataset="text", level="char", files=[str(text_file)], bptt=9, batch_size=4, drop_last_window=True)
    batches = list(task.train_dataloader(0))
    assert {b[0].shape[1] for b in batches} == {9} and len(batches) == (task._rows("train", 4).shape[1] - 1) // 9


def test_variable_windows_are_a_function_of_seed_and_epoch():
    length, bptt = 5000, 35
    a = variable_windows(length, bptt, seeded_generator(0, 1, 0))
    assert a == variable_windows(length, bptt, seeded_generator(0, 1, 0))
    assert a != variable_windows(length, bptt, seeded_generator(0, 1, 1))
    starts = [s for s, _ in a]
    assert starts[0] == 0 and all(s + n == t for (s, n), t in zip(a, starts[1:]))  # contiguous
    assert a[-1][0] + a[-1][1] == length - 1 and min(n for _, n in a[:-1]) >= 5
    assert 25 < sum(n for _, n in a[:-1]) / (len(a) - 1) < 40  # mostly ~35, sometimes ~17


def test_training_streams_resume_and_split_by_rank(text_file):
    task = LMTask(dataset="text", level="char", files=[str(text_file)], bptt=9, batch_size=4, variable_bptt=True)
    full = list(task.train_dataloader(data_seed=3))
    epoch0 = len(full)
    loader = task.train_dataloader(data_seed=3)
    first, second = list(loader), list(loader)  # Lightning re-iterates the loader each epoch
    assert [b[0].shape for b in first] == [b[0].shape for b in full]
    assert [b[0].shape for b in first] != [b[0].shape for b in second]  # a new epoch, new lengths
    # Resuming at step k (in the second epoch) gives exactly the batches that followed.
    k = epoch0 + 5
    resumed = next(iter(task.train_dataloader(data_seed=3, start_step=k)))
    assert torch.equal(resumed[0], second[5][0]) and not resumed[2]
    # Two ranks read disjoint halves of twice the streams.
    rank_rows = [next(iter(task.train_dataloader(0, rank=r, world_size=2)))[0] for r in (0, 1)]
    both = task._rows("train", 8)
    assert torch.equal(torch.cat(rank_rows), both[:, :rank_rows[0].shape[1]])


def test_state_is_carried_across_windows_detached_and_equals_one_long_window(text_file):
    task = LMTask(dataset="text", level="char", files=[str(text_file)], bptt=6, batch_size=3, dropout=0.0)
    torch.manual_seed(0)
    model = task.build_model(make_stack_factory(num_layers=2))
    rows = task._rows("train", 3)
    w1 = (rows[:, 0:6], rows[:, 1:7], True)
    w2 = (rows[:, 6:12], rows[:, 7:13], False)
    loss1, _ = task.loss_and_metrics(model, w1)
    loss2, _ = task.loss_and_metrics(model, w2)
    for leaf in [t for layer in task._states[True] for t in (layer if isinstance(layer, tuple) else (layer,))]:
        assert not leaf.requires_grad and leaf.grad_fn is None
    logits, _ = model(rows[:, 0:12])
    expected = nn.functional.cross_entropy(logits[:, 6:].flatten(0, 1), rows[:, 7:13].flatten())
    torch.testing.assert_close(loss2, expected)
    # Detached: the second window's gradient does not reach the first window's inputs.
    loss2.backward()
    grad_truncated = model.embedding.weight.grad.clone()
    model.zero_grad()
    nn.functional.cross_entropy(logits[:, 6:].flatten(0, 1), rows[:, 7:13].flatten()).backward()
    assert not torch.allclose(grad_truncated, model.embedding.weight.grad)
    # A first window resets the state; training and evaluation states are kept apart.
    model.eval()
    eval_loss, _ = task.loss_and_metrics(model, w1)
    torch.testing.assert_close(eval_loss, loss1)
    assert task._states[True] is not task._states[False]


@pytest.mark.parametrize("level", ["word", "char"])
def test_uniform_model_scores_the_vocabulary_size(text_file, level):
    task = LMTask(dataset="text", level=level, files=[str(text_file)], eval_batch_size=3, bptt=5)
    model = task.build_model(make_stack_factory())
    with torch.no_grad():
        model.decoder.weight.zero_()
        model.decoder.bias.zero_()
    model.eval()
    total = weight = 0.0
    for batch in task.val_dataloader(0):
        with torch.no_grad():
            loss, _ = task.loss_and_metrics(model, batch)
        total += float(loss) * task.metric_weight(batch)
        weight += task.metric_weight(batch)
    assert weight == task.key_parameters()["valid_targets"]
    result = task.eval_epoch_end("val", {"loss": total / weight})
    V = len(task.vocab)
    expected = {"ppl": V} if level == "word" else {"bpc": math.log2(V)}
    assert result == pytest.approx(expected)
    assert task.baseline()[f"uniform_{task.metric}"] == pytest.approx(expected[task.metric])


def test_tied_weights_share_the_matrix_and_mismatched_sizes_are_refused(text_file):
    task = LMTask(dataset="text", files=[str(text_file)], tie_weights=True, embedding_size=16)
    model = task.build_model(make_stack_factory(hidden_size=16))
    assert model.decoder.weight is model.embedding.weight
    task = LMTask(dataset="text", files=[str(text_file)], tie_weights=True, embedding_size=20)
    with pytest.raises(ConfigError, match=r"task\.embedding_size \(20\).*output size \(16"):
        task.build_model(make_stack_factory(hidden_size=16))


def test_init_cells_draws_every_cell_parameter_in_range(text_file):
    task = LMTask(dataset="text", files=[str(text_file)], init_cells=True, init_range=0.05)
    model = task.build_model(make_stack_factory(hidden_size=64))
    for parameter in model.parameters():
        assert parameter.abs().max() <= 0.05
    assert not model.decoder.bias.any()


@pytest.mark.parametrize("uniform_decoder_bias", [False, True])
def test_uniform_init_of_every_parameter_includes_the_decoder_bias_on_request(text_file, uniform_decoder_bias):
    task = LMTask(dataset="text", files=[str(text_file)], init_cells=True, init_range=0.05,
                  uniform_decoder_bias=uniform_decoder_bias)
    torch.manual_seed(0)
    model = task.build_model(make_stack_factory(hidden_size=64))
    assert all(p.abs().max() <= 0.05 for p in model.parameters())
    bias = model.decoder.bias
    if uniform_decoder_bias:  # Zaremba et al.'s main.lua: every parameter ~ U(-0.05, 0.05) here
        assert bias.abs().min() > 0 and bias.min() < -0.02 and bias.max() > 0.02
    else:  # pytorch/examples: 0
        assert not bias.any()


def test_step_schedule_first_decay_step():
    def lrs(**optim):
        params = [nn.Parameter(torch.zeros(1))]
        built = build_optimizer(params, {"name": "sgd", "lr": 1.0, "schedule": "step", **optim}, 100)
        opt, sched = built["optimizer"], built["lr_scheduler"]["scheduler"]
        out = []
        for _ in range(60):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out
    zaremba = lrs(step_size=10, first_decay_step=40, gamma=0.5)
    assert zaremba[39] == 1.0 and zaremba[40] == 0.5 and zaremba[49] == 0.5 and zaremba[50] == 0.25
    default = lrs(step_size=10, gamma=0.5)
    assert default[9] == 1.0 and default[10] == 0.5 and default[20] == 0.25


# --- end to end -----------------------------------------------------------------------------------
LM_TINY = ["task=lm", "trainer.progress_bar=none", "trainer.threads=1", "task.bptt=35", "task.batch_size=32", "task.embedding_size=16",
           "cell.hidden_size=48", "task.dropout=0.0", "optim.lr=0.01", "task.sample_length=40"]


@pytest.mark.slow
def test_bidirectional_cell_is_refused_for_language_modelling(workdir):
    proc = run_cli(["task=lm", "cell=bigru", "trainer.progress_bar=none"], workdir)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "cell.bidirectional=true is not allowed with task 'lm'" in proc.stderr
    assert "Traceback" not in proc.stderr and not list(workdir.rglob("summary.json"))


@needs_data
@pytest.mark.slow
def test_time_machine_run_beats_the_unigram_baseline_and_generates(workdir):
    env = {"RNNBENCH_DATA_DIR": str(DATA)}
    proc = run_cli([*LM_TINY, "task.dataset=timemachine", "trainer.max_steps=60", "trainer.val_check_interval=30",
                    "diagnostics=true"], workdir, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (record,) = summaries(workdir / "results")
    assert record["status"] == "finished" and record["metric"] == "bpc"
    best, baseline = record["metrics"]["val_best"]["bpc"], record["baseline"]["bpc"]
    assert best < baseline - 0.5, (best, baseline)  # unigram: ~4.08 bpc
    assert record["metrics"]["test"]["bpc"] == pytest.approx(record["metrics"]["test"]["loss"] / math.log(2))
    assert record["test_checkpoint"].startswith("best") and record["task_params"]["vocab_size"] == 27
    run_dir = Path(record["run_dir"])
    vocab = json.loads((run_dir / "vocab.json").read_text())
    assert len(vocab["tokens"]) == 27 and vocab["level"] == "char"
    assert len((run_dir / "sample.txt").read_text().strip()) >= 40
    diagnostics = json.loads((run_dir / record["diagnostics"]).read_text())  # diagnostics=true works for lm
    assert len(diagnostics["grad_norm"]) == 35 and all(g > 0 for g in diagnostics["grad_norm"])
    # Generation rebuilds the model from config.yaml + vocab.json, without the corpus.
    gen = run_cli(["generate", str(run_dir), "--prompt", "the time ", "--length", "30", "--seed", "1"], workdir,
                  env={"RNNBENCH_DATA_DIR": str(workdir / "no-data")})
    assert gen.returncode == 0, gen.stderr[-3000:]
    text = gen.stdout.rstrip("\n")
    assert text.startswith("the time ") and len(text) == len("the time ") + 30
    assert set(text) <= set(vocab["tokens"])
    experiment = load_run(run_dir)  # the same in-process, seeded as the CLI's --seed
    assert experiment.task.generate(experiment.model, "the time ", 30, 1.0, seeded_generator(1)) == text
    with pytest.raises(ConfigError, match="has no config.yaml"):
        load_run(workdir)


# --- presets -----------------------------------------------------------------------------------
@pytest.mark.parametrize("preset, train_tokens", [
    ("lm_ptb_small", None), ("lm_ptb_char", 5_017_483), ("lm_tinyshakespeare", None), ("lm_quick", None),
])
def test_lm_presets_compose_validate_and_count_epochs_right(preset, train_tokens):
    """Each preset is a valid config (cell=gru too), and its epoch arithmetic (steps per
    epoch in step_size / val_check_interval) matches the corpus."""
    for cell in ("lstm", "gru"):
        config = compose_config([f"experiment={preset}", f"cell={cell}"])
        config_schema.validate(config)
        check_plugin_options(config)
        task = LMTask(**{k: v for k, v in config["task"].items() if k != "name"})
    epoch = config["trainer"]["val_check_interval"]
    assert config["trainer"]["max_steps"] % epoch == 0
    if config["optim"]["schedule"] == "step":
        assert config["optim"]["step_size"] == epoch and config["optim"]["first_decay_step"] % epoch == 0
    if train_tokens is not None:
        assert len(fixed_windows(train_tokens // task.batch_size, task.bptt, full_only=task.drop_last_window)) == epoch
    elif DATA is not None:
        task.data_dir = str(DATA)
        assert len(task.train_dataloader(0)) == epoch
