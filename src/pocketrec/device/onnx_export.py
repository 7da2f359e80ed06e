"""ONNX export: the same model as the device artifact, as one ONNX graph (single file, no external data).

Graph: input ``item_ids`` int64 ``(1, L)`` (internal ids, right-padded with 0 or exact length,
``1 <= L <= max_len``); outputs ``scores`` float32 ``(1, k)`` and ``item_indices`` int64 ``(1, k)``
(internal ids, best first; map back with the ``vocab`` metadata, internal id ``i`` is ``vocab[i-1]``).
The manifest of the safetensors artifact (format, version, table description, encoder config, num_items,
vocab) is stored in the model's ``metadata_props`` (with ``format`` = ``pocketrec-device-onnx``).

The graph uses flat lookups only (``Gather`` from ``F.embedding`` / ``index_select``):

* dense: the rows are an initializer; scores are one ``MatMul``;
* tt: the graph holds the cores and rebuilds all rows (one STP chain over the whole catalogue) then
  scores with a ``MatMul``; the cores are what is stored, not the rows;
* quantized: int8 values (int4 unpacked to int8) and float32 scales, dequantised in the graph;
* codebook: codebooks plus codes (uint8 for K <= 256, else int32; bit-packed codes are stored unpacked
  since ONNX has no bit type), scores through the per-codebook lookup tables, ``M`` gathers and a sum.

In cosine mode the item norms are a ``(num_items + 1,)`` float32 initializer.

Refused like the safetensors artifact (``ValueError``, nothing written): NaN/inf weights, a duplicate id,
a target that is a directory or inside a checkpoint folder; also a missing ``onnx`` extra (``onnx`` and
``onnxscript``, which the export needs). ONNX files carry no checksum nor signature.
"""

from __future__ import annotations

import importlib
import json
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pocketrec.device.artifact import ExportedFile, build_artifact, check_target, resolve_model, write_atomically
from pocketrec.device.runtime import ONNX_FORMAT, OnnxModel  # noqa: F401  (OnnxModel re-exported)
from pocketrec.models.session_encoder import last_positions


