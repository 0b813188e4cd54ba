"""PowerSGD gradient compression with error feedback (Vogels et al. 2019) for exact-SyncBN steps.

``StepConfig.grad_compression="powersgd"`` (``sync_bn="exact"``, ``local_steps == 1``): instead
of all-reducing the whole gradient bucket every step, every gradient tensor reshaped to a
matrix ``(n, m)`` (first dimension x the rest) with ``min(n, m) > powersgd_rank = r`` travels
as two thin factors. Per step and per such matrix, on every rank ``i``:

- ``M_i = grad_i + e_i`` (``e_i`` this rank's error, zero at the start of a round);
- ``P = sum_i M_i Q`` (all-reduce, one bucket for every matrix; ``Q`` the previous step's, warm
  start), orthonormalised column by column (Gram-Schmidt);
- ``Q = sum_i M_i^T P`` (all-reduce, one bucket), and the gradient used is ``P Q^T``;
- ``e_i = M_i - P Q^T / world``, so that the ranks' errors sum to what the approximation missed
  of the summed gradient (the bucket is a *sum*: each rank's loss is divided by the mixed
  batch's pixel count, so the exact gradient is the sum over the ranks, not the mean).

Every other tensor (biases, BatchNorm affine parameters, matrices with ``min(n, m) <= r``) and
the loss go uncompressed in one bucket. Every all-reduce result is the same on every rank, so
every rank takes the same step and the weights stay identical.

Round boundaries: ``Q`` and the errors live in the round's task only. A round starts from
``Q`` drawn from a standard normal generator seeded with the round's first step (the same on
every rank) and from zero errors; the last step's residual is dropped with the task, so
nothing more travels between the trainer and the workers.
"""

from __future__ import annotations

from typing import Any

import torch


def matrix_shape(t: torch.Tensor) -> tuple[int, int]:
    """``t`` as a matrix: first dimension x the product of the others (a vector: ``(n, 1)``)."""
    n = int(t.shape[0]) if t.dim() else 1
    return n, max(1, t.numel() // max(1, n))


def _orthonormalise(p: torch.Tensor, eps: float = 1e-8) -> None:
    """Gram-Schmidt on the columns of ``p``, in place (a zero column stays zero)."""
    for j in range(p.shape[1]):
        col = p[:, j]
        if j:
            prev = p[:, :j]
            col -= prev @ (prev.T @ col)
        col /= col.norm() + eps


class PowerSGD:
    """Rank-``rank`` compression with error feedback of the gradients of ``params`` (one round's state).

    ``compress``: the indices of ``params`` sent as factors; default every tensor whose matrix
    has ``min(n, m) > rank``.
    """

    def __init__(
        self, params: list[torch.Tensor], rank: int, seed: int, compress: list[int] | None = None
    ) -> None:
        if rank < 1:
            raise ValueError(f"powersgd_rank must be >= 1, got {rank}")
        self.rank = rank
        self.shapes = [matrix_shape(p) for p in params]
        self.numels = [int(p.numel()) for p in params]
        if compress is None:
            compress = [i for i, (n, m) in enumerate(self.shapes) if min(n, m) > rank]
        self.big = list(compress)
        big = set(self.big)
        self.small = [i for i in range(len(params)) if i not in big]
        gen = torch.Generator().manual_seed(int(seed))
        self.q = {i: torch.randn(self.shapes[i][1], rank, generator=gen) for i in self.big}
        self.err = {i: torch.zeros(self.shapes[i]) for i in self.big}

    def elements(self, extra: int = 1) -> tuple[int, int, int]:
        """Elements all-reduced per step: the uncompressed bucket (with ``extra``), ``P`` and ``Q``."""
        small = sum(self.numels[i] for i in self.small) + extra
        p = sum(self.shapes[i][0] for i in self.big) * self.rank
        q = sum(self.shapes[i][1] for i in self.big) * self.rank
        return small, p, q

    def reduce(self, grads: list[torch.Tensor | None], extra: torch.Tensor, comm: Any) -> list[torch.Tensor]:
        """The (approximated) sum over the ranks of ``grads``; ``extra`` (e.g. the loss) summed in place.

        ``comm.sum_`` sums a tensor over the ranks in place and counts its bytes.
        """
        g = [
            x.detach().float() if x is not None else torch.zeros(self.numels[i]) for i, x in enumerate(grads)
        ]
        summed = self._sum({**{i: g[i].reshape(-1) for i in self.small}, -1: extra.detach().float()}, comm)
        out: list[torch.Tensor] = [torch.empty(0)] * len(g)
        for i in self.small:
            out[i] = summed[i]
        extra.copy_(summed[-1])
        if not self.big:
            return out
        ms = {i: g[i].reshape(self.shapes[i]) + self.err[i] for i in self.big}
        ps = self._sum({i: ms[i] @ self.q[i] for i in self.big}, comm)
        for p in ps.values():
            _orthonormalise(p)
        qs = self._sum({i: ms[i].T @ ps[i] for i in self.big}, comm)
        world = float(comm.world)
        for i in self.big:
            approx = ps[i] @ qs[i].T
            self.err[i] = ms[i] - approx / world
            self.q[i] = qs[i]
            out[i] = approx.reshape(-1)
        return out

    @staticmethod
    def _sum(parts: dict[int, torch.Tensor], comm: Any) -> dict[int, torch.Tensor]:
        """``parts`` summed over the ranks in one bucket (``comm.sum_bucket``)."""
        return dict(zip(parts, comm.sum_bucket(list(parts.values())), strict=True))
