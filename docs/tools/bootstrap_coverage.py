"""How many units does a CI need? Coverage of xbench's 95% intervals at small n, by simulation.

Images (the percentile bootstrap, ``xbench.metrics.bootstrap.bootstrap_ci`` and
``xbench.metrics.comparison.paired_images``): for each distribution and each
n = 2..30, ``--sims`` samples of n values; for each, the percentile CI of the
mean from R = ``--resamples`` resamples (the code's own kernel,
``bootstrap.resampled_means``, run on all samples of a cell at once: column k
of the (n, S) matrix gets the interval ``bootstrap_ci(column k)`` gives, from
the same draws, up to the last bit of float rounding; the tool checks that
before it starts) and the paired test's two-sided p of
"mean = true mean", computed as ``paired_images`` computes it (twice the share
of resampled means on the far side, floored at 1/(R+1); the paired test sees
d_i = a_i - b_i, and under the null d has mean 0, so a sample of d is a
sample of the distribution centred on its mean). Reported: coverage of the
true mean by the nominal 95% CI, and the false-positive rate of the test at
0.05 (= the share of CIs that miss, up to ties).

Seeds (``comparison.over_seeds``, ``comparison.t_band``): the t interval
mean +- t_{n-1} sd / sqrt(n), n = 2..10, on the same distributions (raw: the
worst case, a seed's value is a mean over images and much closer to normal).

The rule for the minimum (printed at the end): the smallest n from which on
(every larger n simulated too)

- the CI's coverage is >= 0.90 for EVERY distribution, and
- the paired test's false-positive rate at 0.05 is <= 0.075 under the
  SYMMETRIC nulls (normal, t3, and the difference of two beta(0.5, 5)),

each allowing the simulation's own noise (2 standard errors of a share over
``--sims`` samples: 0.013 and 0.012 at 2,000). The false-positive criterion
is judged on symmetric nulls because the null of a paired comparison, two
methods that do equally well on the same images, makes d_i = a_i - b_i
exchangeable in sign; for a skewed d centred on 0 the rate is 1 - coverage
(printed too), which the percentile bootstrap brings to 0.075 only well
beyond n = 30 for skewness ~2 (its coverage error shrinks as 1/sqrt(n),
Hall 1988): the coverage criterion speaks for those.

    python docs/tools/bootstrap_coverage.py            # the table in docs/architecture.md (under a minute on one core)
    python docs/tools/bootstrap_coverage.py --sims 500 # a quick look
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np

from xbench.metrics.bootstrap import bootstrap_ci, resampled_means
from xbench.metrics.comparison import paired_images

#: name -> (sampler(rng, shape), true mean). Per-image figures of xbench: AOPC (roughly normal or skewed),
#: localisation shares and IoU (bounded, piled up near 0), paired differences (symmetric, heavy-tailed).
DISTRIBUTIONS = {
    "normal": (lambda r, s: r.standard_normal(s), 0.0),
    "exponential": (lambda r, s: r.exponential(1.0, s), 1.0),
    "lognormal(0, 0.75)": (lambda r, s: r.lognormal(0.0, 0.75, s), math.exp(0.75**2 / 2)),
    "beta(0.5, 5)": (lambda r, s: r.beta(0.5, 5.0, s), 0.5 / 5.5),
    "t3": (lambda r, s: r.standard_t(3, s), 0.0),
    "beta(0.5, 5) - beta(0.5, 5)": (lambda r, s: r.beta(0.5, 5.0, s) - r.beta(0.5, 5.0, s), 0.0),
}

LEVEL, ALPHA = 0.95, 0.05
COVERAGE_MIN, FPR_MAX = 0.90, 0.075
#: The nulls of a paired comparison the false-positive criterion is judged on (see the module's docstring).
SYMMETRIC = ("normal", "t3", "beta(0.5, 5) - beta(0.5, 5)")
#: A seed's value is a mean over its images: the second seeds table averages this many draws per seed.
IMAGES_PER_SEED = 20


def interval_and_p(x: np.ndarray, mu: float, n_resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(low, high, p) of each column of ``x`` (n, S): bootstrap_ci's interval and paired_images' p of mean = ``mu``, one resampling for all."""
    boot = resampled_means(x, n_resamples, np.random.default_rng([seed, 0xB007]))  # (R, S), as bootstrap_ci draws them
    a = (1 - LEVEL) / 2
    lo, hi = np.quantile(boot, [a, 1 - a], axis=0)
    p = 2 * np.minimum((boot <= mu).mean(0), (boot >= mu).mean(0))
    return lo, hi, np.minimum(1.0, np.maximum(p, 1 / (n_resamples + 1)))


def check_against_code(n_resamples: int) -> None:
    """The vectorised path gives bootstrap_ci's interval and paired_images' p, column by column (paired_images draws its own resamples)."""
    rng = np.random.default_rng(7)
    for n in (2, 5, 13):
        x = rng.exponential(1.0, (n, 4))
        lo, hi, _ = interval_and_p(x, 1.0, n_resamples, seed=3)
        for k in range(x.shape[1]):
            want = bootstrap_ci(x[:, k], n_resamples=n_resamples, seed=3, min_n=2)  # the same draws; the means' summation order may differ in the last bit
            assert np.allclose((lo[k], hi[k]), want, rtol=1e-12, atol=0), "not bootstrap_ci's interval"
        d = x - 1.0
        boot = resampled_means(d, n_resamples, np.random.default_rng([3, 0x9A1D]))  # paired_images' draws
        p = np.minimum(1.0, np.maximum(2 * np.minimum((boot <= 0).mean(0), (boot >= 0).mean(0)), 1 / (n_resamples + 1)))
        for k in range(x.shape[1]):
            r = paired_images(x[:, k], np.ones(n), n_resamples=n_resamples, seed=3, min_n=2)
            assert math.isclose(r["p_value"], p[k]) and math.isclose(r["ci_low"], float(np.quantile(boot[:, k], 0.025))), "not paired_images' p"


