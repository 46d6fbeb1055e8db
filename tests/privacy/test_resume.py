"""A killed DP run resumed with ``resume`` continues the same ledger, bit for bit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from raigate.errors import ConfigError
from raigate.privacy.ledger import Ledger
from raigate.privacy.train import PrivateTraining


def test_resume_continues_the_same_ledger_and_weights(
    tiny_dp: PrivateTraining,
    dp_runner,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    out = tmp_path / "run"
    # Killed after step 4; checkpoints every 3 steps, so step 4 is lost with the process.
    part = dp_runner(out, stop_after_steps=4, checkpoint_every=3)
    assert part.stopped_early and part.ledger.steps == 3 and not part.ledger.complete
    assert Ledger.load(out) == part.ledger  # on disk: the budget of the checkpointed state
    assert part.ledger.epsilon < tiny_dp.ledger.epsilon
    with pytest.raises(ConfigError, match=r"holds an unfinished DP run \(3 of 6 steps\)"):
        dp_runner(out)  # starting over would spend the budget again
    with pytest.raises(ConfigError, match=r"epsilon=3\.0, this run has 2\.0"):
        dp_runner(resume=out, epsilon=2.0)
    # Resuming replays step 4 from the checkpoint with the saved sample and noise generators.
    done = dp_runner(resume=out)
    assert done.ledger.complete and done.ledger.steps == 6
    assert done.ledger.history == tiny_dp.ledger.history  # never reset, never double-counted
    assert done.ledger.epsilon == tiny_dp.ledger.epsilon <= 3.0
    assert done.ledger.sampler == tiny_dp.ledger.sampler  # draws counted across the resume
    a, b = done.model.net.state_dict(), tiny_dp.model.net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # identical to the uninterrupted run
