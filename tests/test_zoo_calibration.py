"""BatchNorm recalibration of seeded zoo/hub models (compiler/zoo.py ``calibrate_batchnorm``).

torchvision's Inception-v3 failed to export at its corpus size (1x3x128x128) with an internal error: calibration ran
the whole model in train mode, which runs the auxiliary classifier (inference never does), whose 5x5 conv is larger
than its input at that size. Calibration now runs the model as inference does, with only the BatchNorm layers
collecting statistics, and a forward that fails is a user error naming the input shape."""

from __future__ import annotations

import pytest
import torch

from convpipe.compiler.zoo import calibrate_batchnorm
from convpipe.errors import ConvpipeError


class TrainOnlyBranch(torch.nn.Module):
    """A BN net with a branch that runs only in train mode and fails on small inputs (like Inception's AuxLogits)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.aux = torch.nn.Conv2d(4, 4, 9)  # needs >= 9x9

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        if self.training:
            self.aux(torch.nn.functional.avg_pool2d(y, 4))
        return y


def test_calibration_runs_the_inference_path_and_updates_batchnorm():
    m = TrainOnlyBranch()
    calibrate_batchnorm(m, (1, 3, 16, 16))  # raised 'Kernel size can't be greater than actual input size' before
    assert not m.training and not m.bn.training
    assert m.bn.num_batches_tracked.item() > 0 and float(m.bn.running_var.mean()) != 1.0


def test_a_failing_forward_is_a_user_error_naming_the_shape():
    class Broken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = torch.nn.BatchNorm2d(3)

        def forward(self, x):
            return self.bn(x).view(7, -1, 5)

    with pytest.raises(ConvpipeError, match=r"1x3x8x8"):
        calibrate_batchnorm(Broken(), (1, 3, 8, 8))
