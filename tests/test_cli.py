import json
import subprocess
import sys

import pytest

import ridgeline.cifar.data as D
from ridgeline.cli import main
from tests.test_data import make_fake_cifar


@pytest.fixture
def fake_data(tmp_path, monkeypatch):
    folder, _, md5s, _ = make_fake_cifar(tmp_path, n_per_batch=60)
    monkeypatch.setattr(D, "FILE_MD5S", md5s)  # the fake files are checked against their own sums
    monkeypatch.setenv(D.CACHE_ENV_VAR, str(tmp_path / "cache"))
    return folder


def test_train_smoke_run_writes_result_json(fake_data, tmp_path, capsys):
    out = tmp_path / "run.json"
    code = main(["train", "--preset", "tiny", "--data", str(fake_data), "--epochs", "1",
                 "--lr", "0.1", "--out", str(out), "--quiet"])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["hparams"]["lr"] == 0.1 and result["hparams"]["epochs"] == 1
    assert result["hparams"]["warmup_epochs"] == pytest.approx(0.25)  # preset's warm-up fraction
    assert result["preset"] == "tiny" and not result["diverged"]
    assert "test accuracy" in capsys.readouterr().out


def test_batch_larger_than_dataset_is_one_line_error(fake_data, capsys):
    code = main(["train", "--preset", "tiny", "--data", str(fake_data), "--batch-size", "5000"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "batch_size=5000" in err and "\n" not in err


@pytest.mark.parametrize("args, needle", [
    (["--lr", "-1"], "lr=-1.0 is not allowed"),
    (["--momentum", "1.5"], "momentum=1.5 is not allowed: it must be in [0, 1)"),
    (["--weight-decay", "-0.1"], "weight_decay=-0.1"),
    (["--batch-size", "0"], "batch_size=0"),
    (["--epochs", "0"], "epochs=0"),
    (["--epochs", "2", "--warmup-epochs", "3"], "warmup_epochs=3.0"),
    (["--preset", "huge"], "unknown preset 'huge'"),
    (["--data", "/nonexistent/cifar"], "/nonexistent/cifar does not exist"),
    (["--lr=--"], "--lr was given no value"),  # argparse parses this as lr=[]
])
def test_bad_input_is_one_line_error(args, needle, capsys):
    preset = [] if "--preset" in args else ["--preset", "tiny"]
    assert main(["train", *preset, *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1


def test_console_script_prints_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "ridgeline.cli", "train", "--lr", "0"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    expected = "ridgeline: error: lr=0.0 is not allowed: it must be a finite number > 0"
    assert proc.stderr.strip() == expected


def test_unknown_device_is_one_line_error(fake_data, capsys):
    code = main(["train", "--preset", "tiny", "--data", str(fake_data), "--device", "tpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "device 'tpu'" in err


def test_cuda_graphs_on_cpu_is_one_line_error(fake_data, capsys):
    code = main(["train", "--preset", "tiny", "--data", str(fake_data), "--device", "cpu",
                 "--cuda-graphs"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--cuda-graphs needs a CUDA device" in err and "\n" not in err


def test_compile_and_cuda_graphs_flags_reach_train(fake_data, monkeypatch, capsys):
    import ridgeline.cifar.train as T

    seen = {}
    real = T.train

    def spy(*a, **kw):
        seen.update(kw)
        return real(*a, **{**kw, "compile_mode": None})  # plumbing only: no compile here

    monkeypatch.setattr(T, "train", spy)
    code = main(["train", "--preset", "tiny", "--data", str(fake_data), "--epochs", "1",
                 "--device", "cpu", "--compile", "max-autotune", "--quiet"])
    assert code == 0
    assert seen["compile_mode"] == "max-autotune" and seen["cuda_graphs"] is False
