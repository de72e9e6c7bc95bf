"""Committee disagreement over member probabilities (MC-dropout passes, snapshot checkpoints).

member_probs (M, N, C) -> (N,), higher = more disagreement = more worth labeling.
"""
from __future__ import annotations

import torch

from strategies._torch_checks import as_probs


def _entropy(p: torch.Tensor, dim: int) -> torch.Tensor:
    return -torch.special.xlogy(p, p).sum(dim=dim)


def vote_entropy(member_probs) -> torch.Tensor:
    """Entropy of the members' hard votes: each member votes its argmax; V_c / M is the vote share."""
    p = as_probs(member_probs, "member_probs", 3)
    m, n, c = p.shape
    if n == 0:
        return p.new_zeros(0)
    votes = p.argmax(dim=2)  # (M, N)
    counts = torch.zeros(n, c, dtype=p.dtype, device=p.device)
    counts.scatter_add_(1, votes.T, torch.ones_like(votes.T, dtype=p.dtype))
    return _entropy(counts / m, dim=1)


def mean_kl_to_consensus(member_probs) -> torch.Tensor:
    """mean_m KL(p_m || p_bar), p_bar the members' mean distribution."""
    p = as_probs(member_probs, "member_probs", 3)
    consensus = p.mean(dim=0, keepdim=True)
    # xlogy(p, p) - xlogy(p, q): 0 where p = 0, as KL defines; q > 0 wherever some member has p > 0.
    kl = (torch.special.xlogy(p, p) - torch.special.xlogy(p, consensus.expand_as(p))).sum(dim=2)
    return kl.mean(dim=0)


def bald(member_probs) -> torch.Tensor:
    """Mutual information: H(mean_m p_m) - mean_m H(p_m) (Houlsby et al. 2011; Gal et al. 2017)."""
    p = as_probs(member_probs, "member_probs", 3)
    return _entropy(p.mean(dim=0), dim=1) - _entropy(p, dim=2).mean(dim=0)
