"""benchmarks/gpu_paper.py and gpu_stage.py at tiny size on CPU: no GPU, no real CIFAR-10."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_paper, gpu_stage
from ridgeline.cifar import data as D
from ridgeline.errors import DataError
from tests.test_data import make_fake_cifar

ROOT = Path(__file__).parents[1]
KIB = 1 / 1024  # in MiB, for gpu_stage's --max-mib


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Data cache under tmp_path, a fresh memo, one thread (the CPU is shared)."""
    monkeypatch.setenv(D.CACHE_ENV_VAR, str(tmp_path / "cache"))
    monkeypatch.setattr(D, "_MEMO", {})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch._dynamo.reset()


@pytest.fixture
def fake_folder(tmp_path):
    """A CIFAR-10 folder in the official format with 300 train / 60 test images."""
    return make_fake_cifar(tmp_path / "fake", n_per_batch=60)[0]


def _files(tmp_path, sizes):
    src = tmp_path / "src"
    src.mkdir()
    gen = torch.Generator().manual_seed(0)
    for name, n in sizes.items():
        (src / name).write_bytes(bytes(torch.randint(0, 256, (n,), generator=gen).tolist()))
    return src


# --- staging ---------------------------------------------------------------------------------

def test_part_plan_fits_cifar_into_four_calls():
    total = 186_214_026  # the seven official files
    n, size = gpu_stage.part_plan(total, 54)
    assert n == 4 and size <= 54 * gpu_stage.MIB and n * size >= total
    assert size + 8.1 * gpu_stage.MIB < gpu_stage.CALL_LIMIT_MIB * gpu_stage.MIB  # + the tree


def test_split_join_round_trip(tmp_path):
    sizes = {"a.bin": 2500, "empty": 0, "b.bin": 1024, "c.bin": 3000}
    src = _files(tmp_path, sizes)
    m = gpu_stage.split(src, tmp_path / "stage", max_mib=2 * KIB, names=list(sizes))
    assert len(m["parts"]) == 4 and all(p["size"] <= 2048 for p in m["parts"])
    assert sum(p["size"] for p in m["parts"]) == m["total"] == sum(sizes.values())
    r = gpu_stage.join(tmp_path / "stage", tmp_path / "out")
    for name in sizes:
        assert (tmp_path / "out" / name).read_bytes() == (src / name).read_bytes()
    assert r["files"] == {f["name"]: f["md5"] for f in m["files"]}
    # a second split with fewer parts leaves no stale part behind
    gpu_stage.split(src, tmp_path / "stage", max_mib=8 * KIB, names=list(sizes))
    assert sorted(p.name for p in (tmp_path / "stage").iterdir()) == ["cifar10.part1",
                                                                       "manifest.json"]


