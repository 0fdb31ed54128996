"""`ridgeline transfer`: the arithmetic of moving along the flat directions, and its errors."""

import pytest

from ridgeline.cli import main
from ridgeline.tuner.transfer import DEFAULT_KEEP, describe_transfer, keepable

PAPER = {"lr": 0.4, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 512}


def transfer_cli(capsys, *args) -> tuple[int, list[str], str]:
    code = main(["transfer", "--preset", "paper", *args])
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err


@pytest.mark.parametrize("args, to, ridge", [
    (["--batch-size", "128"], "lr=0.1 momentum=0.9 weight_decay=0.0005 batch_size=128",
     "lr/batch_size = 7.81e-04"),
    (["--momentum", "0.99"], "lr=0.04 momentum=0.99 weight_decay=0.0005 batch_size=512",
     "lr/(1-momentum) = 4.00e+00"),
    (["--weight-decay", "1e-3"], "lr=0.2 momentum=0.9 weight_decay=0.001 batch_size=512",
     "lr*weight_decay = 2.00e-04"),
])
def test_default_moves_along_the_ridge_of_what_changed(capsys, args, to, ridge):
    code, lines, _ = transfer_cli(capsys, *args)
    assert code == 0
    assert lines[0] == "from  lr=0.4 momentum=0.9 weight_decay=0.0005 batch_size=512"
    assert lines[1] == f"keep  {DEFAULT_KEEP[0]}"
    assert lines[2] == f"to    {to}"
    assert lines[3].startswith("  lr 0.4 → ") and "keeps" in lines[3]
    assert lines[4].endswith(": requested")
    assert lines[-1] == f"also unchanged (the paper's ridges): {ridge}"


def test_explicit_keeps_and_setting(capsys):
    code, lines, _ = transfer_cli(capsys, "--from", "lr=0.8", "--momentum", "0.95",
                                  "--keep", "lr/(1-momentum)", "--keep", "lr*weight_decay")
    assert code == 0
    assert lines[2] == "to    lr=0.4 momentum=0.95 weight_decay=0.001 batch_size=512"
    assert lines[3] == ("  lr 0.8 → 0.4: keeps lr/(1-momentum) = 8.00e+00, lr*weight_decay = "
                        "4.00e-04 as momentum 0.9 → 0.95")
    assert lines[4] == "  momentum 0.9 → 0.95: requested"
    assert lines[5].startswith("  weight_decay 0.0005 → 0.001: keeps lr*weight_decay")


def test_a_derived_batch_size_is_flagged_for_rounding(capsys):
    code, lines, _ = transfer_cli(capsys, "--momentum", "0.97", "--keep", "lr/batch_size",
                                  "--keep", "lr/(1-momentum)")
    assert code == 0 and "batch_size=153.6" in lines[2]
    assert lines[-1].startswith("batch_size 153.6 is not an integer: round it to 154")


def test_changes_that_fix_the_default_invariant_keep_nothing():
    change = {"lr": 0.8, "momentum": 0.8, "weight_decay": 1e-3, "batch_size": 1024}
    assert keepable(change) == ([], list(DEFAULT_KEEP))
    lines = describe_transfer(PAPER, change)
    assert lines[1] == "keep  nothing" and lines[-1].startswith("not kept: ")


@pytest.mark.parametrize("args, needle", [
    ([], "nothing to transfer"),
    (["--momentum", "1.5"], "momentum=1.5 is not allowed"),
    (["--batch-size", "0"], "batch_size=0.0 is not allowed"),
    (["--lr", "0.1", "--batch-size", "128", "--keep", "lr/batch_size"], "over-determines"),
    (["--lr", "0.1", "--keep", "lr/bs"], "unknown name 'bs'"),
    (["--lr", "0.1", "--from", "lr"], "--from 'lr': use NAME=VALUE"),
    (["--lr", "0.1", "--from", "epochs=3"], "--from 'epochs=3'"),
])
def test_bad_input_is_one_error_line(capsys, args, needle):
    code, lines, err = transfer_cli(capsys, *args)
    assert code == 2 and not lines
    assert needle in err and len(err.strip().splitlines()) == 1
