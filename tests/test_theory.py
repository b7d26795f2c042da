"Tests for the theory modules: margin_notes.margins (Corollary 1) and margin_notes.bound (Theorem 1)."
import math
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st, HealthCheck

from margin_notes.margins import optimal_margins


def naive_margins(A, c=1.0, mask=None, eps=1e-12):
    "Explicit-loop float64 reference for Corollary 1 (with the masked-budget convention)."
    K = len(A)
    mask = [True] * K if mask is None else list(mask)
    r = [max(float(a) ** (1.0 / 3.0), eps) for a in A]
    km = sum(1 for m in mask if m)
    s = sum(r[k] for k in range(K) if mask[k])
    return np.array([c * km * r[k] / s if mask[k] else c for k in range(K)])


# ---------------------------------------------------------------- optimal_margins: values
@pytest.mark.parametrize("K", [1, 2, 3, 10, 100, 1000])
def test_matches_naive_and_budget(K):
    rng = np.random.default_rng(K)
    A = 10.0 ** rng.uniform(-3, 3, K)
    g = optimal_margins(A, 0.7)
    np.testing.assert_allclose(g, naive_margins(A, 0.7), rtol=1e-12)
    assert abs(g.mean() - 0.7) < 1e-12
    assert (g > 0).all()


def test_ratio_and_scale_invariance():
    rng = np.random.default_rng(0)
    A = rng.lognormal(0, 2, 50)
    g = optimal_margins(A)
    np.testing.assert_allclose(g[:, None] / g[None, :], (A[:, None] / A[None, :]) ** (1 / 3), rtol=1e-10)
    for t in (1e-6, 3.0, 1e6):
        np.testing.assert_allclose(optimal_margins(t * A), g, rtol=1e-10)


def test_constant_variability_gives_equal_margins():
    np.testing.assert_allclose(optimal_margins(np.full(7, 3.3), 2.5), np.full(7, 2.5), rtol=1e-12)


def test_zero_variability_is_clamped_positive():
    g = optimal_margins(np.array([0.0, 1.0, 8.0]))
    assert (g > 0).all() and abs(g.mean() - 1) < 1e-12
    g0 = optimal_margins(np.zeros(4), 1.3)   # all zero: eps everywhere → equal margins
    np.testing.assert_allclose(g0, np.full(4, 1.3))


def test_minimises_complexity_against_random_feasible():
    rng = np.random.default_rng(1)
    for _ in range(20):
        K = int(rng.integers(2, 30)); A = rng.lognormal(0, 1.5, K); c = rng.uniform(0.1, 3)
        F = lambda g: float(np.sum(A / g ** 2))
        gs = optimal_margins(A, c); Fs = F(gs)
        assert abs(Fs - np.sum(A ** (1 / 3)) ** 3 / (K * c) ** 2) <= 1e-9 * Fs
        assert Fs <= np.sum(A) / c ** 2 * (1 + 1e-12)
        for g in K * c * rng.dirichlet(np.ones(K), 200):
            assert Fs <= F(g) * (1 + 1e-12)


# ---------------------------------------------------------------- mask
def test_mask_shares_budget_over_masked_only():
    rng = np.random.default_rng(2)
    A = rng.lognormal(0, 1, 12); m = rng.random(12) < 0.5; m[0] = True
    g = optimal_margins(A, 1.7, mask=m)
    np.testing.assert_allclose(g, naive_margins(A, 1.7, m), rtol=1e-12)
    np.testing.assert_allclose(g[~m], 1.7)
    assert abs(g[m].mean() - 1.7) < 1e-12
    np.testing.assert_allclose(g[m], optimal_margins(A[m], 1.7), rtol=1e-12)
    np.testing.assert_allclose(optimal_margins(A, 1.7, mask=np.ones(12, bool)), optimal_margins(A, 1.7))
    np.testing.assert_allclose(optimal_margins(A, 1.7, mask=np.zeros(12, bool)), np.full(12, 1.7))
    gt = optimal_margins(torch.tensor(A), 1.7, mask=torch.tensor(m))
    np.testing.assert_allclose(gt.numpy(), g, rtol=1e-12)


