import copy
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from ridgeline.cifar.model import ResNet9
from ridgeline.cifar.train import (
    RunResult,
    cpu_has_fast_bf16,
    evaluate,
    keep_freed_memory,
    lr_schedule,
    make_optimizer,
    prepare_images,
    resolve_device,
    resolve_precision,
    train,
)
from ridgeline.errors import HParamError, RidgelineError
from ridgeline.hparams import HParams
from ridgeline.presets import get_preset
from tests.synthetic import fake_cifar


def test_schedule_values_at_key_steps():
    hp = HParams(lr=0.4, epochs=4, warmup_epochs=1)
    lr = lr_schedule(hp, steps_per_epoch=10)
    assert lr(0) == pytest.approx(0.04)  # first step already > 0, as in Page's code
    assert lr(4) == pytest.approx(0.2)
    assert lr(9) == pytest.approx(0.4)  # peak at the end of warm-up
    assert lr(24) == pytest.approx(0.2)  # halfway down: epoch 2.5 of the 3 decay epochs
    assert lr(39) == pytest.approx(0.0)  # last step ends at 0


def test_schedule_without_warmup_starts_at_peak():
    lr = lr_schedule(HParams(lr=0.4, epochs=4, warmup_epochs=0), steps_per_epoch=10)
    assert lr(0) == pytest.approx(0.4 * (1 - 0.1 / 4))


def _small_net(bn_eps: float = 1e-5):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8, eps=bn_eps),
                         nn.ReLU(),
                         nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(8, 10, bias=False)
                         ).double()


def _batches(n=16, steps=5):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(n, 3, 8, 8, generator=g, dtype=torch.float64),
             torch.randint(0, 10, (n,), generator=g)) for _ in range(steps)]


