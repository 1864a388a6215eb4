"""Bias-free MLP in tiny-cuda-nn's parameter layout (specs/tcnn_nerfacc.md §B1).

``params`` is one flat fp32 vector, exactly a ``tcnn.Network(n_in, n_out, network_config())`` params
vector: the matrices row-major ``(out, in)`` like ``nn.Linear.weight``, layer after layer::

    W0 (n_neurons, in_pad), W1..W_{H-1} (n_neurons, n_neurons), W_out (out_pad, n_neurons)

with ``in_pad = next_multiple(n_input_dims, 16)`` and ``out_pad = next_multiple(n_output_dims, 16)``.
tcnn feeds zeros in the padded input columns and drops the padded outputs, so the torch path simply
uses ``W0[:, :n_in]`` and ``W_out[:n_out]``: the same function and the same gradients (those of the
padded slices are exactly zero in both), without concatenating zeros to every input.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fast_anerf.encoding.backend import check_backend, resolve_backend, tcnn_module
from fast_anerf.encoding.hashgrid import TCNN_BATCH_GRANULARITY

ALIGN = 16  # tcnn REQUIRED_ALIGNMENT for both FullyFusedMLP and CutlassMLP
FULLY_FUSED_WIDTHS = (16, 32, 64, 128)
K_ACT = 10.0  # tcnn's sharpness for Softplus / Squareplus


def _next_multiple(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def _squareplus(x: Tensor) -> Tensor:
    y = K_ACT * x
    return 0.5 * (y + torch.sqrt(y * y + 4.0)) / K_ACT


# tcnn activation name -> torch function. Softplus: tcnn computes log(exp(10x)+1)/10 and overflows to
# inf beyond x ~ 8.9 in fp32; torch's default threshold (x itself when 10x > 20) differs from the exact
# value by < 1e-9 there and stays finite, so it is kept on purpose.
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "None": lambda x: x,
    "ReLU": F.relu,
    "LeakyReLU": lambda x: F.leaky_relu(x, 0.01),
    "Exponential": torch.exp,
    "Sigmoid": torch.sigmoid,
    "Softplus": lambda x: F.softplus(x, beta=K_ACT),
    "Squareplus": _squareplus,
    "Tanh": torch.tanh,
    "SiLU": F.silu,
}


class TcnnMLP(nn.Module):
    """A tcnn-layout MLP: ``[N, n_input_dims] -> [N, n_output_dims]``, no biases.

    Args:
        n_input_dims: input width (padded to a multiple of 16 inside the layout).
        n_output_dims: output width (padded to a multiple of 16 inside the layout; only these are returned).
        n_neurons: hidden width. 16/32/64/128 select tcnn's FullyFusedMLP, anything else CutlassMLP.
        n_hidden_layers: hidden layers (= matrices - 1); 0 gives one matrix (CutlassMLP only).
        activation, output_activation: tcnn names (``ACTIVATIONS``); ``Sine`` is not supported.
        backend: ``"auto"``, ``"torch"`` or ``"tcnn"`` (``tcnn.Network``, fp16 on most GPUs: it matches the
            torch path only to ~1e-3 relative because tcnn accumulates in fp16).

    Init is Xavier-uniform ``U(±sqrt(6/(fan_in+fan_out)))`` per matrix, padded dims included, like tcnn.
    """

    def __init__(
        self,
        n_input_dims: int,
        n_output_dims: int,
        n_neurons: int = 64,
        n_hidden_layers: int = 1,
        activation: str = "ReLU",
        output_activation: str = "None",
        backend: Literal["auto", "torch", "tcnn"] = "auto",
    ) -> None:
        super().__init__()
        for name in (activation, output_activation):
            if name not in ACTIVATIONS:
                raise ValueError(f"unknown activation {name!r}: expected one of {', '.join(ACTIVATIONS)}")
        if n_input_dims < 1 or n_output_dims < 1 or n_neurons < 1 or n_hidden_layers < 0:
            raise ValueError("n_input_dims, n_output_dims, n_neurons must be >= 1 and n_hidden_layers >= 0")
        self.n_input_dims, self.n_output_dims = n_input_dims, n_output_dims
        self.n_neurons, self.n_hidden_layers = n_neurons, n_hidden_layers
        self.activation, self.output_activation = activation, output_activation
        self.backend = backend
        check_backend(backend)  # one-line UserError now when it cannot run on this machine
        in_pad, out_pad = _next_multiple(n_input_dims, ALIGN), _next_multiple(n_output_dims, ALIGN)
        if n_hidden_layers == 0:
            self.shapes = [(out_pad, in_pad)]
        else:
            self.shapes = [(n_neurons, in_pad)] + [(n_neurons, n_neurons)] * (n_hidden_layers - 1)
            self.shapes.append((out_pad, n_neurons))
        self.params = nn.Parameter(torch.empty(sum(r * c for r, c in self.shapes)))
        with torch.no_grad():
            for w in self.layer_weights():
                bound = math.sqrt(6.0 / (w.shape[0] + w.shape[1]))
                w.uniform_(-bound, bound)
        self._tcnn_native = None  # tcnn's native network object (no state), created on first CUDA call

    @property
    def n_params(self) -> int:
        return self.params.numel()

    @property
    def backend_name(self) -> str:
        """The backend that runs for the params' current device: ``"torch"`` or ``"tcnn"`` (the ``"cpu"``
        backend has kernels for the hash grid only; its MLPs are the torch ones)."""
        return "tcnn" if resolve_backend(self.backend, self.params.device) == "tcnn" else "torch"

    def network_config(self) -> dict:
        """The tcnn network JSON; FullyFusedMLP where tcnn supports it (tcnn itself falls back to
        CutlassMLP on GPUs older than sm75; the layout is identical)."""
        fused = self.n_neurons in FULLY_FUSED_WIDTHS and self.n_hidden_layers >= 1
        return {
            "otype": "FullyFusedMLP" if fused else "CutlassMLP",
            "activation": self.activation,
            "output_activation": self.output_activation,
            "n_neurons": self.n_neurons,
            "n_hidden_layers": self.n_hidden_layers,
        }

    def layer_weights(self) -> list[Tensor]:
        """Views into ``params`` in tcnn order.

        Shapes ``[(n_neurons, in_pad), (n_neurons, n_neurons) x (H-1), (out_pad, n_neurons)]``, or a single
        ``(out_pad, in_pad)`` when ``n_hidden_layers == 0``.
        """
        out, start = [], 0
        for rows, cols in self.shapes:
            out.append(self.params[start : start + rows * cols].view(rows, cols))
            start += rows * cols
        return out

    def forward(self, x: Tensor) -> Tensor:
        """``x [N, n_input_dims]`` float -> ``[N, n_output_dims]`` float32."""
        if x.ndim != 2 or x.shape[1] != self.n_input_dims:
            raise ValueError(f"expected input [N, {self.n_input_dims}], got {tuple(x.shape)}")
        if self.backend_name == "tcnn":
            return self._forward_tcnn(x)
        weights = self.layer_weights()
        act, out_act = ACTIVATIONS[self.activation], ACTIVATIONS[self.output_activation]
        # Padded input columns multiply zeros and padded output rows are dropped: slice them away.
        h = x.to(self.params.dtype)
        if len(weights) == 1:
            return out_act(F.linear(h, weights[0][: self.n_output_dims, : self.n_input_dims]))
        h = act(F.linear(h, weights[0][:, : self.n_input_dims]))
        for w in weights[1:-1]:
            h = act(F.linear(h, w))
        return out_act(F.linear(h, weights[-1][: self.n_output_dims]))

    def _forward_tcnn(self, x: Tensor) -> Tensor:
        """``tcnn.Network`` fed our ``params`` (cast to its precision), so ``params`` stays the only state."""
        tcnn = tcnn_module()
        if self._tcnn_native is None:
            net = tcnn.Network(self.n_input_dims, self.n_output_dims, self.network_config())
            if net.params.numel() != self.n_params:
                raise RuntimeError(f"tcnn has {net.params.numel()} params, layout says {self.n_params}")
            self._tcnn_native = net.native_tcnn_module
            self._tcnn_dtype, self._tcnn_loss_scale = net.dtype, net.loss_scale
        n = len(x)
        if n == 0:  # tcnn's CUTLASS path fails on empty batches (tcnn issue #275); keep params in the graph
            return x.new_zeros(0, self.n_output_dims, dtype=torch.float32) + 0.0 * self.params.sum()
        pad = -n % TCNN_BATCH_GRANULARITY
        xp = torch.nn.functional.pad(x.to(torch.float32), (0, 0, 0, pad)) if pad else x.to(torch.float32)
        params = self.params.to(self._tcnn_dtype).contiguous()
        out = tcnn.modules._module_function.apply(self._tcnn_native, xp.contiguous(), params, self._tcnn_loss_scale)
        return out[:n, : self.n_output_dims].to(torch.float32)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_tcnn_native"] = None  # native objects do not pickle; recreated lazily
        return state

    def extra_repr(self) -> str:
        return (
            f"{self.n_input_dims} -> {self.n_output_dims}, n_neurons={self.n_neurons}, "
            f"n_hidden_layers={self.n_hidden_layers}, activation={self.activation}, "
            f"output_activation={self.output_activation}, backend={self.backend}"
        )
