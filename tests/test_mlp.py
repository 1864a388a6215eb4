"""TcnnMLP vs an explicit nn.Linear(bias=False) stack on zero-padded inputs (tcnn layout, spec §B1)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fast_anerf.encoding.backend import tcnn_available
from fast_anerf.encoding.mlp import ACTIVATIONS, TcnnMLP
from fast_anerf.errors import UserError

CASES = [
    # n_in, n_out, n_neurons, n_hidden_layers, activation, output_activation
    (3, 1, 64, 1, "ReLU", "None"),
    (32, 16, 64, 2, "ReLU", "Sigmoid"),
    (19, 17, 24, 3, "Softplus", "Exponential"),
    (16, 4, 128, 1, "SiLU", "Tanh"),
    (5, 3, 32, 0, "ReLU", "LeakyReLU"),
]


def reference_stack(mlp: TcnnMLP) -> nn.Sequential:
    """nn.Linear(bias=False) layers filled from the flat vector in tcnn order, on padded widths."""
    layers: list[nn.Module] = []
    offset, flat = 0, mlp.params.detach()
    for i, (rows, cols) in enumerate(mlp.shapes):
        lin = nn.Linear(cols, rows, bias=False)
        with torch.no_grad():
            lin.weight.copy_(flat[offset : offset + rows * cols].view(rows, cols))  # row-major (out, in)
        offset += rows * cols
        layers.append(lin)
        name = mlp.activation if i < len(mlp.shapes) - 1 else mlp.output_activation
        layers.append(Lambda(ACTIVATIONS[name]))
    assert offset == flat.numel()
    return nn.Sequential(*layers)


class Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def pad_input(x: torch.Tensor, width: int) -> torch.Tensor:
    return torch.cat([x, x.new_zeros(len(x), width - x.shape[1])], dim=1)


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[1]}-{c[2]}x{c[3]}" for c in CASES])
def test_matches_linear_stack_outputs_and_grads(case):
    n_in, n_out, width, hidden, act, out_act = case
    torch.manual_seed(0)
    mlp = TcnnMLP(n_in, n_out, width, hidden, act, out_act, backend="torch")
    in_pad, out_pad = math.ceil(n_in / 16) * 16, math.ceil(n_out / 16) * 16
    flat = torch.randn(mlp.n_params) * 0.2  # "load" a tcnn-ordered vector
    with torch.no_grad():
        mlp.params.copy_(flat)
    ref = reference_stack(mlp)

    x = torch.randn(37, n_in, requires_grad=True)
    y = mlp(x)
    assert y.shape == (37, n_out)
    y_ref_full = ref(pad_input(x, in_pad))
    assert y_ref_full.shape == (37, out_pad)
    y_ref = y_ref_full[:, :n_out]
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)

    g = torch.randn_like(y)
    gx, gp = torch.autograd.grad(y, [x, mlp.params], g)
    ref_params = [m.weight for m in ref if isinstance(m, nn.Linear)]
    gx_ref, *gw_ref = torch.autograd.grad(y_ref, [x, *ref_params], g)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gp, torch.cat([w.reshape(-1) for w in gw_ref]), rtol=1e-5, atol=1e-6)
    # The padded input columns and padded output rows get exactly zero gradient, as in tcnn.
    first, last = mlp.shapes[0], mlp.shapes[-1]
    g_first = gp[: first[0] * first[1]].view(first)
    g_last = gp[gp.numel() - last[0] * last[1] :].view(last)
    assert torch.all(g_first[:, n_in:] == 0) and torch.all(g_last[n_out:] == 0)


def test_layer_weights_shapes_views_and_init():
    mlp = TcnnMLP(3, 4, n_neurons=64, n_hidden_layers=3, backend="torch")
    shapes = [tuple(w.shape) for w in mlp.layer_weights()]
    assert shapes == [(64, 16), (64, 64), (64, 64), (16, 64)]
    assert mlp.n_params == 64 * 16 + 2 * 64 * 64 + 16 * 64
    w0 = mlp.layer_weights()[0]
    assert w0.data_ptr() == mlp.params.data_ptr()  # a view, not a copy
    for w in mlp.layer_weights():  # Xavier-uniform on the padded shape
        bound = math.sqrt(6.0 / (w.shape[0] + w.shape[1]))
        assert w.abs().max() <= bound and w.abs().max() > 0.5 * bound
    assert [tuple(w.shape) for w in TcnnMLP(20, 3, 48, 0, backend="torch").layer_weights()] == [(16, 32)]
    assert set(mlp.state_dict()) == {"params"}


def test_network_config_and_activations():
    cfg = TcnnMLP(32, 16, 64, 2, "ReLU", "Sigmoid", backend="torch").network_config()
    assert cfg == {
        "otype": "FullyFusedMLP",
        "activation": "ReLU",
        "output_activation": "Sigmoid",
        "n_neurons": 64,
        "n_hidden_layers": 2,
    }
    assert TcnnMLP(3, 1, 48, 1, backend="torch").network_config()["otype"] == "CutlassMLP"
    assert TcnnMLP(3, 1, 64, 0, backend="torch").network_config()["otype"] == "CutlassMLP"
    x = torch.linspace(-3, 3, 101, dtype=torch.float64)
    torch.testing.assert_close(ACTIVATIONS["Softplus"](x), torch.log(torch.exp(10 * x) + 1) / 10)
    torch.testing.assert_close(ACTIVATIONS["LeakyReLU"](x), torch.where(x > 0, x, 0.01 * x))
    with pytest.raises(ValueError, match="unknown activation"):
        TcnnMLP(3, 1, activation="Sine")
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        TcnnMLP(3, 1, backend="torch")(torch.zeros(2, 4))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_tcnn_backend_unavailable_is_a_user_error():
    assert TcnnMLP(3, 1).backend_name == "torch"
    with pytest.raises(UserError, match="tinycudann is unavailable.*--backend torch"):
        TcnnMLP(3, 1, backend="tcnn")


@pytest.mark.skipif(not torch.cuda.is_available() or not tcnn_available(), reason="needs CUDA and tinycudann")
def test_tcnn_matches_torch():
    torch.manual_seed(0)
    mlp = TcnnMLP(32, 4, 64, 2, "ReLU", "None", backend="tcnn").cuda()
    assert mlp.backend_name == "tcnn"
    x = torch.randn(1000, 32, device="cuda", requires_grad=True)
    y = mlp(x)
    mlp_t = TcnnMLP(32, 4, 64, 2, "ReLU", "None", backend="torch").cuda()
    mlp_t.load_state_dict(mlp.state_dict())
    y_t = mlp_t(x)
    # tcnn rounds inputs and weights to fp16 and accumulates in fp16: ~1e-3 of the output's scale (up to ~2 here).
    torch.testing.assert_close(y, y_t, rtol=2e-3, atol=5e-3)
    g = torch.randn_like(y)
    gp, gx = torch.autograd.grad(y, [mlp.params, x], g)
    gp_t, gx_t = torch.autograd.grad(y_t, [mlp_t.params, x], g)
    torch.testing.assert_close(gp, gp_t, rtol=1e-2, atol=1e-2)
    # The input gradient too: training reaches the hash grid (and the poses) through it.
    torch.testing.assert_close(gx, gx_t, rtol=1e-2, atol=1e-2)


def test_every_activation_equals_tinycudanns_formula():
    """Each tcnn activation name against its formula written out here (specs/tcnn_nerfacc.md §B; K = 10), not
    against the module's own table, on values across [-4, 4]."""
    from fast_anerf.encoding.mlp import ACTIVATIONS

    x = torch.linspace(-4.0, 4.0, 161, dtype=torch.float64)
    expected = {
        "None": x,
        "ReLU": torch.where(x > 0, x, torch.zeros_like(x)),
        "LeakyReLU": torch.where(x > 0, x, 0.01 * x),
        "Exponential": math.e**x,
        "Sigmoid": 1.0 / (1.0 + math.e ** (-x)),
        "Softplus": (math.e ** (10.0 * x) + 1.0).log() / 10.0,
        "Squareplus": 0.5 * (10.0 * x + ((10.0 * x) ** 2 + 4.0).sqrt()) / 10.0,
        "Tanh": (math.e ** (2 * x) - 1.0) / (math.e ** (2 * x) + 1.0),
        "SiLU": x / (1.0 + math.e ** (-x)),
    }
    assert set(ACTIVATIONS) == set(expected)
    for name, want in expected.items():
        torch.testing.assert_close(ACTIVATIONS[name](x), want, rtol=1e-9, atol=1e-9, msg=name)
