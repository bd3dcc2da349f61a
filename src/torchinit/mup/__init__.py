"""Hyperparameters that transfer across width: the Maximal Update Parametrization (muP) for any model.

muP (Yang et al., "Tensor Programs V", 2022) sets each parameter's init variance and learning rate from how its
dims grow with width, so that what is tuned on a small model holds on a wide one. torchinit finds each parameter's
role by comparing the model with a base model (the same architecture at a smaller width, on the meta device if you
like) and stores nothing on the tensors:

- :func:`roles`: ``{name: Role}`` (``kind``: input, hidden, output or vector; ``width_mult``);
- :func:`policy`: muP's init as a :class:`~torchinit.Policy` (``apply_``, ``materialize_``, sharded models);
- :func:`param_groups`: the optimizer groups with muP's learning rates and weight decay (AdamW or SGD);
- :func:`forward_changes`: what muP needs in the forward pass (a tied readout's ``1/m``, attention scaled by
  ``1/d``), made with hooks and attributes, undone by ``remove()``;
- :func:`coord_check`: trains a model family at several widths and flags the layers whose activations move with
  width (``torchinit coordcheck`` on the command line).

Example::

    import torch, torchinit as ti, torchinit.mup as mup

    with torch.device("meta"):
        base = make_model(width=256)           # where the learning rate was tuned
    with ti.deferred():
        model = make_model(width=4096)
    ti.materialize_(model, mup.policy(model, base, std=0.02), seed=0)
    opt = torch.optim.AdamW(mup.param_groups(model, base, lr=3e-3, weight_decay=0.1))

The formulation and how it relates to the mup package: :mod:`torchinit.mup.rules` and ``docs/mup.md``.
"""

from torchinit.mup.coord import FAMILIES, PARAMETRIZATIONS, CoordCheck, Family, coord_check
from torchinit.mup.forward import ForwardChanges, forward_changes
from torchinit.mup.roles import KINDS, Role, roles
from torchinit.mup.rules import OPTIMIZERS, READOUTS, param_groups, policy

__all__ = ["KINDS", "OPTIMIZERS", "READOUTS", "Role", "roles", "policy", "param_groups", "coord_check", "CoordCheck",
           "Family", "FAMILIES", "PARAMETRIZATIONS", "forward_changes", "ForwardChanges"]
