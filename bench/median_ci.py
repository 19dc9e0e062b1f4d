"""A distribution-free 95% confidence interval for a median, for the
benchmark scripts that compare rounds (bench/tenants.sh,
bench/tenants_same_core.sh): the order statistics k and n+1-k, with k the
largest for which the binomial(n, 1/2) tail below k is at most 2.5% (no
assumption about the rounds' spread). Fewer than 6 rounds give no
interval (nan)."""

from math import comb


def median_ci(values):
    v, m = sorted(values), len(values)
    k, tail = 0, 0.0
    while k < m and tail + comb(m, k) / 2 ** m <= 0.025:
        tail += comb(m, k) / 2 ** m
        k += 1
    return (v[k - 1], v[m - k]) if k >= 1 else (float("nan"), float("nan"))
