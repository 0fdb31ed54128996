import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ridgeline.errors import RidgelineError
from ridgeline.tuner.invariants import SGD_SPACE, CoordinateSystem, paper_system, raw_system
from ridgeline.tuner.monomials import InvariantError
from ridgeline.tuner.transfer import PAPER_SPACE, transfer

U = "lr*weight_decay/(1-momentum)"
PAPER = {"lr": 0.4, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 512}


@pytest.mark.parametrize(
    ("expr", "exponents"),
    [
        (U, (1, -1, 1, 0)),
        ("lr/batch_size", (1, 0, 0, -1)),
        ("lr/(1-momentum)", (1, -1, 0, 0)),
        ("lr*weight_decay", (1, 0, 1, 0)),
        ("lr * weight_decay / (1 - momentum)", (1, -1, 1, 0)),
        ("(lr/batch_size)**2*batch_size", (2, 0, 0, -1)),
        ("lr**(1/2)/(1-momentum)**-1", (Fraction(1, 2), 1, 0, 0)),
    ],
)
def test_exponent_vectors(expr, exponents):
    assert PAPER_SPACE.parse(expr).exponents == tuple(Fraction(e) for e in exponents)


def test_numeric_constants_are_factors():
    m = PAPER_SPACE.parse("2*lr/batch_size/4")
    assert m.constant == 0.5
    assert m.exponents == (1, 0, 0, -1)


@pytest.mark.parametrize(
    ("expr", "token"),
    [
        ("lr/bs", "'bs'"),  # unknown name
        ("lr+momentum", "'lr + momentum'"),  # sum
        ("1-lr", "'1 - lr'"),  # lr is not a 1-x coordinate
        ("lr*momentum", "'momentum'"),  # momentum only enters as (1-momentum)
        ("log(lr)", "'log(lr)'"),  # function
        ("lr**weight_decay", "'weight_decay'"),  # non-numeric exponent
        ("-lr", "'-lr'"),  # no logarithm
        ("0*lr", "'0'"),
        ("lr*", "'lr*'"),  # not Python
    ],
)
def test_parse_errors_name_the_bad_token(expr, token):
    with pytest.raises(InvariantError) as info:
        PAPER_SPACE.parse(expr)
    message = str(info.value)
    assert isinstance(info.value, RidgelineError)
    assert token in message and "\n" not in message


def test_dependent_invariants_are_rejected():
    # lr**2*wd/(1-m) = (lr/(1-m)) * (lr*wd): the third is implied by the first two.
    with pytest.raises(InvariantError, match="not linearly independent"):
        CoordinateSystem(
            SGD_SPACE, ["lr/(1-momentum)", "lr*weight_decay", "lr**2*weight_decay/(1-momentum)"]
        )


def test_free_coordinates_must_complete_a_basis():
    with pytest.raises(InvariantError, match="basis"):
        CoordinateSystem(SGD_SPACE, ["lr*weight_decay"], free=["lr", "weight_decay"])
    with pytest.raises(InvariantError, match="basis"):
        CoordinateSystem(SGD_SPACE, [U], free=["momentum"])
    with pytest.raises(InvariantError, match="not declared"):
        CoordinateSystem(SGD_SPACE, [U], free=["momentum", "wd"])


def test_paper_system_and_automatic_free_choice_agree():
    explicit, auto = paper_system(), CoordinateSystem(SGD_SPACE, [U])
    assert explicit.names == auto.names == (U, "1-momentum", "weight_decay")
    assert explicit.exponents(U) == {"lr": 1, "1-momentum": -1, "weight_decay": 1}


def test_raw_system_is_the_identity():
    coords = raw_system().to_coords(PAPER)
    assert coords == {"lr": 0.4, "1-momentum": 1 - 0.9, "weight_decay": 5e-4}


points = st.fixed_dictionaries({
    "lr": st.floats(1e-4, 10),
    "momentum": st.floats(0.0, 0.999),
    "weight_decay": st.floats(1e-6, 1e-1),
})


@settings(max_examples=60, deadline=None)
@given(points)
def test_round_trip(point):
    system = paper_system()
    back = system.from_coords(system.to_coords(point))
    for name in point:
        assert back[name] == pytest.approx(point[name], rel=1e-12)
    assert 1 - back["momentum"] == pytest.approx(1 - point["momentum"], rel=1e-12)


@settings(max_examples=40, deadline=None)
@given(points, st.sampled_from(["1-momentum", "weight_decay"]), st.sampled_from([0.5, 2.0]))
def test_move_keeps_u_fixed(point, coordinate, factor):
    system = paper_system()
    moved = system.move(point, coordinate, factor)
    if not 0 <= moved["momentum"] < 1:
        return  # doubling 1-momentum past 1: a tuner bound, not an algebra property
    before, after = system.to_coords(point), system.to_coords(moved)
    assert after[U] == pytest.approx(before[U], rel=1e-12)
    assert after[coordinate] == pytest.approx(before[coordinate] * factor, rel=1e-12)


def test_move_carries_other_keys_and_derives_lr():
    moved = paper_system().move(PAPER, "1-momentum", 2)
    assert moved["batch_size"] == 512 and moved["weight_decay"] == 5e-4
    assert moved["momentum"] == pytest.approx(0.8) and moved["lr"] == pytest.approx(0.8)


def test_transfer_batch_size_keeps_lr_over_batch():
    new, reasons = transfer(PAPER, {"batch_size": 128}, ["lr/batch_size"])
    assert new["lr"] == pytest.approx(0.1, rel=1e-12)
    assert (new["momentum"], new["weight_decay"], new["batch_size"]) == (0.9, 5e-4, 128)
    assert reasons == [
        "lr 0.4 → 0.1: keeps lr/batch_size = 7.81e-04 as batch_size 512 → 128",
        "batch_size 512 → 128: requested",
    ]


def test_transfer_momentum_keeps_lr_over_one_minus_momentum():
    new, reasons = transfer(PAPER, {"momentum": 0.99}, ["lr/(1-momentum)"])
    assert new["lr"] == pytest.approx(0.4 * 0.1, rel=1e-12)
    assert new["momentum"] == 0.99 and new["batch_size"] == 512
    assert reasons[0].startswith("lr 0.4 → 0.04: keeps lr/(1-momentum) = 4.00e+00")


def test_transfer_adjusts_the_next_parameter_when_lr_itself_changes():
    new, reasons = transfer(PAPER, {"lr": 0.8}, ["lr/(1-momentum)", "lr*weight_decay"])
    assert new["momentum"] == pytest.approx(0.8) and new["weight_decay"] == pytest.approx(2.5e-4)
    assert new["batch_size"] == 512 and len(reasons) == 3


def test_transfer_over_determined():
    with pytest.raises(InvariantError, match="over-determines"):
        transfer(PAPER, {"lr": 0.1, "batch_size": 128}, ["lr/batch_size"])
    with pytest.raises(InvariantError, match="cannot change"):
        transfer(PAPER, {"epochs": 10}, ["lr/batch_size"])


def test_bad_points_are_one_line_errors():
    with pytest.raises(InvariantError, match="momentum=1.0"):
        paper_system().to_coords({"lr": 0.1, "momentum": 1.0, "weight_decay": 1e-3})
    with pytest.raises(InvariantError, match="no 'weight_decay'"):
        paper_system().to_coords({"lr": 0.1, "momentum": 0.9})
    assert math.isfinite(paper_system().to_coords(PAPER)[U])
