"""``optim.schedule: step``: torch's StepLR, stepped once per epoch, as a multiplier of the base lr."""

import pytest
import torch

from polymodal.config import OptimConfig
from polymodal.train.deepspeed_config import lr_multiplier


def test_step_schedule_matches_torch_steplr_per_epoch():
    """The per-optimizer-step curve equals torch.optim.lr_scheduler.StepLR stepped at each epoch end."""
    steps_per_epoch, epochs, step_size, gamma = 3, 7, 2, 0.5
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    ref = torch.optim.lr_scheduler.StepLR(opt, step_size=step_size, gamma=gamma)
    expected = []
    for _ in range(epochs):
        expected += [opt.param_groups[0]["lr"]] * steps_per_epoch
        opt.step()
        ref.step()
    got = [lr_multiplier(s, total_steps=epochs * steps_per_epoch, warmup_steps=0, schedule="step",
                         steps_per_epoch=steps_per_epoch, step_size=step_size, gamma=gamma)
           for s in range(epochs * steps_per_epoch)]
    assert got == pytest.approx(expected)
    assert got[0] == 1.0 and got[2 * steps_per_epoch] == 0.5 and got[-1] == 0.125  # epochs 0-1, 2-3, ..., 6


def test_step_schedule_config_needs_step_size():
    assert OptimConfig(schedule="step", step_size=30, gamma=0.5).step_size == 30
    with pytest.raises(ValueError, match="step_size"):
        OptimConfig(schedule="step")
    with pytest.raises(ValueError, match="only to schedule 'step'"):
        OptimConfig(schedule="cosine", step_size=3)
