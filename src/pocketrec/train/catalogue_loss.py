"""Cross-entropy and KL distillation over the whole catalogue, fused and chunked over the queries.

Every training loss of pocketrec is a softmax over the catalogue: ``N`` queries (one per target
position of a batch, thousands on session data) against ``n + 1`` item rows (tens of thousands to
millions). Written with autograd ops, that keeps several ``N x n`` tensors alive between forward and
backward (the logits, the log-softmax, the KL's operands, slices of them) and spends most of a step in
elementwise passes over them.

:func:`catalogue_losses` instead walks the queries in chunks of ``chunk`` rows: for each chunk it
computes the logits, the softmax, the loss *and the gradient* (``softmax - onehot`` for the CE,
``T (softmax(s/T) - softmax(t/T))`` for the KL), turns the gradient into ``d queries`` and ``d rows``
with two small matmuls, and drops the chunk. Only ``N x d`` and ``n x d`` gradients are stored for
backward, so memory is ``O(chunk x n)`` and nothing is recomputed. (This is the "fused linear
cross-entropy" trick of e.g. Liger-Kernel, for a CPU and with the distillation term added.)

Scores are ``queries @ rows.T`` with column 0 (padding) masked to the dtype's minimum, i.e. exactly what
:meth:`SessionRecommender.item_scores` ranks by when ``rows`` is :meth:`SessionRecommender.scoring_rows`.
The teacher side of the KL is a constant (no gradient): the authors' code forgets to detach it (docs/methods/odrec.md).
"""

from __future__ import annotations

import torch
from torch import Tensor

DEFAULT_CHUNK = 256


def _masked_logits(queries: Tensor, rows: Tensor, temperature: float) -> Tensor:
    logits = queries @ rows.t()
    if temperature != 1.0:
        logits.div_(temperature)
    logits[:, 0] = torch.finfo(logits.dtype).min  # after the division: min / T must not become -inf
    return logits


def _softmax_(logits: Tensor) -> tuple[Tensor, Tensor]:
    """``(probabilities, logsumexp)`` of each row, shifting ``logits`` in place by its row maximum.

    The logsumexp is that of the *shifted* logits, so ``logits - lse`` stays the log-probabilities; every
    formula below uses the arrays as held, which makes the shift invisible. Four passes (max, shift, exp,
    normalise) instead of logsumexp's plus a separate ``exp(logits - lse)``.
    """
    logits.sub_(logits.amax(dim=1, keepdim=True))
    probs = torch.exp(logits)
    total = probs.sum(dim=1, keepdim=True)
    probs.div_(total)
    return probs, total.squeeze(1).log()


