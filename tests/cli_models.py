"""Model factories for the CLI's ``package.module:factory`` form (tests put this folder on PYTHONPATH)."""

import torch


def small_cnn():
    """Conv (stride 2, bias) -> ReLU -> depthwise conv -> grouped conv -> global pool -> Linear."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1, groups=16),
        torch.nn.Conv2d(16, 32, 3, padding=(1, 2), dilation=(1, 2), groups=4, bias=False),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(32, 10),
    )


def not_a_module():
    return 42


def every_family_cnn():
    """A layer each schedule family applies to: 3x3 stride-1 conv (Winograd, direct, im2col), depthwise 3x3,
    grouped 1x1 (im2col), 1x1 conv."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1, groups=16),
        torch.nn.Conv2d(16, 16, 1, groups=2),
        torch.nn.Conv2d(16, 8, 1),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
    )