def t_interval(x: np.ndarray, mu: float) -> tuple[float, float]:
    """Coverage and false-positive rate of the t interval of each column of ``x`` (n, S), as over_seeds / t_band compute it."""
    from scipy import stats

    n = len(x)
    half = stats.t.ppf(1 - (1 - LEVEL) / 2, n - 1) * x.std(0, ddof=1) / math.sqrt(n)
    miss = np.abs(x.mean(0) - mu) > half
    return 1 - float(miss.mean()), float(miss.mean())  # t test p < alpha exactly when mu is outside the interval


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sims", type=int, default=2000, help="simulated samples per (distribution, n)")
    ap.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples R (xbench's default: 2000)")
    ap.add_argument("--max-n", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t0 = time.time()
    check_against_code(args.resamples)
    ns = list(range(2, args.max_n + 1))
    names = list(DISTRIBUTIONS)
    cov = np.zeros((len(ns), len(names)))
    fpr = np.zeros_like(cov)
    for i, n in enumerate(ns):
        for j, name in enumerate(names):
            draw, mu = DISTRIBUTIONS[name]
            rng = np.random.default_rng([args.seed, n, j])
            cover, false_pos = 0, 0
            for s in range(0, args.sims, 500):  # batches: memory, and fresh resample indices per batch
                x = draw(rng, (n, min(500, args.sims - s)))
                lo, hi, p = interval_and_p(x, mu, args.resamples, seed=int(rng.integers(2**31)))
                cover += int(((lo <= mu) & (mu <= hi)).sum())
                false_pos += int((p < ALPHA).sum())
            cov[i, j], fpr[i, j] = cover / args.sims, false_pos / args.sims
        print(f"n={n} done ({time.time() - t0:.0f} s)", file=sys.stderr)

    print(f"Percentile bootstrap over n units, R = {args.resamples}, {args.sims} samples per cell: coverage of the nominal 95% CI "
          f"of the mean / false-positive rate of the nominal {ALPHA} paired test.\n")
    print("| n | " + " | ".join(names) + " | worst coverage | worst FPR |")
    print("|---|" + "---|" * (len(names) + 2))
    for i, n in enumerate(ns):
        cells = [f"{cov[i, j]:.3f} / {fpr[i, j]:.3f}" for j in range(len(names))]
        print(f"| {n} | " + " | ".join(cells) + f" | {cov[i].min():.3f} | {fpr[i].max():.3f} |")
    sym = [names.index(k) for k in SYMMETRIC]
    tol_cov, tol_fpr = (2 * math.sqrt(q * (1 - q) / args.sims) for q in (COVERAGE_MIN, FPR_MAX))
    ok = (cov.min(1) >= COVERAGE_MIN - tol_cov) & (fpr[:, sym].max(1) <= FPR_MAX + tol_fpr)
    strict = (cov.min(1) >= COVERAGE_MIN) & (fpr.max(1) <= FPR_MAX)
    # the smallest n from which on every n passes (a lucky cell below a failing one does not count)
    first = next((ns[i] for i in range(len(ns)) if ok[i:].all()), None)
    first_strict = next((ns[i] for i in range(len(ns)) if strict[i:].all()), None)
    print(f"\nMinimum: n = {first}: from there on the coverage is >= {COVERAGE_MIN} - {tol_cov:.3f} for every distribution and the "
          f"false-positive rate <= {FPR_MAX} + {tol_fpr:.3f} under the symmetric nulls ({', '.join(SYMMETRIC)}) at every n simulated."
          if first else f"\nNo n up to {args.max_n} meets the rule.")
    print("(Without the noise allowance, and judging the false-positive rate on every distribution: "
          + (f"n = {first_strict}.)" if first_strict else f"no n up to {args.max_n}.)"))

    for per_seed, what in ((1, "one raw value per seed (the worst case)"), (IMAGES_PER_SEED, f"each seed's value the mean of {IMAGES_PER_SEED} draws (a job's mean over its images)")):
        print(f"\nt interval over n seeds (comparison.over_seeds, t_band), {what}: coverage / false-positive rate, 20,000 samples per cell.\n")
        print("| n | " + " | ".join(names) + " |")
        print("|---|" + "---|" * len(names))
        for n in range(2, 11):
            row = []
            for j, name in enumerate(names):
                draw, mu = DISTRIBUTIONS[name]
                x = draw(np.random.default_rng([args.seed, n, j, per_seed]), (per_seed, n, 20000)).mean(0)
                c, f = t_interval(x, mu)
                row.append(f"{c:.3f} / {f:.3f}")
            print(f"| {n} | " + " | ".join(row) + " |")
    print(f"\n({time.time() - t0:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