# ---------------------------------------------------------------- types
def test_numpy_in_numpy_out_and_dtypes():
    assert isinstance(optimal_margins([1.0, 2.0]), np.ndarray)
    assert optimal_margins(np.array([1, 2, 3])).dtype == np.float64
    assert optimal_margins(np.array([1, 2], np.float32)).dtype == np.float32


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_torch_in_torch_out_same_dtype(dtype):
    A = torch.tensor([0.5, 2.0, 9.0], dtype=dtype)
    g = optimal_margins(A, 1.0)
    assert isinstance(g, torch.Tensor) and g.dtype == dtype and g.device == A.device
    tol = 1e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-6
    np.testing.assert_allclose(g.double().numpy(), naive_margins(A.double().numpy()), rtol=tol)


def test_torch_no_grad_leak_and_tensor_mean_margin():
    A = torch.tensor([1.0, 4.0], requires_grad=True)
    g = optimal_margins(A, torch.tensor(2.0))
    assert not g.requires_grad
    np.testing.assert_allclose(g.numpy(), naive_margins([1.0, 4.0], 2.0), rtol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_same_device_no_value_check():
    A = torch.tensor([1.0, 8.0], device='cuda')
    g = optimal_margins(A, 1.0, mask=torch.tensor([True, True], device='cuda'))
    assert g.device == A.device
    np.testing.assert_allclose(g.cpu().numpy(), [2 / 3, 4 / 3], rtol=1e-6)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("bad,msg", [
    (np.array([1.0, -0.1]), ">= 0"), (np.array([1.0, np.nan]), "NaN"), (np.array([np.inf, 1.0]), "NaN"),
    (np.ones((2, 2)), "1-d"), (np.array(1.0), "1-d"), (np.array([]), "1-d"), (np.array(['a', 'b']), "numbers"),
    (torch.tensor([1.0, -1.0]), ">= 0"), (torch.tensor([float('nan')]), "NaN"), (torch.ones(2, 3), "1-d"),
])
def test_bad_variability(bad, msg):
    with pytest.raises(ValueError, match=msg): optimal_margins(bad)


@pytest.mark.parametrize("c", [0.0, -1.0, float('nan'), float('inf'), 'x', torch.tensor([1.0, 2.0]), torch.tensor(-1.0)])
def test_bad_mean_margin(c):
    with pytest.raises(ValueError, match="mean_margin"): optimal_margins(np.ones(3), c)


def test_bad_mask_and_eps():
    with pytest.raises(ValueError, match="shape"): optimal_margins(np.ones(3), mask=np.ones(2, bool))
    with pytest.raises(ValueError, match="boolean"): optimal_margins(np.ones(3), mask=np.ones(3))
    with pytest.raises(ValueError, match="shape"): optimal_margins(torch.ones(3), mask=torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="eps"): optimal_margins(np.ones(3), eps=0.0)


# ---------------------------------------------------------------- property test
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.floats(1e-6, 1e6), min_size=1, max_size=60), st.floats(1e-3, 1e3))
def test_property_budget_positive_monotone(A, c):
    A = np.array(A); g = optimal_margins(A, c)
    assert (g > 0).all()
    assert abs(g.mean() - c) <= 1e-9 * c
    order = np.argsort(A, kind='stable')
    assert (np.diff(g[order]) >= -1e-12 * c).all()    # larger variability → no smaller margin


# ================================================================ margin_notes.bound (Theorem 1)
import itertools
from margin_notes.bound import (empirical_margin_risk, class_variability, rademacher_linear_bound,
                                rademacher_linear_mc, complexity_term, margin_bound)


def test_empirical_margin_risk_matches_naive_and_bounds_01_loss():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(50, 4)) * 3; y = rng.integers(0, 4, 50); g = rng.uniform(0.2, 4, 4)
    naive = []
    for i in range(50):
        v = [z[i, j] / g[y[i]] for j in range(4)]
        naive.append(-(v[y[i]] - math.log(sum(math.exp(t) for t in v))))
    np.testing.assert_allclose(empirical_margin_risk(z, y, g, reduction='none'), naive, rtol=1e-12)
    assert abs(empirical_margin_risk(z, y, g) - np.mean(naive)) < 1e-12
    err = z.argmax(1) != y
    assert (np.array(naive)[err] >= math.log(2) - 1e-12).all()
    with pytest.raises(ValueError, match="margins"): empirical_margin_risk(z, y, -g)
    with pytest.raises(ValueError): empirical_margin_risk(z, y, g[:3])
    with pytest.raises(ValueError, match="reduction"): empirical_margin_risk(z, y, g, reduction='sum')