def _run(model, groups, reduction, batches):
    opt = torch.optim.SGD(groups(model), momentum=0.9, nesterov=True)
    losses = []
    for x, y in batches:
        loss = nn.functional.cross_entropy(model(x), y, reduction=reduction)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def test_mean_loss_update_equals_pages_summed_convention():
    lam, alpha, n = 0.4, 5e-4, 16
    ours, orig = _small_net(), _small_net()
    batches = _batches(n)
    _run(ours, lambda m: [{"params": m.parameters(), "lr": lam, "weight_decay": alpha}],
         "mean", batches)
    _run(orig, lambda m: [{"params": m.parameters(), "lr": lam / n, "weight_decay": alpha * n}],
         "sum", batches)
    for a, b in zip(ours.parameters(), orig.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_scale_symmetry_of_conv_weights_before_batchnorm_is_exact():
    # BatchNorm's eps is added to the variance, which r scales and eps does not: the symmetry is
    # exact only as eps -> 0 (with torch's default 1e-5 the losses differ by ~1e-5 relative).
    lam, alpha, r = 0.1, 5e-3, 3.0
    base, scaled = _small_net(bn_eps=1e-30), _small_net(bn_eps=1e-30)
    with torch.no_grad():
        scaled[0].weight.mul_(r)

    def groups(rr):
        def make(m):
            conv = [m[0].weight]
            rest = [p for p in m.parameters() if p is not m[0].weight]
            return [{"params": conv, "lr": lam * rr**2, "weight_decay": alpha / rr**2},
                    {"params": rest, "lr": lam, "weight_decay": alpha}]
        return make

    batches = _batches()
    loss_base = _run(base, groups(1.0), "mean", batches)
    loss_scaled = _run(scaled, groups(r), "mean", batches)
    assert loss_scaled == pytest.approx(loss_base, rel=1e-10)
    torch.testing.assert_close(scaled[0].weight / r, base[0].weight, rtol=1e-10, atol=1e-12)
    x = _batches(steps=1)[0][0]
    torch.testing.assert_close(scaled(x), base(x), rtol=1e-9, atol=1e-10)
    # Control: scaling w without the compensating lr/wd changes the trajectory.
    control = _small_net(bn_eps=1e-30)
    with torch.no_grad():
        control[0].weight.mul_(r)
    assert _run(control, groups(1.0), "mean", batches) != pytest.approx(loss_base, rel=1e-6)


@pytest.fixture(scope="module")
def data():
    return fake_cifar(n_train=256, n_test=100)


def test_same_seed_twice_gives_identical_results(data):
    a = train(preset="tiny", data=data, seed=3, device="cpu")
    b = train(preset="tiny", data=data, seed=3, device="cpu")
    c = train(preset="tiny", data=data, seed=4, device="cpu")
    assert a.epochs[-1]["train_loss"] == b.epochs[-1]["train_loss"]
    assert a.test_acc == b.test_acc
    assert [e["train_loss"] for e in a.epochs] != [e["train_loss"] for e in c.epochs]


def test_result_record_is_complete_and_round_trips_json(data):
    r = train(preset="tiny", data=data, seed=0, device="cpu", eval_each_epoch=True)
    assert not r.diverged and 0.0 <= r.test_acc <= 1.0 and math.isfinite(r.train_loss)
    assert len(r.epochs) == get_preset("tiny").hparams.epochs
    assert all("test_acc" in e for e in r.epochs)
    assert r.images_per_sec > 0 and r.wall_time >= r.train_time > 0
    assert r.precision == ("bfloat16" if cpu_has_fast_bf16() else "fp32") and r.device == "cpu"
    assert {"torch", "python", "ridgeline"} <= set(r.versions)
    assert r.threads == __import__("torch").get_num_threads() >= 1  # results depend on it
    assert RunResult.from_dict(__import__("json").loads(r.to_json())) == r


def test_tiny_run_learns_the_synthetic_task(data):
    hp = get_preset("tiny").hparams.replace(epochs=6, warmup_epochs=1)
    r = train(hp, preset="tiny", data=data, seed=0, device="cpu")
    assert r.test_acc > 0.3  # chance is 0.1


def test_divergence_is_recorded_not_raised(data):
    hp = get_preset("tiny").hparams.replace(lr=1e8)
    r = train(hp, preset="tiny", data=data, seed=0, device="cpu")
    assert r.diverged and r.test_acc is None and r.train_loss is None
    assert len(r.epochs) == 1
    assert r.extras["run"]["sync_every"] == 1  # CPU default: read every step, stop at once
    assert r.epochs[0]["images_per_sec"] > 0


@pytest.mark.parametrize("sync_every", [0, 3])
def test_divergence_is_caught_without_per_step_syncs(data, sync_every):
    # CUDA's scheme (0: the running loss sum is read once per epoch; 3: every third step), run
    # here on the CPU: a diverged run still ends as diverged after its first epoch, never raises.
    hp = get_preset("tiny").hparams.replace(lr=1e8)
    r = train(hp, preset="tiny", data=data, seed=0, device="cpu", sync_every=sync_every)
    assert r.diverged and r.test_acc is None and r.train_loss is None
    assert len(r.epochs) == 1 and r.epochs[0]["train_loss"] is None
    assert r.extras["run"]["sync_every"] == sync_every


def test_sync_schedule_does_not_change_a_finite_run(data):
    every_step = train(preset="tiny", data=data, seed=5, device="cpu")
    per_epoch = train(preset="tiny", data=data, seed=5, device="cpu", sync_every=0)
    for key in ("train_loss", "train_acc"):
        assert [e[key] for e in per_epoch.epochs] == [e[key] for e in every_step.epochs]
    assert per_epoch.test_acc == every_step.test_acc and not per_epoch.diverged


class _LrProbe:
    name = "lrs"

    def on_train_start(self, model, optimizer, hparams, total_steps):
        self.opt, self.seen = optimizer, []

    def before_step(self, step, model, lr):
        self.seen.append((lr, [g["lr"] for g in self.opt.param_groups]))

    def after_step(self, step, model, lr, loss): ...

    def result(self):
        return {}


def test_every_step_gets_the_schedules_lr_times_its_groups_scale(data):
    hp = get_preset("tiny").hparams
    probe = _LrProbe()

    def two_groups(model):
        convs = [p for p in model.parameters() if p.ndim == 4]
        rest = [p for p in model.parameters() if p.ndim != 4]
        return [{"params": convs, "lr_scale": 2.0}, {"params": rest}]

    train(hp, preset="tiny", data=data, seed=0, device="cpu", hooks=[probe], setup=two_groups)
    lr_at = lr_schedule(hp, steps_per_epoch=256 // hp.batch_size)
    assert len(probe.seen) == hp.epochs * (256 // hp.batch_size)
    for step, (lr, groups) in enumerate(probe.seen):
        assert lr == lr_at(step) and groups == [2.0 * lr, lr]


def test_fused_optimizer_steps_bit_identically_to_torchs_default_loop():
    hp = HParams(lr=0.4, momentum=0.9, weight_decay=5e-4)
    nets = [ResNet9(0.125) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    fused = make_optimizer(nets[0], hp)
    plain = torch.optim.SGD(nets[1].parameters(), lr=0.0, momentum=0.9, nesterov=True,
                            weight_decay=5e-4)  # the single-tensor loop, CPU's default
    assert fused.defaults["fused"] and not plain.defaults["foreach"]
    g = torch.Generator().manual_seed(0)
    for step in range(4):
        x = torch.randn(8, 3, 32, 32, generator=g)
        y = torch.randint(0, 10, (8,), generator=g)
        for net, opt in zip(nets, (fused, plain), strict=True):
            opt.param_groups[0]["lr"] = 0.1 * (step + 1)
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        assert torch.equal(a, b)


def test_evaluation_batch_size_and_prepared_images_agree():
    test = fake_cifar(n_train=10, n_test=1200, seed=2)
    torch.manual_seed(0)
    model = ResNet9(0.125).to(memory_format=torch.channels_last)
    with torch.no_grad():  # give BatchNorm non-trivial running statistics
        model(prepare_images(test.test_images[:256], "cpu", torch.float32))
    cpu = torch.device("cpu")
    old = evaluate(model, test.test_images, test.test_labels, cpu, torch.bfloat16,
                   batch_size=1000)  # the former default: uint8 images, batches of 1000
    prepared = prepare_images(test.test_images, cpu, torch.bfloat16)  # as train() does once
    new = evaluate(model, prepared, test.test_labels, cpu, torch.bfloat16)  # batches of 500
    odd = evaluate(model, prepared, test.test_labels, cpu, torch.bfloat16, batch_size=333)
    assert 0.0 <= new <= 1.0 and len(test.test_labels) == 1200
    assert abs(new - old) <= 3 / 1200 and abs(odd - new) <= 3 / 1200  # bf16 kernels per size
    assert model.training  # evaluate() puts train mode back
    folded = evaluate(model, prepared, test.test_labels, cpu, torch.bfloat16, fold=True)
    assert abs(folded - new) <= 3 / 1200 and model.training  # BN folded: rounding only
    fp32 = prepare_images(test.test_images, cpu, torch.float32)
    assert (evaluate(model, fp32, test.test_labels, cpu, None, fold=True)
            == evaluate(model, fp32, test.test_labels, cpu, None))


def test_eval_times_are_recorded_per_epoch_and_in_total(data):
    r = train(preset="tiny", data=data, seed=0, device="cpu", eval_each_epoch=True)
    run = r.extras["run"]
    assert all(e["eval_seconds"] > 0 for e in r.epochs)
    assert run["eval_time"] == r.epochs[-1]["eval_seconds"]
    assert run["eval_time_total"] == pytest.approx(sum(e["eval_seconds"] for e in r.epochs))


def test_freed_memory_is_kept_on_glibc():
    # mallopt's thresholds (train() sets them on CPU runs): idempotent, and False, not an
    # error, where the C library is not glibc.
    import platform

    first = keep_freed_memory()
    assert keep_freed_memory() is first
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert first is True


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_steps_make_no_host_sync(data):
    # Between a step's before_step and after_step (forward, loss, backward, optimiser) no op may
    # wait for the device: torch raises on any sync while the debug mode is "error".
    class NoSync(_LrProbe):
        name = "nosync"

        def before_step(self, step, model, lr):
            if step > 0:  # the first step allocates lazily initialised state
                torch.cuda.set_sync_debug_mode("error")

        def after_step(self, step, model, lr, loss):
            torch.cuda.set_sync_debug_mode("default")

    r = train(preset="tiny", data=data, seed=0, device="cuda", hooks=[NoSync()])
    assert not r.diverged and r.extras["run"]["sync_every"] == 0


def test_auto_precision_on_cpu_is_bf16_only_where_onednn_has_bf16(monkeypatch):
    import ridgeline.cifar.train as T

    cpu = torch.device("cpu")
    monkeypatch.setattr(T, "cpu_has_fast_bf16", lambda: True)
    assert resolve_precision("auto", cpu) is torch.bfloat16
    monkeypatch.setattr(T, "cpu_has_fast_bf16", lambda: False)
    assert resolve_precision("auto", cpu) is None  # fp32: bf16 would be the reference gemm
    assert resolve_precision("bf16", cpu) is torch.bfloat16  # asked for, it is what it gets


def test_cuda_graphs_on_cpu_is_a_clear_error(data):
    with pytest.raises(RidgelineError, match="^cuda_graphs needs a CUDA device, not cpu$"):
        train(preset="tiny", data=data, seed=0, device="cpu", cuda_graphs=True)


def test_cuda_graphs_off_is_recorded(data):
    r = train(preset="tiny", data=data, seed=0, device="cpu")
    assert r.extras["run"]["cuda_graphs"] is False


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_steps_match_eager_and_make_no_host_sync(data):
    # The graphed step is the eager step replayed: the same losses up to cuDNN's algorithm
    # choice, the warm-up leaves the run unchanged, and no step waits for the device.
    class NoSync(_LrProbe):
        name = "nosync"

        def on_train_start(self, model, optimizer, hparams, total_steps):
            super().on_train_start(model, optimizer, hparams, total_steps)
            self.losses = []

        def before_step(self, step, model, lr):
            if step > 0:  # the first optimiser step allocates its momentum buffers
                torch.cuda.set_sync_debug_mode("error")

        def after_step(self, step, model, lr, loss):
            torch.cuda.set_sync_debug_mode("default")
            self.losses.append(loss)  # a copy: the next replay must not change it

        def result(self):
            return {"losses": torch.stack(self.losses).tolist()}

    eager = train(preset="tiny", data=data, seed=0, device="cuda", hooks=[NoSync()])
    graphed = train(preset="tiny", data=data, seed=0, device="cuda", hooks=[NoSync()],
                    cuda_graphs=True)
    assert graphed.extras["run"]["cuda_graphs"] is True and not graphed.diverged
    a, b = eager.extras["nosync"]["losses"], graphed.extras["nosync"]["losses"]
    assert len(a) == len(b) and len(set(b)) > 1
    assert b == pytest.approx(a, rel=2e-2, abs=2e-2)


def test_batch_larger_than_training_set_is_a_clear_error(data):
    hp = get_preset("tiny").hparams.replace(batch_size=100_000)
    with pytest.raises(HParamError, match="batch_size=100000.*256 training images"):
        train(hp, preset="tiny", data=data, device="cpu")


@pytest.mark.parametrize("bad, field", [
    ({"lr": 0.0}, "lr"), ({"lr": -1.0}, "lr"), ({"lr": float("nan")}, "lr"),
    ({"momentum": 1.0}, "momentum"), ({"momentum": -0.1}, "momentum"),
    ({"weight_decay": -1e-4}, "weight_decay"), ({"batch_size": 0}, "batch_size"),
    ({"epochs": 0}, "epochs"), ({"epochs": 4, "warmup_epochs": 5}, "warmup_epochs"),
])
def test_out_of_range_hyperparameters_name_value_and_range(bad, field):
    with pytest.raises(HParamError) as e:
        HParams(**bad)
    msg = str(e.value)
    assert msg.startswith(f"{field}=") and "must be" in msg and "\n" not in msg


@given(lr=st.floats(1e-5, 10), mom=st.floats(0, 0.999), wd=st.floats(1e-6, 1e-1),
       n=st.integers(1, 4096))
def test_derived_coordinates_are_consistent(lr, mom, wd, n):
    hp = HParams(lr=lr, momentum=mom, weight_decay=wd, batch_size=n)
    assert hp.lr_wd_total == pytest.approx(hp.lr_wd / (1 - mom))
    assert hp.lr_total * (1 - mom) == pytest.approx(lr)
    assert hp.lr_over_batch * n == pytest.approx(lr)


def test_unknown_preset_and_device_are_clear_errors():
    with pytest.raises(RidgelineError, match="unknown preset 'nope'.*cpu-mini"):
        get_preset("nope")
    with pytest.raises(RidgelineError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")


def test_zero_momentum_runs_plain_sgd(data):
    hp = get_preset("tiny").hparams.replace(momentum=0.0, epochs=1, warmup_epochs=0.5)
    assert not train(hp, preset="tiny", data=data, device="cpu").diverged


def test_deepcopy_of_hparams_is_equal():
    hp = HParams()
    assert copy.deepcopy(hp) == hp and hp.replace(lr=0.1).lr == 0.1


class _FormatProbe:
    """Records the memory format of the first conv's weight when training starts."""

    name = "probe"

    def on_train_start(self, model, optimizer, hparams, total_steps):
        self.channels_last = model.prep[0].weight.is_contiguous(memory_format=torch.channels_last)

    def before_step(self, step, model, lr): ...
    def after_step(self, step, model, lr, loss): ...

    def result(self):
        return {"channels_last": self.channels_last}


def test_warmup_is_timed_apart_and_leaves_the_run_unchanged(data):
    plain = train(preset="tiny", data=data, seed=2, device="cpu")
    warm = train(preset="tiny", data=data, seed=2, device="cpu", warmup=True)
    assert [e["train_loss"] for e in warm.epochs] == [e["train_loss"] for e in plain.epochs]
    assert warm.test_acc == plain.test_acc
    assert plain.extras["run"]["warmup_time"] == 0.0 < warm.extras["run"]["warmup_time"]
    assert warm.wall_time > warm.train_time + warm.extras["run"]["warmup_time"]
    assert 0 < warm.extras["run"]["eval_time"] < warm.wall_time


def test_channels_last_can_be_switched_off(data):
    runs = {cl: train(preset="tiny", data=data, seed=0, device="cpu", channels_last=cl,
                      hooks=[_FormatProbe()]) for cl in (True, False)}
    for cl, r in runs.items():
        assert r.extras["probe"]["channels_last"] is cl and r.extras["run"]["channels_last"] is cl
        assert not r.diverged and 0.0 <= r.test_acc <= 1.0
    assert runs[False].train_loss == pytest.approx(runs[True].train_loss, rel=0.05)


def test_compiled_run_warms_up_and_matches_eager(data):
    # backend 'eager' exercises the torch.compile path (dynamo capture, recompiles on the
    # train/eval switch, warm-up) in seconds; inductor's CPU compile would take minutes here.
    eager = train(preset="tiny", data=data, seed=1, device="cpu")
    try:
        comp = train(preset="tiny", data=data, seed=1, device="cpu", compile_mode="default",
                     compile_backend="eager")
    finally:
        torch._dynamo.reset()
    run = comp.extras["run"]
    assert run["compile_mode"] == "default" and run["compile_backend"] == "eager"
    assert run["warmup_time"] > 0 and eager.extras["run"]["compile_mode"] is None
    assert comp.train_loss == pytest.approx(eager.train_loss, rel=1e-4)
