"""Bad input fails in one line before any work (data load, study creation); output that
cannot be written at the end of the work is saved in the temp dir, and the error says where.

Tests run as root, where permissions do not stop writes: unwritable paths are paths under a
regular file, or under /proc."""

import json
import math
import tempfile
from pathlib import Path

import pytest

import ridgeline.cifar.train as train_module
import ridgeline.landscape.plots as plots_module
import ridgeline.tuner.tune as tune_module
from ridgeline import cli
from ridgeline.cli import main
from ridgeline.tuner import descent
from tests.synthetic import fake_cifar

FAKE_TUNE = "tests.test_tune_cli:fake_objective"
FAKE_SWEEP = "tests.test_sweep:fake_objective"


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Data loading fails the test (it must not happen before the checks), the temp dir is
    tmp_path/tmp, and the fake objectives log nowhere."""
    def no_data(args):
        raise AssertionError("CIFAR-10 was loaded before the input was checked")

    monkeypatch.setattr(cli, "load_data", no_data)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    for var in ("TUNE_LOG", "TUNE_STOP_AT", "FAKE_LOG", "FAKE_FAIL_DIR", "FAKE_DIVERGE_LR",
                "FAKE_SLEEP"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def with_data(monkeypatch):
    monkeypatch.setattr(cli, "load_data", lambda args: fake_cifar(n_train=256, n_test=50))


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ridgeline: error: "), err
    return err


def unwritable(tmp_path: Path) -> list[str]:
    """A folder below a regular file, and one in /proc (no files can be made there)."""
    (tmp_path / "file.txt").write_text("")
    return [str(tmp_path / "file.txt" / "sub"), "/proc/ridgeline-test/sub"]


# ----------------------------------------------------------------------------- output paths

OUTPUTS = {  # command line and the output flag it gives BAD to
    "train --out": (["train", "--preset", "tiny", "--out", "BAD/run.json"], "--out"),
    "diagnose --plot": (["diagnose", "--preset", "tiny", "--plot", "BAD/d.png"], "--plot"),
    "diagnose --out": (["diagnose", "--preset", "tiny", "--out", "BAD/run.json"], "--out"),
    "tune --out": (["tune", "--preset", "tiny", "--max-evals", "3", "--quiet",
                    "--storage", "j.journal", "--out", "BAD"], "--out"),
    "plot --out": (["plot", "--storage", "j.journal", "--out", "BAD"], "--out"),
    "reproduce --out": (["reproduce", "--preset", "tiny", "--budget", "4", "--quiet",
                         "--storage", "j.journal", "--out", "BAD"], "--out"),
}


@pytest.mark.parametrize("case", list(OUTPUTS))
@pytest.mark.parametrize("where", [0, 1], ids=["under-a-file", "in-proc"])
def test_an_unwritable_output_fails_before_any_work(env, capsys, case, where):
    argv, flag = OUTPUTS[case]
    bad = unwritable(env)[where]
    argv = [a.replace("BAD", bad) for a in argv]
    path = next(a for a in argv if a.startswith(bad))
    assert main(argv) == 2  # no data load (env), no training, no tune
    err = one_line_error(capsys)
    assert f"{flag} {path} cannot be written: " in err and "writable folder" in err
    assert not (env / "j.journal").exists()  # no study was created


@pytest.mark.parametrize("path, why", [
    ("file.txt/run.json", "file.txt is a file, not a folder"),
    ("/proc/x/run.json", "no file can be created in /proc"),
    (".", "is a folder"),
])
def test_the_output_error_says_why(env, capsys, path, why):
    (env / "file.txt").write_text("")
    assert main(["train", "--preset", "tiny", "--out", path]) == 2
    assert why in one_line_error(capsys)


def spare_of(err: str) -> Path:
    """The fallback path that the error names."""
    path = Path(err.split("saved in ")[1].split(" instead")[0])
    assert path.is_relative_to(Path(tempfile.gettempdir()))
    return path


def test_a_train_result_that_cannot_be_written_at_the_end_is_kept(env, capsys, monkeypatch):
    """The folder of --out becomes a file during training: the accuracy is still printed and
    the RunResult is saved in the temp dir, which the error names."""
    with_data(monkeypatch)
    real_train = train_module.train

    def train_then_break_out(*args, **kwargs):
        result = real_train(*args, **kwargs)
        (env / "out").write_text("")  # where the folder of --out should be
        return result

    monkeypatch.setattr(train_module, "train", train_then_break_out)
    argv = ["train", "--preset", "tiny", "--epochs", "1", "--device", "cpu", "--quiet",
            "--out", "out/run.json"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "test accuracy" in captured.out
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "--out out/run.json could not be written" in err
    spare = spare_of(err)
    assert spare.name == "run.json"
    saved = json.loads(spare.read_text())
    assert saved["preset"] == "tiny" and saved["hparams"]["epochs"] == 1


def test_a_diagnose_figure_that_cannot_be_written_at_the_end_is_kept(env, capsys, monkeypatch):
    with_data(monkeypatch)
    real_train = train_module.train

    def train_then_break_plot(*args, **kwargs):
        result = real_train(*args, **kwargs)
        (env / "figs").write_text("")
        return result

    monkeypatch.setattr(train_module, "train", train_then_break_plot)
    argv = ["diagnose", "--preset", "tiny", "--epochs", "1", "--every", "4", "--device", "cpu",
            "--quiet", "--plot", "figs/d.png"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "equilibrium angle" in captured.out  # the report is printed
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "--plot figs/d.png could not be written" in err
    spare = spare_of(err)
    assert f"figure: {spare}" in captured.out
    assert spare.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_tune_report_that_cannot_be_written_at_the_end_is_kept(env, capsys, monkeypatch):
    real_tune = tune_module.tune_preset

    def tune_then_break_out(*args, **kwargs):
        result = real_tune(*args, **kwargs)
        (env / "tuning").write_text("")
        return result

    monkeypatch.setattr(tune_module, "tune_preset", tune_then_break_out)
    argv = ["tune", "--preset", "tiny", "--start", "bad", "--objective", FAKE_TUNE, "--quiet",
            "--max-evals", "4", "--storage", "j.journal", "--out", "tuning"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "stopped at --max-evals after 4 runs" in captured.out  # the table and summary
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "--out tuning could not be written" in err
    spare = spare_of(err)
    assert f"table: {spare / 'tune-tiny-bad.md'}" in captured.out
    assert (spare / "tune-tiny-bad.md").read_text().startswith("# tune-tiny-bad")


def test_plots_that_cannot_be_written_are_kept(env, capsys, monkeypatch):
    assert main(["sweep", "--slice", "lr-wd", "--preset", "tiny", "--steps", "3", "3", "--quiet",
                 "--objective", FAKE_SWEEP, "--storage", "j.journal"]) == 0
    real_plot_all = plots_module.plot_all

    def break_out_then_plot(storage, names, out_dir, floor):
        (env / "landscapes").write_text("")  # the folder vanished after the check
        return real_plot_all(storage, names, out_dir, floor)

    monkeypatch.setattr(plots_module, "plot_all", break_out_then_plot)
    capsys.readouterr()
    assert main(["plot", "--storage", "j.journal"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "--out landscapes could not be written" in err
    spare = spare_of(err)
    assert f"-> {spare / 'lr-wd-tiny.png'}" in captured.out
    assert (spare / "fits.json").exists()


# ----------------------------------------------------------------------------- transfer

@pytest.mark.parametrize("args, needle", [
    (["--lr", "inf"], "lr=inf is not allowed: it must be a finite number > 0"),
    (["--lr", "-inf"], "lr=-inf is not allowed: it must be a finite number > 0"),
    (["--batch-size", "1e400"], "argument --batch-size: '1e400' is out of range"),
    (["--batch-size", "inf"], "batch_size=inf is not allowed: it must be a finite number > 0"),
    (["--weight-decay", "inf"], "weight_decay=inf is not allowed: it must be a finite number"),
    (["--from", "lr=inf", "--lr", "0.1"], "lr=inf is not allowed: it must be a finite number"),
    (["--momentum", "-inf"], "momentum=-inf is not allowed: it must be finite and < 1"),
    (["--from", "momentum=-inf", "--lr", "0.1"], "momentum=-inf is not allowed"),
    (["--lr", "1", "--weight-decay", "1e308"], "weight_decay=1e+308 is too far from"),
])
def test_transfer_to_infinite_values_is_one_line(capsys, args, needle):
    assert main(["transfer", "--preset", "tiny", *args]) == 2
    assert needle in one_line_error(capsys)


# ----------------------------------------------------------------------------- tune settings

@pytest.mark.parametrize("args, needle", [
    (["--min-improvement", "nan"], "--min-improvement=nan is not allowed: it must be a finite "
                                   "number >= 0"),
    (["--min-improvement", "inf"], "--min-improvement=inf is not allowed"),
    (["--min-improvement", "-0.01"], "--min-improvement=-0.01 is not allowed"),
    (["--max-evals", "0"], "--max-evals=0 is not allowed: it must be an integer >= 1"),
    (["--max-evals", "-3"], "--max-evals=-3 is not allowed: it must be an integer >= 1"),
    (["--replicates", "0"], "--replicates=0 is not allowed: it must be an integer >= 1"),
    (["--workers", "0"], "--workers=0 is not allowed: it must be an integer >= 1"),
    (["--seed", "-1"], "--seed=-1 is not allowed"),
    (["--seed", str(2**31 - 1), "--replicates", "2"], "the seeds 2147483647..2147483648"),
    (["--floor", "nan"], "--floor=nan is not allowed: it must be a finite number > 0"),
])
@pytest.mark.parametrize("objective", [[], ["--objective", FAKE_TUNE]], ids=["train", "fake"])
def test_bad_tune_settings_fail_before_data_and_study(env, capsys, args, needle, objective):
    argv = ["tune", "--preset", "tiny", "--quiet", "--storage", "j.journal", *objective, *args]
    assert main(argv) == 2  # without --objective, no data load either (env)
    assert needle in one_line_error(capsys)
    assert not (env / "j.journal").exists()


@pytest.mark.parametrize("kwargs, needle", [
    (dict(min_improvement=math.nan), "min_improvement=nan is not allowed"),
    (dict(min_improvement=-1.0), "min_improvement=-1.0 is not allowed"),
    (dict(max_evals=0), "max_evals=0 is not allowed: it must be an integer >= 1"),
    (dict(replicates=0), "replicates=0 is not allowed"),
    (dict(seed=-2), "seed=-2 is not allowed"),
])
def test_tune_preset_checks_its_settings_before_creating_the_study(env, kwargs, needle):
    with pytest.raises(descent.TuneError, match=needle):
        tune_module.tune_preset("tiny", "bad", env / "j.journal", objective=FAKE_TUNE,
                                **kwargs)
    assert not (env / "j.journal").exists()
    with pytest.raises(descent.TuneError, match=needle):  # the engine checks them too
        tune_module.tune(lambda params, seed: 0.5, {"lr": 0.1, "momentum": 0.9,
                                                     "weight_decay": 5e-4}, **kwargs)


@pytest.mark.parametrize("command", [["sweep", "--slice", "lr-wd"], ["tune"]])
@pytest.mark.parametrize("args, needle", [
    (["--executor", "inprocess", "--workers", "2"], "the inprocess executor runs one worker"),
    (["--executor", "processes", "--ray-address", "auto"], "--ray-address needs --executor ray"),
    (["--workers", "-1"], "--workers=-1 is not allowed"),
])
def test_bad_executor_flags_fail_before_data_and_study(env, capsys, command, args, needle):
    assert main([*command, "--preset", "tiny", "--storage", "j.journal", *args]) == 2
    assert needle in one_line_error(capsys)
    assert not (env / "j.journal").exists()


# ----------------------------------------------------------------------------- numbers

@pytest.mark.parametrize("argv, needle", [
    (["train", "--momentum", "-inf"], "momentum=-inf is not allowed: it must be in [0, 1)"),
    (["train", "--lr", "-1e-3"], "lr=-0.001 is not allowed"),
    (["train", "--weight-decay", "-5e-1"], "weight_decay=-0.5 is not allowed"),
    (["train", "--warmup-epochs", "-nan"], "warmup_epochs=nan is not allowed"),
    (["tune", "--min-improvement", "-1e-3"], "--min-improvement=-0.001 is not allowed"),
    (["sweep", "--slice", "lr-wd", "--span", "-1", "2"], "--span -1.0 is not allowed"),
    (["sweep", "--slice", "lr-wd", "--stale-after", "-inf"], "--stale-after=-inf is not"),
    (["transfer", "--lr", "-1e-3"], "lr=-0.001 is not allowed"),
    (["train", "--lr", "abc"], "argument --lr: 'abc' is not a number"),
    (["train", "--epochs", "2.5"], "argument --epochs: '2.5' is not a whole number"),
    (["train", "--lr"], "argument --lr: expected one argument"),
])
def test_negative_and_bad_numbers_reach_the_checks_in_one_line(env, capsys, argv, needle):
    assert main([*argv[:1], "--preset", "tiny", *argv[1:]]) == 2
    assert needle in one_line_error(capsys)
