"""Tune lr, momentum and weight decay of your own BatchNorm CNN with FlatDirectionSampler.
python examples/tune_your_model.py [--tiny]   (--tiny: random data, 12 trials in seconds)"""
import math
import sys

import optuna
import torch
from torch import nn

import ridgeline

TINY = "--tiny" in sys.argv
torch.manual_seed(0)
if TINY:  # 10 classes: class c brightens channel c % 3 by c // 3, plus noise
    y, n_train, epochs = torch.arange(600) % 10, 500, 2
    x = torch.randn(600, 3, 8, 8) + (torch.eye(3)[y % 3] * (y // 3)[:, None])[:, :, None, None]
else:  # CIFAR-10 from $RIDGELINE_DATA: 5,000 training images, 2,000 test images
    from ridgeline.cifar.data import load_cifar10
    d, n_train, epochs = load_cifar10().subset(5000), 5000, 5
    x = (torch.cat([d.train_images, d.test_images[:2000]]).float() - 120) / 64
    y = torch.cat([d.train_labels, d.test_labels[:2000]])
x_tr, y_tr, x_te, y_te = x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def objective(trial: optuna.Trial) -> float:
    lr = trial.suggest_float("lr", 1e-6, 10, log=True)
    momentum = trial.suggest_float("momentum", 0.0, 0.999)
    wd = trial.suggest_float("weight_decay", 1e-8, 1, log=True)
    net = nn.Sequential(*[m for c_in, c in ((3, 16), (16, 32), (32, 64)) for m in (
        nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
        nn.MaxPool2d(2))], nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    opt = torch.optim.SGD(net.parameters(), lr, momentum, nesterov=momentum > 0, weight_decay=wd)
    for epoch in range(epochs):
        loss_sum, batches = 0.0, torch.randperm(n_train).view(-1, 100)
        net.train()
        for b, idx in enumerate(batches, start=epoch * len(batches) + 1):
            t = b / (epochs * len(batches))  # lr: linear up for a quarter, then down to 0
            opt.param_groups[0]["lr"] = lr * min(4 * t, 4 / 3 * (1 - t))
            loss = nn.functional.cross_entropy(net(x_tr[idx]), y_tr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_sum += loss.item() / len(batches)
        if not math.isfinite(loss_sum):  # diverged: the sampler ranks it below every finished
            return math.nan  # run. (No stop at loss ≈ ln 10: from the bad start every early
            # run sits there, see docs/tuner.md "Pruning", and the search would stall.)
        with torch.no_grad():
            acc = (net.eval()(x_te).argmax(1) == y_te).float().mean().item()
        trial.report(acc, epoch)
        if epoch < epochs - 1 and trial.should_prune():
            raise optuna.TrialPruned()  # the sampler counts it worse than any finished run
    return acc


sampler = ridgeline.FlatDirectionSampler(start={"lr": 1e-3, "momentum": 0.5, "weight_decay": 1e-2},
                                         invariants=("lr*weight_decay/(1-momentum)",), seed=0)
pruner = optuna.pruners.PercentilePruner(90.0, n_startup_trials=5, n_warmup_steps=1)
study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
study.optimize(objective, n_trials=12 if TINY else 40)
print(f"best {study.best_value:.4f} at {study.best_params} after {len(study.trials)} trials")
