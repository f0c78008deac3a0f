"""Query-driven global aggregation (QGAM), the student's replacement for self-attention.

A fixed set of learned queries first gathers a compact global context from all tokens
(N queries x squeeze_dim), then every token reads back from that context. Both
attentions are over N = 32 keys or over the tokens once, so cost grows linearly with the
number of pixels instead of quadratically like the teacher's self-attention.
"""

from __future__ import annotations

import torch
from torch import nn

from backend.model.global_context import GlobalContext


class QueryDrivenGlobalAggregation(nn.Module):
    """QGAM(C, num_queries, squeeze_dim); parameter names follow the release."""

    def __init__(self, dim: int, num_queries: int = 32, squeeze_dim: int = 64) -> None:
        super().__init__()
        # Standard normal as the release's randn, drawn through trunc_normal_ (inverse CDF;
        # the cut at 8 sigma changes nothing): laying the network out on the meta device
        # (backend.weights.build_student) then needs no normal sampler, whose meta kernel
        # loads torch's symbolic-shape machinery (0.5-1.5 s of every worker's first run).
        self.query = nn.Parameter(
            nn.init.trunc_normal_(torch.empty(num_queries, dim), std=1.0, a=-8.0, b=8.0)
        )
        self.q_proj = nn.Linear(dim, squeeze_dim, bias=False)
        self.k_proj = nn.Linear(dim, squeeze_dim, bias=False)
        self.v_proj = nn.Linear(dim, squeeze_dim, bias=False)
        self.q_proj_c = nn.Linear(dim, squeeze_dim, bias=False)
        self.k_proj_c = nn.Linear(squeeze_dim, squeeze_dim, bias=False)
        self.v_proj_c = nn.Linear(squeeze_dim, squeeze_dim, bias=False)
        self.out_proj = nn.Linear(squeeze_dim, dim)
        # The release scales by the token width C, not by the squeezed width.
        self.scale = dim**-0.5

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T * scale) v with the softmax and its product in float32.

        One side is always the N learned queries, so the weight matrix is [L, N] or
        [N, L]: linear in L and small. Written out rather than through
        ``scaled_dot_product_attention``: on the CPU its reduced-precision path spends
        most of its time on mask checks (measured 3x slower at 78k tokens), and float32
        weights keep the bf16 error at that function's level.
        """
        weights = torch.softmax(torch.bmm(q * self.scale, k.transpose(1, 2)), dim=-1, dtype=torch.float32)
        return torch.bmm(weights, v.float()).to(q.dtype)

    def gather(self, tokens: torch.Tensor) -> torch.Tensor:
        """The queries' context over all ``tokens`` [B, L, C] -> [B, num_queries, squeeze]."""
        q = self.q_proj(self.query).to(tokens.dtype).expand(tokens.shape[0], -1, -1)
        return self._attend(q, self.k_proj(tokens), self.v_proj(tokens))

    def forward(self, tokens: torch.Tensor, context: GlobalContext | None = None) -> torch.Tensor:
        """tokens: [B, L, C] -> [B, L, C]; the gathered context is the image's when
        ``context`` holds it (recorded over crops: their tokens gathered together)."""
        if context is None:
            gathered = self.gather(tokens)
        else:
            shape = (self.query.shape[0], self.k_proj.out_features)

            def compute(joint: bool) -> torch.Tensor:
                # joint: the tokens of every crop gathered together, as one image's
                return self.gather(tokens.flatten(0, 1)[None] if joint else tokens)

            gathered = context.statistic(shape, compute).to(tokens.dtype).expand(tokens.shape[0], -1, -1)
        out = self._attend(self.q_proj_c(tokens), self.k_proj_c(gathered), self.v_proj_c(gathered))
        return self.out_proj(out)
