"""Active pairs (`online_rl.pairs`): the Laplace variance, and which pair a Compare shows."""

from __future__ import annotations

import torch

from online_rl.pairs import Posterior, most_different, most_informative, posterior
from online_rl.reward import Feedback, RewardConfig, fit_head


def test_variance_is_the_inverse_hessian_quadratic_form() -> None:
    torch.manual_seed(0)
    rows, lam = torch.randn(5, 7), 0.3
    v = torch.randn(3, 7)
    hessian = lam * torch.eye(7) + rows.T @ rows
    expected = torch.einsum("pd,de,pe->p", v, torch.linalg.inv(hessian), v)
    assert torch.allclose(Posterior(rows, lam).variance(v), expected, atol=1e-5)
    # no clicks: the prior alone, |v|^2 / lam
    empty = Posterior(torch.zeros(0, 7), lam)
    assert torch.allclose(empty.variance(v), (v * v).sum(-1) / lam)


def test_most_different_picks_the_farthest_two() -> None:
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 5.0], [0.5, 0.5]])
    assert most_different(x) == (1, 2)


def test_informative_pair_asks_about_what_the_clicks_left_open() -> None:
    """Clicks taught the head a lot about dimension 0 and nothing about dimension 1: of two
    candidate pairs that the head scores as equally close calls, the one differing along
    dimension 1 teaches more; a pair the head already orders confidently teaches little."""
    torch.manual_seed(0)
    n = 40
    x = torch.zeros(n, 2)
    x[:, 0] = torch.linspace(-2, 2, n)
    thumbs = [(i, 1 if x[i, 0] > 0 else -1) for i in range(n)]
    feedback = Feedback(thumbs=thumbs)
    config = RewardConfig()
    head, _ = fit_head(x, feedback, config, l2=1e-2)
    belief = posterior(head, x, feedback, config, l2=1e-2)
    assert belief.variance(torch.tensor([[0.0, 1.0]])) > 3 * belief.variance(
        torch.tensor([[1.0, 0.0]])
    )
    candidates = torch.tensor(
        [
            [0.0, 0.0],  # 0
            [0.05, 0.0],  # 1: a close call along the known direction
            [0.0, 1.0],  # 2: differs from 0 only along the open direction
            [3.0, 0.0],  # 3: the head is sure 3 beats 0
        ]
    )
    i, j = most_informative(candidates, head, belief)
    assert {i, j} in ({0, 2}, {1, 2})


def test_thompson_shows_best_and_worst_when_sure_and_survives_twins() -> None:
    """A head sure of its taste (many clicks along dimension 0) shows the candidate it ranks
    first against the one it ranks last; identical candidates (a singular covariance) are fine."""
    from online_rl.pairs import thompson

    n = 60
    x = torch.zeros(n, 2)
    x[:, 0] = torch.linspace(-2, 2, n)
    feedback = Feedback(thumbs=[(i, 1 if x[i, 0] > 0 else -1) for i in range(n)])
    config = RewardConfig()
    head, _ = fit_head(x, feedback, config, l2=1e-3)
    belief = posterior(head, x, feedback, config, l2=1e-3)
    candidates = torch.tensor([[0.5, 0.0], [3.0, 0.0], [-3.0, 0.0], [3.0, 0.0]])
    draws = [torch.Generator().manual_seed(s) for s in range(20)]
    picks = [thompson(candidates, head, belief, g) for g in draws]
    assert all({i, j} in ({1, 2}, {3, 2}) for i, j in picks)
