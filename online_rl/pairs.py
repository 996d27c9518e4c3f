"""Which two answers a Compare shows: of k sampled, the pair whose A/B answer teaches the most.

Two samples of one adapter at one temperature are usually alike in whatever the user cares
about, so most A/B clicks say "both bad" or nothing. Sampling k answers (one batched call) and
showing the two whose comparison the user's head is least sure of turns more clicks into
information (active preference elicitation: SEA, PReF; `../shared/notes/learning-notes.md`).

The head's uncertainty is a Laplace approximation of its linear weights w: the L2-regularised
loss is convex, its Hessian at the fit is A = 2*l2*I + sum_rows c_r x_r x_r^T (one row per
thumb, x = the reply's inputs; one per decided A/B pair, x = the difference of the two; c_r the
loss's curvature there), and the posterior covariance of w is A^-1. For a candidate pair with
input difference v and predicted score difference m, the answer's expected information about w
grows with p(1-p) * v^T A^-1 v (p = sigmoid(m)): close calls along directions the clicks have
not pinned down. Before the user has clicked anything, the two most different answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import torch

from online_rl.reward import Feedback, RewardConfig, RewardHead


@dataclass(frozen=True)
class Posterior:
    """The Laplace approximation of a linear head's weights: A = l2_term * I + S^T S."""

    scaled_rows: torch.Tensor  # S: (m, d), each data row times sqrt(its curvature)
    l2_term: float  # 2 * l2

    def covariance(self, v: torch.Tensor) -> torch.Tensor:
        """v A^-1 v^T for the rows of v (p, d): the (p, p) covariance of their scores."""
        s, lam = self.scaled_rows, self.l2_term
        sv = s @ v.T  # (m, p)
        inner = torch.linalg.solve(lam * torch.eye(len(s)) + s @ s.T, sv)
        return (v @ v.T - sv.T @ inner) / lam

    def variance(self, v: torch.Tensor) -> torch.Tensor:
        """v^T A^-1 v for each row of v (a handful of candidate pairs: the diagonal of
        `covariance` costs nothing worth a second formula)."""
        return self.covariance(v).diagonal()


def posterior(
    head: RewardHead, inputs: torch.Tensor, feedback: Feedback, config: RewardConfig, l2: float
) -> Posterior:
    """The Laplace posterior of `head` (linear) fitted on `feedback` over `inputs`."""
    with torch.no_grad():
        scores = head(inputs)
        rows, curvature = [], []
        labelled = [i for i, _ in feedback.thumbs] + [
            i for a, b, o in feedback.pairs if o == "both_bad" for i in (a, b)
        ]
        for i in labelled:
            p = torch.sigmoid(scores[i] - head.threshold)
            rows.append(inputs[i])
            curvature.append(config.thumb_weight / len(labelled) * p * (1 - p))
        compared = [(a, b) for a, b, o in feedback.pairs if o != "both_bad"]
        for a, b in compared:
            p = torch.sigmoid(scores[a] - scores[b])
            rows.append(inputs[a] - inputs[b])
            curvature.append(config.pair_weight / len(compared) * p * (1 - p))
    if not rows:
        return Posterior(inputs.new_zeros(0, inputs.shape[1]), 2 * l2)
    scale = torch.stack(curvature).clamp(min=0).sqrt()
    return Posterior(torch.stack(rows) * scale[:, None], 2 * l2)


def most_different(inputs: torch.Tensor) -> tuple[int, int]:
    """The two rows farthest apart (ties: the first pair)."""
    pairs = list(combinations(range(len(inputs)), 2))
    distance = torch.stack([(inputs[i] - inputs[j]).norm() for i, j in pairs])
    return pairs[int(distance.argmax())]


def most_informative(inputs: torch.Tensor, head: RewardHead, belief: Posterior) -> tuple[int, int]:
    """The pair of candidate rows whose A/B answer is expected to teach the head the most."""
    pairs = list(combinations(range(len(inputs)), 2))
    with torch.no_grad():
        scores = head(inputs)
        diffs = torch.stack([inputs[i] - inputs[j] for i, j in pairs])
        p = torch.sigmoid(torch.stack([scores[i] - scores[j] for i, j in pairs]))
        value = p * (1 - p) * belief.variance(diffs)
    return pairs[int(value.argmax())]


def thompson(
    inputs: torch.Tensor, head: RewardHead, belief: Posterior, generator: torch.Generator
) -> tuple[int, int]:
    """The best and the worst candidate under one draw of the head's weights from the
    posterior (Thompson sampling, as SEA does): where the head has learned something the best
    one likely has what the user likes, so the choice names a winner; where it has not, the
    draw explores. Only the candidates' scores are drawn (k numbers, jointly Gaussian), never
    the weights themselves."""
    with torch.no_grad():
        mean = head(inputs)
        # eigh, not cholesky: two identical candidates make the covariance singular
        values, vectors = torch.linalg.eigh(belief.covariance(inputs).double())
        root = vectors * values.clamp(min=0).sqrt()
        noise = (root @ torch.randn(len(inputs), generator=generator).double()).float()
        drawn = mean + noise
    best, worst = int(drawn.argmax()), int(drawn.argmin())
    if best == worst:  # all equal: any two
        return 0, 1
    return best, worst