def test_class_variability_naive_identity_and_empty_class():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(40, 5)) * 3 + 1; y = rng.integers(0, 3, 40); y[0] = 0
    mn, sp = class_variability(X, y, num_classes=4)
    for k in range(3):
        rows = [X[i] for i in range(40) if y[i] == k]
        mu = [sum(r[j] for r in rows) / len(rows) for j in range(5)]
        assert abs(mn[k] - sum(m * m for m in mu)) < 1e-10
        assert abs(sp[k] - sum(sum((r[j] - mu[j]) ** 2 for j in range(5)) for r in rows) / len(rows)) < 1e-10
        assert abs(mn[k] + sp[k] - sum(sum(v * v for v in r) for r in rows) / len(rows)) < 1e-9
    assert np.isnan(mn[3]) and np.isnan(sp[3])
    mt, st_ = class_variability(torch.tensor(X), torch.tensor(y), 4)
    np.testing.assert_allclose(mt[:3], mn[:3]); np.testing.assert_allclose(st_[:3], sp[:3])   # torch in: the same mean norms and spreads
    assert np.isnan(mt[3]) and np.isnan(st_[3])
    with pytest.raises(ValueError): class_variability(X[0], y)
    with pytest.raises(ValueError): class_variability(X, y.astype(float))
    with pytest.raises(ValueError): class_variability(X, y, num_classes=2)


def exact_rademacher(X, Lam=1.0):
    "Exact (Λ/N) E_σ ||Σ σ_i x_i|| by enumerating all 2^N sign vectors."
    N = len(X)
    return Lam * np.mean([np.linalg.norm(np.array(s) @ X) for s in itertools.product([-1.0, 1.0], repeat=N)]) / N


def test_rademacher_exact_vs_mc_vs_bound():
    rng = np.random.default_rng(5)
    for _ in range(5):
        N = int(rng.integers(2, 11)); X = rng.normal(size=(N, 3)) * rng.uniform(0.1, 5, (N, 1))
        ex = exact_rademacher(X, 2.0)
        bd = rademacher_linear_bound(X, 2.0)
        assert abs(bd - 2.0 * math.sqrt(sum(float(v @ v) for v in X)) / N) < 1e-12
        assert bd / math.sqrt(2) - 1e-12 <= ex <= bd + 1e-12       # Khintchine–Kahane (Szarek) and Jensen
        est, se = rademacher_linear_mc(X, 2.0, num_draws=20000, seed=1, return_se=True)
        assert abs(est - ex) <= 5 * se + 1e-12


def test_rademacher_weights_equal_scaled_features_and_scaling():
    rng = np.random.default_rng(6)
    X = rng.normal(size=(30, 4)); w = rng.uniform(0.1, 3, 30)
    assert abs(rademacher_linear_bound(X, weights=w) - rademacher_linear_bound(X * w[:, None])) < 1e-12
    assert abs(rademacher_linear_mc(X, weights=w, seed=3) - rademacher_linear_mc(X * w[:, None], seed=3)) < 1e-12
    assert abs(rademacher_linear_bound(X, 3.0) - 3 * rademacher_linear_bound(X)) < 1e-12
    with pytest.raises(ValueError, match="Lambda"): rademacher_linear_bound(X, 0.0)
    with pytest.raises(ValueError, match="weights"): rademacher_linear_mc(X, weights=w[:5])
    with pytest.raises(ValueError, match="NaN"): rademacher_linear_bound(np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match="num_draws"): rademacher_linear_mc(X, num_draws=1)


def naive_complexity(A, g, Lam, N, constant='paper'):
    K = len(A)
    c = 4 * math.sqrt(2) * K if constant == 'paper' else 4 * math.sqrt(K) / math.log(2)
    return c * Lam / math.sqrt(N) * math.sqrt(sum(A[k] / g[k] ** 2 for k in range(K)))


@pytest.mark.parametrize("constant", ['paper', 'sketch'])
def test_complexity_term_and_margin_bound(constant):
    rng = np.random.default_rng(7)
    for K in (1, 2, 10, 300):
        A = rng.lognormal(0, 1, K); g = rng.uniform(0.1, 3, K); N = int(rng.integers(1, 10 ** 6))
        ref = naive_complexity(A, g, 1.7, N, constant)
        c = complexity_term(A, g, 1.7, num_samples=N, constant=constant)
        assert isinstance(c, float) and abs(c - ref) <= 1e-12 * ref
        ct = complexity_term(torch.tensor(A), torch.tensor(g), 1.7, num_samples=N, constant=constant)
        assert isinstance(ct, torch.Tensor) and ct.dim() == 0 and abs(float(ct) - ref) <= 1e-10 * ref
        assert abs(margin_bound(0.4, A, g, 1.7, num_samples=N, constant=constant) - (0.4 / math.log(2) + ref)) <= 1e-12 * (1 + ref)


