"""The training loop's EMA update (training/loop.py) against its rule computed separately."""

from __future__ import annotations

import copy

import torch

from training.loop import update_ema


def test_update_ema_moves_every_parameter_by_the_reference_rule():
    """ema <- decay * ema + (1 - decay) * model (docs/REFERENCE.md §8), computed here from copies in float64."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2)).double()
    ema = copy.deepcopy(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))  # the online weights move away from the EMA copy
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    online = {k: v.clone() for k, v in model.state_dict().items()}
    update_ema(ema, model, decay=0.9)
    params = {name for name, _ in model.named_parameters()}
    for name, value in ema.state_dict().items():
        if name in params:
            torch.testing.assert_close(value, 0.9 * before[name] + 0.1 * online[name], rtol=1e-12, atol=1e-12)
        else:
            assert torch.equal(value, before[name]), name  # buffers (batch-norm statistics) are not averaged
    assert all(torch.equal(v, online[k]) for k, v in model.state_dict().items())  # the online model is untouched