@pytest.mark.parametrize("damage", ["flip", "truncate", "remove"])
def test_join_names_the_bad_part_and_writes_nothing(tmp_path, damage):
    sizes = {"a.bin": 2500, "b.bin": 3000}
    src = _files(tmp_path, sizes)
    gpu_stage.split(src, tmp_path / "stage", max_mib=2 * KIB, names=list(sizes))
    part = tmp_path / "stage" / "cifar10.part2"
    blob = bytearray(part.read_bytes())
    if damage == "flip":
        blob[7] ^= 0xFF
        part.write_bytes(bytes(blob))
    elif damage == "truncate":
        part.write_bytes(bytes(blob[:-1]))
    else:
        part.unlink()
    with pytest.raises(DataError, match=r"cifar10\.part2 is (corrupt|missing).*carry it") as e:
        gpu_stage.join(tmp_path / "stage", tmp_path / "out")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_join_checks_official_sums(tmp_path, capsys):
    src = _files(tmp_path, {"data_batch_1": 100})
    gpu_stage.split(src, tmp_path / "stage", max_mib=1, names=["data_batch_1"])
    with pytest.raises(DataError, match="data_batch_1 with md5 .* not the official"):
        gpu_stage.join(tmp_path / "stage", tmp_path / "out")
    assert gpu_stage.main(["join", "--stage", str(tmp_path / "stage"), "--dest",
                           str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpu_stage: error: ") and err.count("\n") == 1
    assert gpu_stage.main(["join", "--stage", str(tmp_path / "stage"), "--dest",
                           str(tmp_path / "out"), "--allow-unofficial"]) == 0
    assert (tmp_path / "out" / "data_batch_1").read_bytes() == (src / "data_batch_1").read_bytes()


def test_join_without_manifest_is_one_line(tmp_path):
    with pytest.raises(DataError, match="manifest.json is missing: carry it with part 1"):
        gpu_stage.join(tmp_path / "nothing")


# --- the benchmark script --------------------------------------------------------------------

def _common(tmp_path):
    return ["--preset", "tiny", "--device", "cpu", "--matmul-sizes", "256",
            "--out", str(tmp_path / "out.json")]


def test_script_end_to_end_on_staged_fake_cifar(tmp_path, fake_folder, capsys):
    gpu_stage.split(fake_folder, tmp_path / "stage", max_mib=600 * KIB)
    data_dir = tmp_path / "joined" / D.FOLDER_NAME
    argv = ["--join-from", str(tmp_path / "stage"), "--data", str(data_dir),
            "--allow-unofficial", "--seeds", "2", "--variants", "eager-bf16", "eager-fp16",
            "eager-bf16-nchw", "compile-bf16", "--compile-backend", "eager",
            "--mirror", str(tmp_path / "mirror.json"), *_common(tmp_path)]
    returned = gpu_paper.main(argv)
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved == json.loads((tmp_path / "mirror.json").read_text())
    assert saved["status"] == returned["status"] == "done"
    assert saved["argv"] == argv and saved["command"].startswith("python benchmarks/gpu_paper.py")
    assert "--join-from" in saved["command"]
    dev = saved["device"]
    assert dev["type"] == "cpu" and dev["name"] and dev["torch"] == torch.__version__
    assert {"cuda", "cudnn", "host_cpu"} <= set(dev) and saved["versions"]["ridgeline"]
    assert saved["matmul"]["bf16"]["tflop_s"] > 0 and "fp16" not in saved["matmul"]
    assert saved["data"]["train_images"] == 300 and saved["data"]["load_s"] >= 0
    assert len(saved["data"]["join"]["files"]) == 7 and saved["data"]["md5"] == "unchecked"
    assert saved["preset"]["name"] == "tiny" and saved["flops_per_train_image"] > 0

    runs = {v["label"]: v for v in saved["variants"]}
    assert list(runs) == ["eager-bf16", "eager-fp16", "eager-bf16-nchw", "compile-bf16"]
    assert runs["eager-fp16"]["status"] == "skipped" and "CUDA-only" in runs["eager-fp16"]["reason"]
    for label in ("eager-bf16", "eager-bf16-nchw", "compile-bf16"):
        r = runs[label]
        assert r["status"] == "ok" and 0 <= r["test_acc"] <= 1 and r["seed"] == 0
        assert r["train_s"] > 0 and r["eval_s"] > 0 and r["warmup_s"] > 0 and r["img_s"] > 0
        assert r["wall_s"] > r["train_s"] + r["eval_s"] + r["warmup_s"]
        assert r["train_tflop_s"] > 0 and r["fraction_of_bf16_matmul"] > 0
        assert len(r["epoch_s"]) == 2 and r["result"]["preset"] == "tiny"
        assert r["result"]["extras"]["run"]["channels_last"] is (label != "eager-bf16-nchw")
    assert runs["compile-bf16"]["result"]["extras"]["run"]["compile_backend"] == "eager"

    choice = saved["seed_config"]
    assert choice["label"] in runs and "fastest" in choice["why"]
    seeds = saved["seeds"]
    assert [s["seed"] for s in seeds] == [0, 1] and {s["label"] for s in seeds} == {choice["label"]}
    assert seeds[0]["reused_variant_run"]
    assert seeds[0]["test_acc"] == runs[choice["label"]]["test_acc"]
    summary = saved["summary"]
    assert summary["n"] == 2 and 0 <= summary["mean_test_acc"] <= 1
    assert summary["max_train_s"] == max(s["train_s"] for s in seeds)
    assert "meets_acc_target" not in summary  # the targets are the paper preset's

    lines = [x for x in capsys.readouterr().out.splitlines() if " seed " in x]
    assert len(lines) == 4 + 2 + 1  # one per variant, one per seed, the choice
    assert all(x.startswith("[gpu_paper] ") for x in lines)


def test_skips_are_recorded_with_reasons(tmp_path, fake_folder):
    saved = gpu_paper.main(["--data", str(fake_folder), "--allow-unofficial", "--variants",
                            "compile-bf16", "eager-bf16", "--max-minutes", "0", "--seeds", "1",
                            *_common(tmp_path)])
    variants = {v["label"]: v for v in saved["variants"]}
    assert variants["compile-bf16"]["status"] == "skipped"
    assert "--compile-backend eager" in variants["compile-bf16"]["reason"]
    assert "time budget" in variants["eager-bf16"]["reason"]
    assert saved["seed_config"]["label"] == gpu_paper.BASELINE
    assert saved["seeds"][0]["status"] == "skipped" and saved["summary"] is None
    assert json.loads((tmp_path / "out.json").read_text())["status"] == "done"


def test_budget_keeps_time_for_the_seed_runs(tmp_path):
    args = gpu_paper.parse_args(["--prewarm", "--seeds", "5", "--max-minutes", "1",
                                 *_common(tmp_path)])
    bench = gpu_paper.Bench(args, [])
    bench.report["variants"] = [{"label": "eager-bf16", "wall_s": 10.0}]
    config = gpu_paper.VARIANTS["eager-bf16-nchw"]
    assert bench.skip_reason("variant", "eager-bf16", config) is None  # 10 s of ~60 s
    assert bench.skip_reason("variant", "eager-bf16-nchw", config) is None  # 4 seeds x 10 s
    bench.deadline -= 25  # ~35 s left: not enough for an unknown variant + 40 s of seeds
    assert "time budget" in bench.skip_reason("variant", "eager-bf16-nchw", config)
    assert bench.skip_reason("seed", "eager-bf16", config) is None


def test_resume_reuses_finished_runs(tmp_path, fake_folder):
    first = gpu_paper.main(["--data", str(fake_folder), "--allow-unofficial", "--variants",
                            "eager-bf16", "--seeds", "1", *_common(tmp_path)])
    again = gpu_paper.main(["--data", str(fake_folder), "--allow-unofficial", "--variants",
                            "eager-bf16", "--seeds", "1", "--resume", str(tmp_path / "out.json"),
                            "--preset", "tiny", "--device", "cpu", "--matmul-sizes", "256",
                            "--out", str(tmp_path / "again.json")])
    assert again["variants"][0]["resumed"] is True
    assert again["variants"][0]["test_acc"] == first["variants"][0]["test_acc"]


def test_prewarm_compiles_only_the_compiled_variants(tmp_path):
    saved = gpu_paper.main(["--prewarm", "--variants", "eager-bf16", "compile-bf16",
                            "--compile-backend", "eager", *_common(tmp_path)])
    assert saved["status"] == "done" and [r["label"] for r in saved["prewarm"]] == ["compile-bf16"]
    assert saved["prewarm"][0]["status"] == "ok" and saved["prewarm"][0]["warmup_s"] > 0
    assert saved["variants"] == saved["seeds"] == []


def test_missing_data_is_a_one_line_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_paper.py", "--data", str(tmp_path / "none"),
         *_common(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": "src", "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("gpu_paper: error: CIFAR-10 data folder")
    assert json.loads((tmp_path / "out.json").read_text())["status"] == "error"


def test_scripts_import_no_optuna():
    """The device has torch but not Optuna: run exactly as there, and list every import."""
    for script in ("benchmarks/gpu_paper.py", "benchmarks/gpu_stage.py"):
        proc = subprocess.run([sys.executable, "-X", "importtime", script, "--help"], cwd=ROOT,
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": "src"})
        assert proc.returncode == 0, proc.stderr[-2000:]
        modules = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()
                   if line.startswith("import time:")]
        assert "torch" in modules and "ridgeline.cifar.data" in modules
        assert not [m for m in modules if m.split(".")[0] == "optuna"], script
