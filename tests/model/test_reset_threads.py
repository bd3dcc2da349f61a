"""torch_reset_(generator=...) never touches the global RNG: a thread drawing from it during the reset gets the
global stream, unrewound, and the reset's values do not depend on that thread."""

from __future__ import annotations

import threading

import torch
from torch import nn

import torchinit as ti
from torchinit.rng.seeds import draw_seed


def test_a_thread_drawing_during_torch_reset_gets_the_global_stream_unrewound(monkeypatch):
    drawn, original = [], nn.init.kaiming_uniform_

    def hands_over(*args, **kwargs):  # Linear's reset, after its weight's draws: another thread draws 64 numbers
        out = original(*args, **kwargs)
        other = threading.Thread(target=lambda: drawn.append(torch.rand(64)))
        other.start()
        other.join()
        return out

    model = nn.Linear(8, 8)
    monkeypatch.setattr(nn.init, "kaiming_uniform_", hands_over)
    torch.manual_seed(11)
    state = torch.get_rng_state()
    ti.presets.torch_reset_(model, generator=torch.Generator().manual_seed(0))
    expected = torch.Generator()
    expected.set_state(state)
    assert len(drawn) == 1 and torch.equal(drawn[0], torch.rand(64, generator=expected))  # the global stream
    assert torch.equal(torch.get_rng_state(), expected.get_state())  # advanced by the thread, never set back
    weight = model.weight.detach().clone()
    torch.manual_seed(99)  # another global state: the reset's values do not depend on it
    ti.presets.torch_reset_(model, generator=torch.Generator().manual_seed(0))
    assert torch.equal(model.weight, weight)


def test_torch_reset_with_a_generator_gives_what_a_seeded_global_rng_would():
    reference = nn.Linear(16, 4)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(draw_seed(torch.Generator().manual_seed(5)))
        reference.reset_parameters()
    model = nn.Linear(16, 4)
    ti.presets.torch_reset_(model, generator=torch.Generator().manual_seed(5))
    assert torch.equal(model.weight, reference.weight) and torch.equal(model.bias, reference.bias)
