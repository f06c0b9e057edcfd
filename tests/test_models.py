"""Convolutional models (ResNet-18, CLNP Tables 2-3, the small conv net) and PSP on them."""

import math

import pytest
import torch
import torch.nn as nn

from superpose import models
from superpose.convert import BATCHNORM_OPTIONS, superpose
from superpose.layers import PerTaskBatchNorm, SuperposedConv2d, SuperposedLinear
from superpose.methods import METHODS
from superpose.methods.multihead import last_linear

CONV_MODELS = ["resnet18", "clnp-narrow", "clnp-wide", "convnet"]
SHAPES = [(1, 28, 28), (3, 32, 32)]


def small_resnet(classes: int = 10, shape=(3, 32, 32)) -> nn.Module:
    return models.create("resnet18", input_shape=shape, classes=classes, width=4)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", CONV_MODELS)
def test_output_shape_for_both_input_kinds(name, shape):
    torch.manual_seed(0)
    net = models.create(name, input_shape=shape, classes=7, width=4)
    net.eval()
    y = net(torch.rand(3, *shape))
    assert y.shape == (3, 7)
    assert torch.isfinite(y).all()


def test_registry_names_the_conv_models():
    assert set(CONV_MODELS) <= set(models.names())


def paper_size(name: str, **kw) -> nn.Module:
    """A model at the paper's width (``width`` left to the model's default)."""
    return models.create(name, **kw)


def conv_channels(net: nn.Module) -> list[int]:
    return [m.out_channels for m in net.modules() if isinstance(m, nn.Conv2d)]


def test_resnet18_paper_sizes():
    net = paper_size("resnet18", input_shape=(3, 32, 32), classes=10)
    # The CIFAR ResNet-18: 11,173,962 parameters with 10 classes (BatchNorm affine included).
    assert sum(p.numel() for p in net.parameters()) == 11_173_962
    first = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    assert first.kernel_size == (3, 3) and first.stride == (1, 1)  # 3x3 stem
    assert not any(isinstance(m, nn.MaxPool2d) for m in net.modules())  # no max-pool
    assert sum(isinstance(m, nn.Conv2d) for m in net.modules()) == 20  # 17 + 3 shortcut convs
    assert not any(isinstance(m, nn.ReLU) and m.inplace for m in net.modules())


def test_clnp_table2_architecture():
    net = paper_size("clnp-narrow", input_shape=(3, 32, 32), classes=10)
    assert conv_channels(net) == [32, 32, 64, 64]
    dense = [(m.in_features, m.out_features) for m in net.modules() if isinstance(m, nn.Linear)]
    assert dense == [(64 * 8 * 8, 512), (512, 10)]
    assert [m.p for m in net.modules() if isinstance(m, nn.Dropout)] == [0.25, 0.25, 0.5]
    # "95 % of the parameters are concentrated in the dense layer" (section 3.2).
    total = sum(p.numel() for p in net.parameters())
    assert net[13].weight.numel() / total > 0.95


def test_clnp_table3_architecture():
    net = paper_size("clnp-wide", input_shape=(3, 32, 32), classes=10)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [128, 256, 512, 1024, 2048, 10]
    assert [(c.stride[0], c.padding[0]) for c in convs] == [(1, 1), (2, 0), (1, 0), (2, 1),
                                                            (1, 0), (1, 0)]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 5
    assert not any(isinstance(m, nn.Linear) for m in net.modules())  # fully convolutional


def test_default_widths_are_exposed():
    for name, width in [("resnet18", 64), ("clnp-narrow", 32), ("clnp-wide", 128),
                        ("convnet", 16)]:
        assert models.MODELS.get(name).default_width == width


def test_bad_sizes_are_clear_errors():
    with pytest.raises(ValueError, match="image inputs"):
        models.create("resnet18", input_shape=(784,), classes=10, width=4)
    with pytest.raises(ValueError, match="25x25"):
        models.create("clnp-wide", input_shape=(3, 8, 8), classes=10, width=4)
    with pytest.raises(ValueError, match="positive"):
        models.create("convnet", input_shape=(1, 28, 28), classes=0, width=4)


def test_superpose_resnet18_converts_every_conv():
    net = small_resnet()
    n_conv = sum(isinstance(m, nn.Conv2d) for m in net.modules())
    model = superpose(net, context="binary", num_tasks=3, seed=0)
    mods = list(model.modules())
    assert sum(isinstance(m, SuperposedConv2d) for m in mods) == n_conv == 20
    assert sum(isinstance(m, SuperposedLinear) for m in mods) == 1
    assert not any(type(m) in (nn.Conv2d, nn.Linear) for m in mods)
    x = torch.rand(4, 3, 32, 32)
    out0, out1 = model(x, task=0), model(x, task=1)
    assert out0.shape == (4, 10) and not torch.allclose(out0, out1)


