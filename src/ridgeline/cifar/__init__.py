"""One training run on CIFAR-10: data, augmentation, ResNet-9, train() → RunResult. No Optuna."""