def test_sketch_constant_below_paper_for_K_ge_2():
    for K in (2, 3, 10, 1000):
        A, g = np.ones(K), np.ones(K)
        assert complexity_term(A, g, num_samples=10, constant='sketch') < complexity_term(A, g, num_samples=10)


def test_complexity_minimised_by_optimal_margins_and_gradcheck():
    rng = np.random.default_rng(8)
    A = rng.lognormal(0, 2, 12); c = 1.3
    best = complexity_term(A, optimal_margins(A, c), num_samples=100)
    for g in 12 * c * rng.dirichlet(np.ones(12), 300):
        assert best <= complexity_term(A, g, num_samples=100) * (1 + 1e-12)
    At = torch.tensor(A); gt = torch.tensor(rng.uniform(0.5, 2, 12), requires_grad=True)
    assert torch.autograd.gradcheck(lambda m: complexity_term(At, m, num_samples=50), (gt,))


@pytest.mark.parametrize("kw,msg", [
    (dict(variability=-np.ones(3)), "variability"), (dict(variability=np.array([1, np.nan, 1.0])), "variability"),
    (dict(margins=np.zeros(3)), "margins"), (dict(margins=np.ones(2)), "shape"),
    (dict(num_samples=0), "num_samples"), (dict(num_samples=2.5), "num_samples"),
    (dict(Lambda=-1.0), "Lambda"), (dict(constant='x'), "constant"),
])
def test_complexity_term_bad_input(kw, msg):
    args = dict(variability=np.ones(3), margins=np.ones(3), Lambda=1.0, num_samples=10)
    args.update(kw)
    with pytest.raises(ValueError, match=msg): complexity_term(**args)


def test_margin_bound_bad_risk():
    with pytest.raises(ValueError, match="empirical_risk"): margin_bound(-0.1, np.ones(2), np.ones(2), num_samples=5)
    with pytest.raises(ValueError, match="empirical_risk"): margin_bound(float('nan'), np.ones(2), np.ones(2), num_samples=5)


# ---------------------------------------------------------------- the per-class bound (chapter 01)
def test_class_complexity_terms_naive_and_quarter_rule_minimises_the_mean():
    from margin_notes.bound import class_complexity_terms
    rng = np.random.default_rng(7)
    for K in (2, 5, 30):
        A, n = 10.0 ** rng.uniform(-2, 2, K), rng.integers(1, 1000, K).astype(float)
        g = rng.uniform(0.1, 3, K)
        naive = [4 * K * 1.5 * math.sqrt(A[k]) / (math.log(2) * g[k] * math.sqrt(n[k])) for k in range(K)]
        np.testing.assert_allclose(class_complexity_terms(A, g, n, Lambda=1.5), naive, rtol=1e-12)
        q = (A / n) ** 0.25; q = q * K / q.sum()                         # gamma ∝ (A/N)^(1/4), mean 1
        best = class_complexity_terms(A, q, n).mean()
        for _ in range(200):                                            # every random feasible allocation is worse
            r = rng.dirichlet(np.ones(K)) * K
            assert best <= class_complexity_terms(A, np.maximum(r, 1e-9), n).mean() + 1e-9
        eq = np.sqrt(A / n); eq = eq * K / eq.sum()                     # gamma ∝ sqrt(A/N) equalises the terms
        t = class_complexity_terms(A, eq, n)
        np.testing.assert_allclose(t, np.full(K, t[0]), rtol=1e-10)


@pytest.mark.parametrize("kw,msg", [(dict(variability=[-1.0, 1.0]), 'variability'), (dict(margins=[0.0, 1.0]), 'margins'),
                                    (dict(class_counts=[0, 3]), 'class_counts'), (dict(class_counts=[1, 2, 3]), 'shape')])
def test_class_complexity_terms_bad_input(kw, msg):
    from margin_notes.bound import class_complexity_terms
    args = dict(variability=[1.0, 2.0], margins=[1.0, 1.0], class_counts=[10, 20]); args.update(kw)
    with pytest.raises(ValueError, match=msg): class_complexity_terms(**args)