class _CatalogueLosses(torch.autograd.Function):
    @staticmethod
    def forward(ctx, queries: Tensor, rows: Tensor, targets: Tensor, teacher_queries: Tensor | None,
                teacher_rows: Tensor | None, temperature: float, chunk: int, track: bool) -> tuple[Tensor, Tensor]:
        need_q, need_r = track and ctx.needs_input_grad[0], track and ctx.needs_input_grad[1]
        with_kd = teacher_queries is not None
        n = queries.shape[0]
        grads = {key: torch.zeros_like(ref) for key, ref, need in (
            ("q_rec", queries, need_q), ("r_rec", rows, need_r),
            ("q_kd", queries, need_q and with_kd), ("r_kd", rows, need_r and with_kd)) if need}
        rec_sum = queries.new_zeros(())
        kd_sum = queries.new_zeros(())
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            q, y = queries[start:stop], targets[start:stop]
            logits = _masked_logits(q, rows, 1.0)
            probs, lse = _softmax_(logits)
            rec_sum += (lse - logits.gather(1, y.unsqueeze(1)).squeeze(1)).sum()
            if with_kd:
                teacher = _masked_logits(teacher_queries[start:stop], teacher_rows, temperature)
                teacher_probs, teacher_lse = _softmax_(teacher)
                if temperature == 1.0:
                    student, student_probs, student_lse = logits, probs, lse
                else:
                    student = logits.div(temperature)
                    student[:, 0] = torch.finfo(student.dtype).min
                    student_probs, student_lse = _softmax_(student)
                # KL(p_t || p_s) = sum p_t (t - s) + lse_s - lse_t per row; column 0 has p_t = 0, t - s = 0.
                kd_sum += ((teacher_probs * teacher.sub_(student)).sum(1) + student_lse - teacher_lse).sum()
                if need_q or need_r:
                    d_kd = student_probs.sub_(teacher_probs) if student_probs is not probs else probs - teacher_probs
                    d_kd.mul_(temperature / n)
                    if need_q:
                        grads["q_kd"][start:stop] = d_kd @ rows
                    if need_r:
                        grads["r_kd"].addmm_(d_kd.t(), q)
            if need_q or need_r:
                d_rec = probs
                d_rec[torch.arange(stop - start), y] -= 1.0
                d_rec.div_(n)
                if need_q:
                    grads["q_rec"][start:stop] = d_rec @ rows
                if need_r:
                    grads["r_rec"].addmm_(d_rec.t(), q)
        ctx.grads = grads
        return rec_sum / n, kd_sum * (temperature * temperature) / n

    @staticmethod
    def backward(ctx, g_rec: Tensor, g_kd: Tensor):
        grads = ctx.grads

        def combine(rec_key: str, kd_key: str) -> Tensor | None:
            if rec_key not in grads:
                return None
            out = grads[rec_key] * g_rec
            if kd_key in grads:
                out = out + grads[kd_key] * g_kd
            return out

        return combine("q_rec", "q_kd"), combine("r_rec", "r_kd"), None, None, None, None, None, None


def catalogue_losses(queries: Tensor, rows: Tensor, targets: Tensor, teacher_queries: Tensor | None = None,
                     teacher_rows: Tensor | None = None, temperature: float = 1.0, chunk: int = DEFAULT_CHUNK,
                     ) -> tuple[Tensor, Tensor]:
    """``(cross_entropy, kl)``: both means over the ``N`` queries, both differentiable.

    ``queries (N, d)`` and ``rows (n + 1, d)`` give the scores ``queries @ rows.T`` (column 0 masked);
    ``targets (N,)`` are item ids ``1..n``. With ``teacher_queries (N, d_t)`` and ``teacher_rows
    (n + 1, d_t)`` the second value is ``T² KL(softmax(t/T) || softmax(s/T))`` (the teacher side is a
    constant); without them it is 0. Gradients flow to ``queries`` and ``rows`` (e.g. through a TT
    table's cores into its rebuilt rows).
    """
    if queries.dim() != 2 or rows.dim() != 2 or queries.shape[1] != rows.shape[1]:
        raise ValueError(f"queries {tuple(queries.shape)} and rows {tuple(rows.shape)} must be (N, d) and (n, d)")
    if targets.shape != (queries.shape[0],):
        raise ValueError(f"targets must be ({queries.shape[0]},), got {tuple(targets.shape)}")
    if (teacher_queries is None) != (teacher_rows is None):
        raise ValueError("give both teacher_queries and teacher_rows, or neither")
    if teacher_queries is not None:
        if teacher_queries.shape[0] != queries.shape[0] or teacher_rows.shape[0] != rows.shape[0]:
            raise ValueError("the teacher's queries and rows must match the student's in number")
        teacher_queries, teacher_rows = teacher_queries.detach(), teacher_rows.detach()
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if queries.shape[0] == 0:
        zero = (queries.sum() + rows.sum()) * 0.0
        return zero, zero
    return _CatalogueLosses.apply(queries, rows, targets, teacher_queries, teacher_rows, float(temperature),
                                  int(chunk), torch.is_grad_enabled())


def catalogue_cross_entropy(queries: Tensor, rows: Tensor, targets: Tensor, chunk: int = DEFAULT_CHUNK) -> Tensor:
    """Mean softmax cross-entropy of ``queries @ rows.T`` (column 0 masked) against ``targets``."""
    return catalogue_losses(queries, rows, targets, chunk=chunk)[0]