def test_multihead_finds_the_resnet_head():
    net = small_resnet()
    parent, attr = last_linear(net)
    assert getattr(parent, attr) is net.fc


@pytest.mark.parametrize("batchnorm", BATCHNORM_OPTIONS)
def test_superposed_resnet18_trains_with_each_batchnorm_option(batchnorm):
    torch.manual_seed(0)
    model = superpose(small_resnet(), context="binary", num_tasks=2, seed=0, batchnorm=batchnorm)
    if batchnorm == "none-stats":  # the authors' ResNet: no affine, no running statistics
        bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        assert bns and all(not m.affine and not m.track_running_stats for m in bns)
    if batchnorm == "per-task":
        assert sum(isinstance(m, PerTaskBatchNorm) for m in model.modules()) == 20
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    before = [p.detach().clone() for p in model.parameters()]
    model.train()
    for task in (0, 1):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x, task=task), y)
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    model.eval()
    assert torch.isfinite(model(x, task=0)).all()


def train_only_batchnorm_on_task_1(model: nn.Module, steps: int = 3) -> None:
    """Train task 1 moving only the BatchNorm parameters (and, in train mode, statistics)."""
    bn_params = [p for m in model.modules() if isinstance(m, nn.BatchNorm2d)
                 for p in m.parameters()]
    opt = torch.optim.SGD(bn_params, lr=0.5)
    gen = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(steps):
        x = torch.rand(8, 3, 32, 32, generator=gen) * 2
        y = torch.randint(0, 10, (8,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x, task=1), y).backward()
        opt.step()


@pytest.mark.parametrize("batchnorm", ["per-task", "shared"])
def test_per_task_batchnorm_keeps_task_0_unchanged(batchnorm):
    torch.manual_seed(0)
    model = superpose(small_resnet(), context="binary", num_tasks=2, seed=0, batchnorm=batchnorm)
    x = torch.rand(5, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        before = model(x, task=0).clone()
    train_only_batchnorm_on_task_1(model)
    model.eval()
    with torch.no_grad():
        after = model(x, task=0)
    if batchnorm == "per-task":  # task 0's affine parameters and running statistics untouched
        assert torch.equal(before, after)
    else:  # shared: task 1's statistics and affine updates reach task 0
        assert not torch.allclose(before, after)


def test_complex_psp_runs_on_resnet18():
    torch.manual_seed(0)
    model = superpose(small_resnet(), context="complex", num_tasks=2, seed=0)
    out = model(torch.rand(2, 3, 32, 32), task=1)
    assert out.shape == (2, 10) and not out.is_complex() and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["clnp-narrow", "clnp-wide", "convnet"])
def test_clnp_accepts_the_conv_models(name):
    if "clnp" not in METHODS:
        pytest.skip("the clnp method is not registered")
    from superpose.methods.clnp import ClnpNet

    net = ClnpNet(models.create(name, input_shape=(3, 32, 32), classes=10, width=4), num_heads=2)
    assert net.num_hidden == {"clnp-narrow": 5, "clnp-wide": 5, "convnet": 3}[name]
    net.eval()
    assert net(torch.rand(2, 3, 32, 32), head=1).shape == (2, 10)


def test_glorot_init_matches_tensorflow_default_and_torch_keeps_pytorch_default():
    torch.manual_seed(0)
    net = models.create("mlp", in_features=784, hidden=[256, 256], classes=10)
    before = [p.detach().clone() for p in net.parameters()]
    models.initialise(net, "torch")
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    models.initialise(net, "glorot")
    for layer in (m for m in net.modules() if isinstance(m, torch.nn.Linear)):
        limit = math.sqrt(6 / (layer.in_features + layer.out_features))
        w = layer.weight.detach()
        assert w.abs().max() <= limit
        # U(-a, a) has standard deviation a / sqrt(3); PyTorch's default is 1/sqrt(fan_in)/sqrt(3)
        assert abs(w.std().item() - limit / math.sqrt(3)) < 0.05 * limit
        assert torch.count_nonzero(layer.bias) == 0
    with pytest.raises(ValueError, match="unknown init"):
        models.initialise(net, "xavier")
