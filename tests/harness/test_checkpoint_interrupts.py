"""A Ctrl-C or a failure inside a mid-cell checkpoint save reaches the runner as what it is.

torch's DCP wraps a rank's exception in ``CheckpointException``, a ``BaseException``: a Ctrl-C
that landed inside a save once escaped both the runner's ``KeyboardInterrupt`` and its
``Exception`` handlers, and the cell stayed ``running`` with no error (seen in CI, in
``test_ctrl_c_to_the_local_launcher_mid_training_leaves_no_job_running``).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from harness.engine.distributed import Group
from harness.engine.resume import StepCheckpoints


@pytest.mark.parametrize(("raised", "expected"), [(KeyboardInterrupt, KeyboardInterrupt), (OSError, RuntimeError)])
def test_an_exception_inside_a_checkpoint_save_is_raised_as_itself(tmp_path, monkeypatch, raised, expected):
    model = nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()

    def fail(*args, **kwargs):
        raise raised("disk gone" if raised is OSError else None)

    monkeypatch.setattr(torch, "save", fail)  # DCP writes each item with torch.save
    steps = StepCheckpoints(tmp_path / "steps", Group())
    with pytest.raises(expected) as err:
        steps.save(3, model, optimizer, {"step": 3})
    if expected is RuntimeError:
        assert str(err.value) == "checkpoint save failed: OSError: disk gone"
    assert steps.complete() == []  # nothing half-written passes for a checkpoint
