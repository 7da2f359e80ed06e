"""The session encoder in numpy (one session, float32), mirroring ``SessionRecommender.encode`` exactly.

Input: the item rows ``(L, d)`` of one session (no padding). Steps, as in
:mod:`pocketrec.models.session_encoder`: add learned positions, LayerNorm (eps 1e-12), post-LN Transformer
layers (fused qkv, causal softmax attention, exact-erf GELU feed-forward), then the SR-GNN attention
readout over all positions (queried by their mean, or by the last position and followed by ``W3 [z; h_last]``
for ``hybrid``; or just the last position), then optional L2 normalisation times ``scale``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_LN_EPS = 1e-12


# erfc(z) ~ t * exp(-z^2 + P(t)) with t = 1 / (1 + z/2): Numerical Recipes' ``erfcc`` (Chebyshev fit),
# fractional error below 1.2e-7 everywhere, i.e. exact at float32 precision. numpy has no erf and
# ``math.erf`` is scalar.
_NR = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807, -1.13520398,
       1.48851587, -0.82215223, 0.17087277)


def erf(x: np.ndarray) -> np.ndarray:
    """Vectorised error function in float64 (absolute error below 1.2e-7)."""
    x = np.asarray(x, dtype=np.float64)
    z = np.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = np.zeros_like(t)
    for c in reversed(_NR):
        poly = poly * t + c
    erfc = t * np.exp(-z * z + poly)
    return np.where(x >= 0, 1.0 - erfc, erfc - 1.0)


def gelu(x: np.ndarray) -> np.ndarray:
    """``x * Phi(x)`` with the exact error function (torch's default ``F.gelu``)."""
    x64 = x.astype(np.float64)
    return (0.5 * x64 * (1.0 + erf(x64 / np.sqrt(2.0)))).astype(np.float32)


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = _LN_EPS) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + np.float32(eps)) * weight + bias


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


class NumpyEncoder:
    """Weights from the artifact's ``encoder/`` tensors (names without the prefix), cast to float32 once."""

    def __init__(self, weights: dict[str, np.ndarray], config: dict[str, Any]) -> None:
        self.config = config
        self.dim = int(config["dim"])
        self.heads = int(config["heads"])
        self.max_len = int(config["max_len"])
        self.readout = str(config.get("readout", "attention"))
        self.normalize = bool(config.get("normalize", False))
        self.scale = np.float32(config.get("scale", 1.0))
        self.w = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}
        self.num_layers = int(config["layers"])
        needed = ["positions.weight", "input_norm.weight", "input_norm.bias"]
        for i in range(self.num_layers):
            needed += [f"layers.{i}.{n}" for n in ("qkv.weight", "qkv.bias", "out.weight", "out.bias",
                                                    "norm1.weight", "norm1.bias", "ff1.weight", "ff1.bias",
                                                    "ff2.weight", "ff2.bias", "norm2.weight", "norm2.bias")]
        if self.readout in ("attention", "hybrid"):
            needed += ["readout.w1.weight", "readout.w1.bias", "readout.w2.weight", "readout.v.weight"]
        if self.readout == "hybrid":
            needed.append("readout.w3.weight")
        if self.readout == "item":
            needed.append("readout.v.weight")
        missing = [n for n in needed if n not in self.w]
        if missing:
            raise ValueError(f"encoder weights are missing {missing[:3]}")
        mask = np.triu(np.ones((self.max_len, self.max_len), dtype=bool), k=1)
        self._causal = np.where(mask, np.float32(-np.inf), np.float32(0.0)).astype(np.float32)

    def _linear(self, x: np.ndarray, name: str, bias: bool = True) -> np.ndarray:
        y = x @ self.w[f"{name}.weight"].T
        return y + self.w[f"{name}.bias"] if bias else y

    def _layer(self, x: np.ndarray, i: int) -> np.ndarray:
        p = f"layers.{i}"
        length, dim = x.shape
        heads, dh = self.heads, dim // self.heads
        qkv = self._linear(x, f"{p}.qkv").reshape(length, 3, heads, dh).transpose(1, 2, 0, 3)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (H, L, dh)
        att = (q @ k.transpose(0, 2, 1)) * np.float32(1.0 / np.sqrt(dh)) + self._causal[:length, :length]
        ctx = (_softmax(att) @ v).transpose(1, 0, 2).reshape(length, dim)
        x = layer_norm(x + self._linear(ctx, f"{p}.out"), self.w[f"{p}.norm1.weight"], self.w[f"{p}.norm1.bias"])
        ff = self._linear(gelu(self._linear(x, f"{p}.ff1")), f"{p}.ff2")
        return layer_norm(x + ff, self.w[f"{p}.norm2.weight"], self.w[f"{p}.norm2.bias"])

    def hidden(self, item_rows: np.ndarray) -> np.ndarray:
        length = item_rows.shape[0]
        if not 1 <= length <= self.max_len:
            raise ValueError(f"session length must be in 1..{self.max_len}, got {length}")
        h = layer_norm(item_rows + self.w["positions.weight"][:length], self.w["input_norm.weight"],
                       self.w["input_norm.bias"])
        for i in range(self.num_layers):
            h = self._layer(h, i)
        return h

    def encode(self, item_rows: np.ndarray) -> np.ndarray:
        """The query vector ``(d,)`` of one session given its item rows ``(L, d)``."""
        item_rows = np.asarray(item_rows, dtype=np.float32)
        h = self.hidden(item_rows)
        if self.readout == "item":
            alpha = _softmax(self._linear(h, "readout.v", bias=False)[:, 0])
            z = alpha @ item_rows
        elif self.readout in ("attention", "hybrid"):
            query = h.mean(0) if self.readout == "attention" else h[-1]
            gate = _sigmoid(self._linear(np.tanh(h), "readout.w1") + query @ self.w["readout.w2.weight"].T)
            beta = gate @ self.w["readout.v.weight"].T  # (L, 1)
            z = (beta * h).sum(0)
            if self.readout == "hybrid":
                z = np.concatenate([z, h[-1]]) @ self.w["readout.w3.weight"].T
        else:
            z = h[-1]
        if self.normalize:
            z = z / max(float(np.sqrt(z @ z)), 1e-12) * self.scale
        return z.astype(np.float32)
