"""Many small MLP heads evaluated as one batched matmul per layer.

DTI-Sprites predicts transformation parameters with one MLP per (layer, sprite) pair — L·K heads of
the same shape that all read the same features. Running them as L·K ``nn.Linear`` launches is slow;
stacking their weights runs each layer of all heads as a single matmul.
"""
from __future__ import annotations

import math

import torch
from torch import nn

N_HIDDEN_UNITS = 128


class BatchedMLP(nn.Module):
    """G independent MLPs ``F → hidden → … → out`` on shared input features.

    Each head is upstream's ``create_mlp``: ``Linear, ReLU`` then ``n_hidden_layers - 1`` times
    ``Linear, ReLU``, then a final ``Linear`` (just one ``Linear`` when ``n_hidden_layers = 0``). Weights
    are initialised per head like ``nn.Linear``; the last layer can start at zero (upstream's identity
    initialisation of every transformation head).

    Args:
        n_heads: G.
        in_features: F.
        out_features: parameters per head.
        n_hidden_layers: hidden layers per head (upstream: 2).
        hidden: hidden units (upstream: 128).
        zero_last: zero the last layer's weight and bias.

    Shapes:
        features ``(B, F)`` → ``(G, B, out_features)``.
    """

    def __init__(self, n_heads: int, in_features: int, out_features: int, n_hidden_layers: int = 2,
                 hidden: int = N_HIDDEN_UNITS, zero_last: bool = True):
        super().__init__()
        if n_heads < 1 or in_features < 1 or out_features < 1 or n_hidden_layers < 0:
            raise ValueError(f"BatchedMLP needs n_heads, in_features, out_features >= 1 and n_hidden_layers >= 0, "
                             f"got {n_heads}, {in_features}, {out_features}, {n_hidden_layers}")
        dims = [in_features] + [hidden] * n_hidden_layers + [out_features]
        self.n_heads, self.in_features, self.out_features = n_heads, in_features, out_features
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            w = torch.empty(n_heads, d_out, d_in)
            b = torch.empty(n_heads, d_out)
            bound = 1 / math.sqrt(d_in)
            for g in range(n_heads):  # nn.Linear's default init, per head
                nn.init.kaiming_uniform_(w[g], a=math.sqrt(5))
                nn.init.uniform_(b[g], -bound, bound)
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(b))
        if zero_last:
            with torch.no_grad():
                self.weights[-1].zero_()
                self.biases[-1].zero_()

    @property
    def n_layers(self) -> int:
        return len(self.weights)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.dim() != 2 or features.shape[1] != self.in_features:
            raise ValueError(f"features must be (B, {self.in_features}), got {tuple(features.shape)}")
        G, B = self.n_heads, features.shape[0]
        w0, b0 = self.weights[0], self.biases[0]
        # First layer: every head reads the same features, so one (B, F) × (F, G·H) matmul.
        h = (features @ w0.reshape(-1, w0.shape[-1]).T).view(B, G, -1).transpose(0, 1) + b0[:, None]
        for w, b in zip(self.weights[1:], self.biases[1:]):
            h = torch.baddbmm(b[:, None], torch.relu(h), w.transpose(1, 2))
        return h

    @torch.no_grad()
    def copy_head(self, dst: int, src: int) -> None:
        """Overwrite head ``dst``'s weights with head ``src``'s (sprite reassignment)."""
        for p in list(self.weights) + list(self.biases):
            p[dst] = p[src]
