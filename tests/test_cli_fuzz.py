"""Fuzzing the CLI's parse-and-check step: any value of any numeric flag of any command gives
exit 0 or one error line with exit 2, never a traceback. Nothing trains: ``cli.run`` is
replaced by a recorder (``transfer``, which is arithmetic only, runs for real)."""

import contextlib
import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ridgeline import cli

HPARAMS = ["--lr", "--momentum", "--weight-decay", "--batch-size", "--epochs", "--warmup-epochs",
           "--beta1", "--beta2"]
COMMANDS = {  # command line before the flags, and its numeric flags
    "train": (["train", "--preset", "tiny"], [*HPARAMS, "--seed"]),
    "diagnose": (["diagnose", "--preset", "tiny"], [*HPARAMS, "--seed", "--every", "--tol"]),
    "sweep": (["sweep", "--slice", "lr-wd", "--preset", "tiny"],
              [*HPARAMS, "--steps", "--span", "--seeds", "--workers", "--stale-after"]),
    "plot": (["plot"], ["--floor"]),
    "tune": (["tune", "--preset", "tiny"],
             [*HPARAMS, "--min-improvement", "--replicates", "--max-evals", "--seed", "--workers",
              "--floor"]),
    "transfer": (["transfer", "--preset", "tiny"],
                 ["--lr", "--momentum", "--weight-decay", "--batch-size", "--beta1", "--from"]),
    "transfer-adamw": (["transfer", "--preset", "cpu-mini-adamw"],
                       ["--lr", "--weight-decay", "--batch-size", "--beta1", "--from"]),
    "train-adamw": (["train", "--preset", "tiny", "--optimizer", "adamw"], HPARAMS),
    "reproduce": (["reproduce", "--preset", "tiny"], ["--workers", "--budget"]),
}
SPECIAL = ["0", "-0", "1", "-1", "2", "0.5", "-0.5", "inf", "-inf", "+inf", "nan", "-nan", "1e400",
           "-1e400", "1e-400", "1e308", "-1e-3", "99999999999999999999999", "abc", "", "1_0",
           "0x10", " 3 ", "1e3", "Infinity", "-.5", "5."]
VALUE = st.one_of(
    st.sampled_from(SPECIAL),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-10**30, 10**30).map(str),
    st.text(alphabet="0123456789-+.eE_xainf ", max_size=6),
)


@st.composite
def command_lines(draw, command: str) -> list[str]:
    head, flags = COMMANDS[command]
    argv = list(head)
    for flag in draw(st.lists(st.sampled_from(flags), min_size=1, max_size=4)):
        n = draw(st.integers(1, 2)) if flag in ("--steps", "--span") else 1
        values = draw(st.lists(VALUE, min_size=n, max_size=n))
        if flag == "--from":
            name = draw(st.sampled_from(["lr", "momentum", "weight_decay", "batch_size",
                                         "beta1"]))
            values = [f"{name}={values[0]}"]
        if n == 1 and draw(st.booleans()):
            argv.append(f"{flag}={values[0]}")  # the other spelling
        else:
            argv += [flag, *values]
    return argv


@pytest.fixture
def no_runs(tmp_path, monkeypatch):
    """No command runs (but transfer), and the default output paths are in tmp_path."""
    monkeypatch.chdir(tmp_path)
    ran: list = []
    real_run = cli.run
    monkeypatch.setattr(cli, "run", lambda args: real_run(args) if args.command == "transfer"
                        else ran.append(args.command))
    return ran


def exit_and_stderr(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(argv)
    return code, err.getvalue()


@pytest.mark.parametrize("command", list(COMMANDS))
def test_numeric_flags_never_give_a_traceback(no_runs, command):
    @settings(max_examples=60, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(argv=command_lines(command))
    def check(argv):
        code, err = exit_and_stderr(argv)  # any exception but SystemExit fails the test
        assert code in (0, 2), (argv, code, err)
        if code == 2:
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("ridgeline: error: "), (argv, err)

    check()