class _OnnxRecommender(nn.Module):
    """Encoder of a :class:`SessionRecommender` plus an export-friendly copy of its item table."""

    def __init__(self, model: Any, k: int) -> None:
        super().__init__()
        self.config = model.config
        self.kind = model.table.kind
        self.k = int(k)
        self.positions = model.positions
        self.input_norm = model.input_norm
        self.layers = model.layers
        self.readout = model.readout
        table = model.table
        self.num_rows = table.num_rows
        if self.kind == "dense":
            self.weight = nn.Parameter(table.weight.detach().clone(), requires_grad=False)
        elif self.kind == "tt":
            self.tt = table
        elif self.kind == "quantized":  # int4 is stored unpacked as int8 (ONNX has no 4-bit type at opset 17)
            self.register_buffer("values", table.values.detach().clone())
            self.register_buffer("scales", table.scales.detach().clone())
        elif self.kind == "codebook":
            self.M, self.K = table.M, table.K
            codes = table.codes.detach().clone()
            codes = codes.to(torch.uint8) if table.K <= 256 else codes.to(torch.int32)
            self.register_buffer("codes_t", codes.t().contiguous())  # (M, n + 1); column 0 unused
            self.books = nn.Parameter(table.stored_codebooks().detach().clone(), requires_grad=False)
        else:
            raise ValueError(f"ONNX export does not support item-table kind {self.kind!r}")
        if self.config.normalize:
            with torch.no_grad():
                norms = model.item_norms().detach().clone()
            self.register_buffer("norms", norms)
        pad = torch.zeros(self.num_rows, dtype=torch.bool)
        pad[0] = True
        self.register_buffer("pad", pad)

    def _codebook_rows(self, ids: Tensor) -> Tensor:
        flat = ids.reshape(-1)
        out = None
        for m in range(self.M):
            codes = self.codes_t[m].index_select(0, flat).long()
            part = F.embedding(codes, self.books[m])
            out = part if out is None else out + part
        return out.reshape(*ids.shape, -1)

    def _rows_and_weight(self, ids: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.kind == "dense":
            return F.embedding(ids, self.weight), self.weight
        if self.kind == "tt":
            weight = self.tt.full_weight()
            return F.embedding(ids, weight), weight
        if self.kind == "quantized":
            weight = self.values.to(torch.float32) * self.scales.unsqueeze(1)
            return F.embedding(ids, weight), weight
        return self._codebook_rows(ids), None

    def _scores(self, q: Tensor, weight: Tensor | None) -> Tensor:
        if weight is not None:
            return q @ weight.t()
        lut = torch.einsum("bd,mkd->bmk", q, self.books)  # (1, M, K)
        scores = None
        for m in range(self.M):
            part = lut[:, m].index_select(1, self.codes_t[m].long())
            scores = part if scores is None else scores + part
        return scores

    def forward(self, item_ids: Tensor) -> tuple[Tensor, Tensor]:
        mask = item_ids != 0
        rows, weight = self._rows_and_weight(item_ids)
        rows = rows * mask.unsqueeze(-1).to(rows.dtype)
        length = item_ids.shape[1]
        h = self.input_norm(rows + self.positions.weight[:length].unsqueeze(0))
        for layer in self.layers:
            h = layer(h)
        z = self.readout.pool(h, mask, rows) if self.readout is not None else last_positions(h, mask)
        if self.config.normalize:
            z = F.normalize(z, dim=-1) * self.config.scale
        scores = self._scores(z, weight)
        if self.config.normalize:
            scores = scores / self.norms.unsqueeze(0)
        scores = torch.where(self.pad.unsqueeze(0), torch.full_like(scores, torch.finfo(scores.dtype).min), scores)
        values, indices = torch.topk(scores, self.k, dim=1)
        return values, indices


#: What the ``onnx`` extra of pyproject.toml provides and the export needs (onnxruntime only runs the file).
_EXPORT_NEEDS = ("onnx", "onnxscript")


class MissingExtraError(ImportError, ValueError):
    """An optional dependency is not installed (a ``ValueError`` too, so the CLI shows one line)."""


def require_onnx() -> None:
    """Raise :class:`MissingExtraError` unless the packages the ONNX export needs can be imported."""
    for name in _EXPORT_NEEDS:
        try:
            importlib.import_module(name)
        except ImportError:
            raise MissingExtraError("ONNX export needs the onnx extra: pip install 'pocketrec[onnx]'") from None


def export_onnx(checkpoint_or_model: Any, path: str | Path, k: int = 100, vocab: list[str] | None = None,
                dataset: str | None = None, opset: int = 17) -> ExportedFile:
    """Write the ONNX graph of a checkpoint folder (or a model) to ``path`` atomically; returns ``path`` (with
    ``nbytes``, the size written).

    ``k`` (capped at ``num_items``) is the number of ranked items the graph returns.
    """
    path = check_target(path)
    require_onnx()
    import onnx

    model, vocab, dataset = resolve_model(checkpoint_or_model, vocab, dataset)
    model = model.eval()
    _, manifest = build_artifact(model, vocab, False, dataset or "")
    manifest = {key: value for key, value in manifest.items() if key not in ("checksum", "signature")}
    manifest["format"] = ONNX_FORMAT
    manifest["vocab"] = json.dumps([str(v) for v in vocab] if vocab is not None
                                   else [str(i) for i in range(1, model.num_items + 1)])
    k = max(1, min(int(k), model.num_items))
    manifest["k"] = str(k)
    wrapper = _OnnxRecommender(model, k).eval()
    length = min(model.config.max_len, 4)
    example = torch.arange(1, length + 1, dtype=torch.long).clamp_max(model.num_items).view(1, -1)

    def write(tmp: str) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is "legacy"
            torch.onnx.export(wrapper, (example,), tmp, input_names=["item_ids"],
                              output_names=["scores", "item_indices"],
                              dynamic_axes={"item_ids": {1: "length"}}, opset_version=opset, dynamo=False)
        proto = onnx.load(tmp)
        for key, value in manifest.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, tmp)

    return write_atomically(path, write)
