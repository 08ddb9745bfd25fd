"""P(beat control) and P(best) against adaptive quadrature and seeded Monte Carlo."""


import numpy as np
import pytest
from scipy import integrate
from scipy import stats as scipy_stats

from sira.posterior import prob_beat_control, prob_best, prob_best_batch


def quad_prob_best(alphas, betas) -> np.ndarray:
    """Reference: scipy's adaptive quad of f_i * prod_{j != i} F_j, with breakpoints
    at every arm's quantiles so that narrow posteriors are not stepped over."""
    k = len(alphas)
    result = []
    for i in range(k):
        lo, hi = scipy_stats.beta.ppf([1e-15, 1 - 1e-15], alphas[i], betas[i])
        points = [
            x
            for j in range(k)
            for x in scipy_stats.beta.ppf([1e-6, 0.01, 0.5, 0.99, 1 - 1e-6], alphas[j], betas[j])
            if lo < x < hi
        ]

        def integrand(x, i=i):
            others = [scipy_stats.beta.cdf(x, alphas[j], betas[j]) for j in range(k) if j != i]
            return scipy_stats.beta.pdf(x, alphas[i], betas[i]) * np.prod(others)

        value, _ = integrate.quad(
            integrand, lo, hi, points=sorted(set(points)), limit=500, epsabs=1e-13
        )
        result.append(value)
    return np.array(result)


def monte_carlo_prob_best(alphas, betas, draws=2_000_000, seed=2024) -> np.ndarray:
    rng = np.random.default_rng(seed)
    samples = rng.beta(alphas, betas, size=(draws, len(alphas)))
    return np.bincount(samples.argmax(axis=1), minlength=len(alphas)) / draws


CASES = [
    ([1, 1], [1, 1]),
    ([2, 3], [10, 5]),
    ([11, 13], [91, 89]),
    ([86, 72], [916, 930]),  # the seed's example: 8.5% vs 7.1% on 1,000 users each
    ([1, 1, 1], [101, 1001, 11]),
    ([1001, 1101, 1051, 981, 1020], [9001, 8901, 8951, 9021, 9000]),
    ([1, 50001, 3], [1_000_000, 450001, 7]),  # wildly different widths
    ([5, 500, 50000], [95, 9500, 950000]),  # same mean, widths 100x apart
    ([1, 2], [1_000_000, 2_000_000]),  # all mass near zero
    ([30, 31, 29, 33, 28], [300, 290, 310, 280, 305]),
    ([1, 20001], [1, 180001]),  # uniform against a spike
]


@pytest.mark.parametrize("alphas, betas", CASES)
def test_prob_best_matches_quadrature(alphas, betas):
    result = prob_best(alphas, betas)
    assert result.sum() == pytest.approx(1.0, abs=1e-9)
    assert result == pytest.approx(quad_prob_best(alphas, betas), abs=1e-6)


@pytest.mark.parametrize(
    "alphas, betas",
    [
        ([86, 72], [916, 930]),
        ([11, 13, 9, 15], [91, 89, 93, 87]),
        ([101, 121, 95, 110, 99], [901, 881, 905, 890, 903]),
    ],
)
def test_prob_best_matches_monte_carlo(alphas, betas):
    assert prob_best(alphas, betas) == pytest.approx(
        monte_carlo_prob_best(alphas, betas), abs=2e-3
    )


def test_prob_best_edge_cases():
    assert prob_best([], []).shape == (0,)
    assert prob_best([7], [93]) == pytest.approx([1.0])
    equal = prob_best([11] * 4, [91] * 4)
    assert equal == pytest.approx([0.25] * 4, abs=1e-12)
    # No data at all: uniform posteriors, every arm equally likely.
    assert prob_best([1, 1, 1], [1, 1, 1]) == pytest.approx([1 / 3] * 3, abs=1e-9)
    # All successes against all failures.
    assert prob_best([101, 1], [1, 101]) == pytest.approx([1.0, 0.0], abs=1e-12)


def test_prob_best_rejects_bad_parameters():
    with pytest.raises(ValueError):
        prob_best([1, 2], [1])
    with pytest.raises(ValueError):
        prob_best([0, 2], [1, 1])


def test_prob_best_batch_matches_one_at_a_time_over_a_thousand_experiments():
    # Its speed is measured by ``make bench-sira``; here only agreement is checked.
    rng = np.random.default_rng(1)
    users = rng.integers(100, 50_000, size=(1000, 5))
    successes = rng.binomial(users, rng.uniform(0.01, 0.3, size=(1000, 5)))
    alphas, betas = successes + 1.0, users - successes + 1.0
    batch = prob_best_batch(alphas, betas)
    one_at_a_time = np.array([prob_best(a, b) for a, b in zip(alphas, betas)])
    assert np.allclose(batch, one_at_a_time, atol=1e-12)
    assert np.allclose(batch.sum(axis=1), 1.0, atol=1e-9)


@pytest.mark.parametrize(
    "alpha_c, beta_c, alpha_v, beta_v",
    [
        (1, 1, 1, 1),
        (72, 930, 86, 916),
        (86, 916, 72, 930),
        (1, 1001, 3, 999),
        (3001, 6001, 2950, 6050),
        (1001, 9001, 1001, 9001),
        (20000, 2, 19990, 12),  # sums over the small beta parameters
        (6001, 12001, 6101, 11901),  # every parameter > 5,000: quadrature
        (2.5, 10.5, 3.5, 9.5),  # non-integer: quadrature
    ],
)
def test_prob_beat_control_matches_quadrature(alpha_c, beta_c, alpha_v, beta_v):
    lo, hi = scipy_stats.beta.ppf([1e-15, 1 - 1e-15], alpha_v, beta_v)
    points = [
        x
        for x in np.concatenate(
            [
                scipy_stats.beta.ppf([1e-6, 0.01, 0.5, 0.99, 1 - 1e-6], alpha_v, beta_v),
                scipy_stats.beta.ppf([1e-6, 0.01, 0.5, 0.99, 1 - 1e-6], alpha_c, beta_c),
            ]
        )
        if lo < x < hi
    ]
    expected, _ = integrate.quad(
        lambda x: scipy_stats.beta.pdf(x, alpha_v, beta_v)
        * scipy_stats.beta.cdf(x, alpha_c, beta_c),
        lo,
        hi,
        points=sorted(points),
        limit=500,
        epsabs=1e-13,
    )
    assert prob_beat_control(alpha_c, beta_c, alpha_v, beta_v) == pytest.approx(expected, abs=1e-6)


def test_prob_beat_control_matches_monte_carlo_and_prob_best():
    rng = np.random.default_rng(99)
    control = rng.beta(72, 930, 2_000_000)
    variant = rng.beta(86, 916, 2_000_000)
    exact = prob_beat_control(72, 930, 86, 916)
    assert exact == pytest.approx((variant > control).mean(), abs=2e-3)
    assert exact == pytest.approx(prob_best([72, 86], [930, 916])[1], abs=1e-9)


def test_prob_beat_control_is_antisymmetric():
    forward = prob_beat_control(40, 960, 55, 945)
    backward = prob_beat_control(55, 945, 40, 960)
    assert forward + backward == pytest.approx(1.0, abs=1e-12)


def test_prob_beat_control_rejects_non_positive_parameters():
    with pytest.raises(ValueError):
        prob_beat_control(0, 1, 1, 1)
