"""Bad input at the command line, in-process: every bad override ends in exit code 2 and
one ``rnnbench: error:`` line naming the key, before anything is trained or written.

``rnnbench.run.run_job`` is replaced by its validation (``build_experiment``), so a
config that validation wrongly accepts shows up as exit code 1 (Hydra reporting the
``Accepted`` exception), not as a training run.
"""

from __future__ import annotations

import string
import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

import rnnbench.run
from rnnbench import cli, config, files, value_types
from rnnbench.errors import ConfigError


class Accepted(Exception):
    """Validation let a config through."""


def validate_only(cfg, run_dir, presets=None):
    config = OmegaConf.to_container(cfg, resolve=True)
    config.pop("hydra", None)
    rnnbench.run.build_experiment(config)
    raise Accepted(str(run_dir))


@pytest.fixture
def cli_error(tmp_path, monkeypatch, capsys):
    """``cli_error(args) -> (exit code, stderr)`` for ``rnnbench ARGS`` run in-process."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RNNBENCH_RESULTS_DIR", raising=False)
    monkeypatch.setattr(rnnbench.run, "run_job", validate_only)

    def run(args: list[str]) -> tuple[int, str]:
        capsys.readouterr()
        try:
            cli.main(["trainer.progress_bar=none", *args])
            code = 0
        except SystemExit as exc:
            code = exc.code
        return code, capsys.readouterr().err

    return run


def assert_clean_error(code: int, err: str, args) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (args, err[-2000:])
    assert "Traceback" not in err, (args, err[-2000:])
    errors = [line for line in lines if line.startswith("rnnbench: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], (args, err)
    return errors[0]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["task.seq_len=abc"], "task.seq_len='abc' is invalid: expected an integer."),
        (["cell.hidden_size=0"], "cell.hidden_size=0 is invalid: expected an integer >= 1."),
        (["cell=lstm", "cell.forget_bias=high"], "cell.forget_bias='high' is invalid: expected a number."),
        (["cell.dropout=-0.1"], "cell.dropout=-0.1 is invalid: expected a number in [0, 1)."),
        (["trainer.deterministic=maybe"], "trainer.deterministic='maybe' is invalid: expected true or false."),
        (["trainer.precision=8"], "trainer.precision=8 is invalid"),
        (["trainer.strategy=ddp_spawn"], "trainer.strategy='ddp_spawn' is invalid"),
        (["trainer.devices=2"], "trainer.devices=2 with trainer.strategy=auto is not supported"),
        (["trainer=ddp_cpu", "trainer.devices=1000"], "trainer.devices=1000 is invalid: expected at most the"),
        (["trainer.num_nodes=2"], "trainer.num_nodes=2 needs a cluster launcher"),
        (["optim.betas=[0.9]"], "optim.betas=[0.9] is invalid: expected two numbers in [0, 1)"),
        (["optim.warmup_steps=-1"], "optim.warmup_steps=-1 is invalid: expected an integer >= 0."),
        (["optim.schedule=plateau", "optim.warmup_steps=10"],
         "optim.warmup_steps=10 is invalid: expected 0 with optim.schedule=plateau"),
        (["+optim.nesterov=true"], "unknown optim key(s) nesterov"),
        (["+model.depth=3"], "unknown model key(s) depth"),
        (["+colour=blue"], "unknown top-level key(s) colour"),
        (["colour=blue"], "Could not override 'colour'. To append to your config use +colour=blue"),
        (["task.seq_len=[1"], "cannot be composed into a config: no viable alternative at input '[1'"),
        (["seed=${nowhere}"], "Interpolation key 'nowhere' not found"),
        (["model.param_budget=10"], "model.param_budget=10 is too small"),
        (["resume=maybe"], "resume='maybe' is invalid: expected true or false."),
        (["~trainer.max_steps"], "missing config key(s) trainer.max_steps"),
    ],
)
def test_bad_override_gives_one_clear_line(cli_error, tmp_path, args, expected):
    code, err = cli_error(args)
    line = assert_clean_error(code, err, args)
    assert expected in line
    assert not list(tmp_path.rglob("summary.json"))


def test_a_valid_config_passes_validation(cli_error):
    code, err = cli_error(["cell=lstm", "task=copy", "task.seq_len=20", "optim=sgd"])
    assert code == 1 and "Accepted" in err  # reached "training": validation accepted it


def test_results_dir_inside_a_file_is_refused(cli_error, tmp_path):
    # chmod does not stop root; a path under a regular file fails for everyone.
    (tmp_path / "a_file").write_text("not a folder")
    code, err = cli_error([f"results_dir={tmp_path / 'a_file' / 'results'}"])
    line = assert_clean_error(code, err, "results_dir")
    assert "is not writable (Not a directory)" in line


def test_full_disk_is_refused_before_the_run(tmp_path, monkeypatch):
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(files.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 2**20, 2**20))
    with pytest.raises(ConfigError, match=r"has only 1.0 MiB free; a run needs at least 64 MiB"):
        files.check_results_dir(tmp_path)


def test_type_descriptions():
    trainer, optim = typing.get_type_hints(config.TrainerConfig), typing.get_type_hints(config.OptimConfig)
    assert value_types.describe(trainer["threads"]) == "null or an integer"
    assert value_types.matches(3, float) and not value_types.matches(True, int) and not value_types.matches("3", int)
    assert value_types.matches(None, optim["grad_clip"]) and not value_types.matches([0.9, "x"], optim["betas"])


# --- property-based: random bad overrides --------------------------------------------------

INT_KEYS = ["task.seq_len", "task.batch_size", "task.val_size", "task.test_size", "cell.hidden_size",
            "cell.num_layers", "trainer.max_steps", "trainer.val_check_interval", "trainer.log_every_n_steps",
            "seed", "optim.warmup_steps"]
POSITIVE_NUMBER_KEYS = ["optim.lr", "optim.grad_clip"]
BOOL_KEYS = ["trainer.deterministic", "trainer.checkpoint", "trainer.stop_when_solved", "cell.bias",
             "cell.bidirectional", "resume", "force"]
CHOICE_KEYS = ["trainer.accelerator", "trainer.progress_bar", "trainer.strategy", "optim.schedule", "optim.name",
               "trainer.precision"]
GROUPS = ["cell", "task", "trainer", "optim", "model"]
# Words Hydra's grammar turns into something else (booleans, null, special floats), and
# every valid choice of the CHOICE_KEYS.
SPECIAL = {"true", "false", "null", "nan", "inf", "none", "auto", *config.ACCELERATORS, *config.STRATEGIES,
           *config.PRECISIONS, "16", "32", "64", "rich", "tqdm", "constant", "cosine", "step", "plateau", "adam", "rmsprop",
           "sgd"}
VALID_TOP_LEVEL_INTS = {"seed", "data_seed", "init_seed"}

words = st.text(string.ascii_letters, min_size=1, max_size=8).filter(lambda w: w.lower() not in SPECIAL)
idents = st.from_regex(r"[a-z][a-z0-9_]{0,9}", fullmatch=True).filter(lambda w: w not in SPECIAL)
bad_ints = st.one_of(st.integers(max_value=-1).map(str), words,
                     st.floats(0.01, 1e6, allow_nan=False).filter(lambda f: not f.is_integer()).map(repr))
bad_positive = st.one_of(st.floats(-1e6, 0.0, allow_nan=False).map(repr), words)
bad_bools = st.one_of(st.integers(-5, 5).map(str), words)
bad_choices = st.one_of(words, st.integers(-100, 100).filter(lambda i: i not in (16, 32, 64)).map(str))

bad_override = st.one_of(
    st.tuples(st.sampled_from(INT_KEYS), bad_ints),
    st.tuples(st.sampled_from(POSITIVE_NUMBER_KEYS), bad_positive),
    st.tuples(st.sampled_from(["cell.dropout"]), st.one_of(st.floats(1.0, 1e6).map(repr),
                                                           st.floats(-1e6, -1e-6).map(repr), words)),
    st.tuples(st.sampled_from(BOOL_KEYS), bad_bools),
    st.tuples(st.sampled_from(CHOICE_KEYS), bad_choices),
    st.tuples(st.sampled_from([f"+{g}." for g in GROUPS] + ["+", ""]).flatmap(
        lambda prefix: idents.map(lambda name: prefix + name)).filter(lambda key: key not in VALID_TOP_LEVEL_INTS),
        st.integers(0, 9).map(str)),
).map(lambda kv: f"{kv[0]}={kv[1]}")


@pytest.mark.slow  # about 1 s per example on a busy 2-core machine
@settings(max_examples=15, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cell=st.sampled_from(["gru", "lstm", "rnn", "indrnn", "sru", "stacked_gru"]),
       task=st.sampled_from(["adding", "copy"]), override=bad_override)
def test_random_bad_overrides_give_a_clean_error(cli_error, cell, task, override):
    code, err = cli_error([f"cell={cell}", f"task={task}", override])
    line = assert_clean_error(code, err, override)
    key = override.split("=")[0].lstrip("+")
    assert key.split(".")[-1] in line, (override, line)
