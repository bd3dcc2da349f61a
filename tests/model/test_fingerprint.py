"""torchinit.model.digest: a digest of every parameter's full value."""

import hashlib

import pytest
import torch
import torch.distributed as dist
from torch import nn

import torchinit as ti


def model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2)).to(dtype)


def test_equal_weights_equal_fingerprints_and_one_bit_differs():
    a, b = model(), model()
    assert ti.fingerprint(a) == ti.fingerprint(b) and len(ti.fingerprint(a)) == 64
    with torch.no_grad():
        w = b[0].weight.view(-1)
        w[3] = torch.nextafter(w[3], torch.tensor(float("inf")))  # one ulp
    assert ti.fingerprint(a) != ti.fingerprint(b)
    assert ti.fingerprint(model(1)) != ti.fingerprint(a)


def test_names_dtypes_and_shapes_count():
    a = model()
    assert ti.fingerprint(a) != ti.fingerprint(model(dtype=torch.float64))
    renamed = nn.Sequential()
    for name, child in zip(["x", "y", "z"], model()):
        renamed.add_module(name, child)
    assert ti.fingerprint(renamed) != ti.fingerprint(a)
    flat, reshaped = nn.Module(), nn.Module()
    flat.w = nn.Parameter(torch.arange(6.0))
    reshaped.w = nn.Parameter(torch.arange(6.0).view(2, 3))
    assert ti.fingerprint(flat) != ti.fingerprint(reshaped)


def test_the_digest_is_the_documented_one():
    m = nn.Module()
    m.w = nn.Parameter(torch.tensor([1.0, -2.0]))
    header = b"w\0torch.float32\0(2,)\0"
    want = hashlib.sha256(len(header).to_bytes(8, "little") + header + torch.tensor([1.0, -2.0]).numpy().tobytes())
    assert ti.fingerprint(m) == want.hexdigest()


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors is a no-op")  # torch's, building Linear(0, _)
def test_buffers_ties_and_empty_tensors():
    bn = nn.BatchNorm1d(3)
    assert ti.fingerprint(bn) != ti.fingerprint(bn, buffers=True)
    tied = nn.Module()
    tied.a = nn.Linear(2, 2)
    tied.b = tied.a  # the same parameters under two names
    assert ti.fingerprint(tied) != ti.fingerprint(tied.a)
    assert len(ti.fingerprint(nn.Linear(0, 3))) == 64


def test_errors():
    with pytest.raises(TypeError, match="model"):
        ti.fingerprint(torch.zeros(3))
    with pytest.raises(TypeError, match="buffers"):
        ti.fingerprint(nn.Linear(2, 2), buffers=1)
    with pytest.raises(ValueError, match="meta"):
        ti.fingerprint(nn.Linear(2, 2, device="meta"))


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available in this build")
def test_a_dtensor_is_gathered_before_hashing(tmp_path):
    public = pytest.importorskip("torch.distributed.tensor", reason="DTensor is public from torch 2.5")
    if not hasattr(public, "Shard"):
        pytest.skip(f"torch {torch.__version__} has DTensor in torch.distributed._tensor only (public from 2.5)")
    Shard, distribute_tensor = public.Shard, public.distribute_tensor
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        plain = model()
        sharded = model()
        mesh = init_device_mesh("cpu", (1,))
        for module in sharded:
            for name, p in list(module.named_parameters(recurse=False)):
                setattr(module, name, nn.Parameter(distribute_tensor(p.detach(), mesh, [Shard(0)])))
        assert ti.fingerprint(sharded) == ti.fingerprint(plain)
    finally:
        dist.destroy_process_group()
