"Tests for margin_notes.diagnose: class statistics and Spearman against naive loops, the diagnosis on known cases, the CLI on a real run folder."
import json
import math

import numpy as np
import pytest
import torch

from margin_notes.diagnose import (STATISTICS, class_permutation_test, class_statistics, class_verdict, diagnose, diagnosis_markdown,
                                   diagnosis_tables, fisher_z_interval, spearman, main)


def naive_stats(X, y, K, p=2.0, center=None):
    "Explicit loops in float64: ||mu_k||_p^2, mean_i ||x_i - mu_k||_p^2 and their sum."
    X = np.asarray(X, dtype=np.float64)
    if center is not None: X = X - np.asarray(center, dtype=np.float64)
    out = {'mean_norm': [], 'spread': [], 'A': []}
    for k in range(K):
        rows = [X[i] for i in range(len(y)) if y[i] == k]
        if not rows:
            for v in out.values(): v.append(float('nan'))
            continue
        mu = [sum(r[j] for r in rows) / len(rows) for j in range(X.shape[1])]
        mn = sum(abs(m) ** p for m in mu) ** (2.0 / p)
        sp = sum(sum(abs(r[j] - mu[j]) ** p for j in range(X.shape[1])) ** (2.0 / p) for r in rows) / len(rows)
        out['mean_norm'].append(mn); out['spread'].append(sp); out['A'].append(mn + sp)
    return {k: np.array(v) for k, v in out.items()}


@pytest.mark.parametrize("p", [2.0, 5.0])
@pytest.mark.parametrize("centred", [False, True])
def test_class_statistics_matches_naive(p, centred):
    rng = np.random.default_rng(int(p) + 10 * centred)
    K, d = 5, 7
    y = np.r_[rng.integers(0, K - 1, 60), 0]           # class K-1 empty
    X = rng.normal(size=(len(y), d)) * rng.uniform(0.1, 3, K)[y, None] + rng.normal(size=(K, d))[y] * 2
    c = X.mean(0) if centred else None
    st = class_statistics(torch.tensor(X), torch.tensor(y), K, p=p, center=c)
    ref = naive_stats(X, y, K, p, c)
    for key in ('mean_norm', 'spread', 'A'):
        np.testing.assert_allclose(st[key][:K - 1], ref[key][:K - 1], rtol=1e-10)
        assert math.isnan(st[key][K - 1])
    np.testing.assert_array_equal(st['count'], np.bincount(y, minlength=K))


def test_A_is_second_moment_and_spread_translation_invariant():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 3)) + 5, np.arange(40) % 4
    st = class_statistics(X, y)
    second = np.array([(X[y == k] ** 2).sum(1).mean() for k in range(4)])
    np.testing.assert_allclose(st['A'], second, rtol=1e-12)
    shifted = class_statistics(X - 7.0, y)
    np.testing.assert_allclose(shifted['spread'], st['spread'], rtol=1e-10)
    assert not np.allclose(shifted['A'], st['A'])           # A is not translation-invariant


def naive_spearman(x, y):
    "Without ties: 1 - 6 sum d^2 / (n (n^2 - 1)), ranks by explicit counting."
    n = len(x)
    rx = [sum(1 for b in x if b < a) + 1 for a in x]; ry = [sum(1 for b in y if b < a) + 1 for a in y]
    return 1 - 6 * sum((a - b) ** 2 for a, b in zip(rx, ry)) / (n * (n * n - 1))


def test_spearman_against_naive_and_scipy():
    from scipy.stats import spearmanr
    rng = np.random.default_rng(1)
    for n in (3, 5, 10, 50):
        x, y = rng.normal(size=n), rng.normal(size=n)
        assert spearman(x, y) == pytest.approx(naive_spearman(list(x), list(y)), abs=1e-12)
    x, y = rng.integers(0, 3, 20).astype(float), rng.integers(0, 4, 20).astype(float)   # ties
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    assert math.isnan(spearman([1, 1, 1, 1], [1, 2, 3, 4]))
    assert math.isnan(spearman([1, 2], [2, 1]))
    with pytest.raises(ValueError, match='same length'): spearman([1, 2, 3], [1, 2])


def _toy(n=4000, seed=1):
    g = torch.Generator().manual_seed(seed)
    means = torch.tensor([[4., 0.], [0., 4.], [-4., 0.], [0., -4.]]); scale = torch.tensor([0.8, 1.4, 2.0, 3.0])
    def draw():
        y = torch.arange(n) % 4
        return means[y] + scale[y, None] * torch.randn(n, 2, generator=g), y
    (xtr, ytr), (xte, yte) = draw(), draw()
    pred = ((xte[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    return xtr, ytr, xte, yte, pred


def test_diagnose_known_ordering_and_consistency():
    xtr, ytr, xte, yte, pred = _toy()
    d = diagnose(xtr, ytr, yte, pred, bootstrap=30)
    rho = {c['statistic']: c for c in d['correlations']}
    assert rho['spread']['spearman_vs_error'] == 1.0 and rho['A']['spearman_vs_error'] == 1.0
    assert rho['A']['ci_low'] > 0
    acc = np.array([r['acc'] for r in d['per_class']])
    ref = np.array([float((pred[yte == k] == k).float().mean()) for k in range(4)])
    np.testing.assert_allclose(acc, ref, rtol=1e-6)
    assert d['overall_accuracy'] == pytest.approx(float((pred == yte).float().mean()))
    for s in STATISTICS:                      # margins: cube-root rule, mean 1
        g = np.array([r[f'gamma_{s}'] for r in d['per_class']]); v = np.array([r[s] for r in d['per_class']])
        np.testing.assert_allclose(g, 4 * v ** (1 / 3) / (v ** (1 / 3)).sum(), rtol=1e-6)
    # scores give the same diagnosis as their argmax
    scores = torch.nn.functional.one_hot(pred, 4).float() + 0.01 * torch.rand(len(pred), 4)
    d2 = diagnose(xtr, ytr, yte, scores, bootstrap=0)
    assert [r['acc'] for r in d2['per_class']] == [r['acc'] for r in d['per_class']]
    # four classes: even a perfect ranking has class-permutation p = 2/4! = 1/12, so the verdict is "not significant"
    assert rho['A']['p_perm'] == pytest.approx(1 / 12) and 'A: not significant (rho = +1.00' in diagnosis_markdown(d)
    pc, cr = diagnosis_tables(d)
    assert len(pc) == 4 and 'A' in cr.index


def test_diagnose_negative_case():
    "A class far from the origin but tight (large A, easy) and one near the origin but wide (small A, hard)."
    g = torch.Generator().manual_seed(0)
    y = torch.arange(3000) % 3
    centres = torch.tensor([[10., 10.], [1., 0.], [0., 1.]]); sc = torch.tensor([0.1, 0.6, 0.6])
    x = centres[y] + sc[y, None] * torch.randn(3000, 2, generator=g)
    pred = ((x[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
    d = diagnose(x, y, y, pred, bootstrap=0)
    rho = {c['statistic']: c['spearman_vs_error'] for c in d['correlations']}
    assert rho['A'] < 0 and rho['mean_norm'] < 0


def test_diagnose_bad_input():
    xtr, ytr, xte, yte, pred = _toy(40)
    with pytest.raises(ValueError, match='test_preds'): diagnose(xtr, ytr, yte, pred[:-1])
    with pytest.raises(ValueError, match='class_counts'): diagnose(xtr, ytr, yte, pred, class_counts=[1, 2])
    with pytest.raises(ValueError, match='NaN'): diagnose(xtr * float('nan'), ytr, yte, pred)
    with pytest.raises(ValueError, match='labels'): class_statistics(xtr, ytr[:3])


def test_main_on_a_real_engine_run(tmp_path, capsys):
    "Train one epoch of the digits preset with the engine, then `python -m margin_notes.diagnose` on the suite-like folder."
    from margin_notes.presets import get_config
    from margin_notes.engine import fit
    torch.set_num_threads(1)
    fit(get_config('digits-lt-erm').replace(epochs=1), tmp_path / 'runs' / 'erm', verbose=False)
    assert main([str(tmp_path / 'runs'), '--bootstrap', '5']) == 0
    out = tmp_path / 'runs' / 'erm' / 'diagnose'
    d = json.loads((out / 'diagnose.json').read_text())
    assert len(d['per_class']) == 10 and (out / 'diagnose.png').stat().st_size > 0
    assert [r['count'] for r in d['per_class']] == json.loads((tmp_path / 'runs' / 'erm' / 'results.json').read_text())['class_counts']
    assert '| statistic |' in (out / 'diagnose.md').read_text()
    assert main([str(tmp_path / 'nothing-here')]) == 2   # one line, exit 2 (no argparse usage block)


def naive_class_permutation_p(x, y):
    "Every ordering of the classes by itertools, rho by the no-ties formula per row, the same ordering for every row."
    import itertools
    x, y = np.atleast_2d(x), np.atleast_2d(y); K = x.shape[1]
    obs = np.mean([naive_spearman(list(a), list(b)) for a, b in zip(x, y)])
    hits = sum(abs(np.mean([naive_spearman([a[i] for i in pi], list(b)) for a, b in zip(x, y)])) >= abs(obs) - 1e-9
               for pi in itertools.permutations(range(K)))
    return obs, hits / math.factorial(K)


def test_class_permutation_test_against_enumeration():
    rng = np.random.default_rng(5)
    for S, K in ((1, 5), (3, 6), (2, 7)):
        x, y = rng.normal(size=(S, K)), rng.normal(size=(S, K))
        r = class_permutation_test(x, y)
        assert r['exact'] and r['permutations'] == math.factorial(K)
        obs, p = naive_class_permutation_p(x, y)
        assert r['rho'] == pytest.approx(obs, abs=1e-12) and r['p'] == pytest.approx(p, abs=1e-12)
        mc = class_permutation_test(x, y, n_perm=20_000, exact=False, seed=3)   # random orderings: within Monte Carlo error
        assert abs(mc['p'] - p) < 4 * math.sqrt(p * (1 - p) / 20_000) + 1e-3


def test_class_permutation_test_known_critical_value():
    "Ten classes, no ties: the two-sided 5 % critical value of Spearman's rho is 0.648 (exact tables)."
    y = np.arange(10.)
    x58 = np.array([0, 1, 2, 3, 6, 9, 8, 7, 5, 4.])      # sum of squared rank differences 58: rho = 0.6485
    x60 = np.array([0, 1, 2, 3, 7, 8, 9, 5, 6, 4.])      # 60: rho = 0.6364
    assert ((x58 - y) ** 2).sum() == 58 and ((x60 - y) ** 2).sum() == 60
    r58, r60 = class_permutation_test(x58, y, exact=True), class_permutation_test(x60, y, exact=True)
    assert r58['rho'] == pytest.approx(1 - 6 * 58 / 990) and r58['p'] < 0.05 < r60['p']
    assert r58['permutations'] == math.factorial(10)
    assert class_verdict(r58['rho'], r58['p']) == 'tracks difficulty' and class_verdict(r60['rho'], r60['p']) == 'not significant'
    lo, hi = fisher_z_interval(0.0, 10)
    assert -lo == pytest.approx(hi) and hi == pytest.approx(0.643, abs=1e-3)    # Fisher z agrees with the table to 0.01


def test_diagnose_significant_with_eight_classes():
    "Eight classes on a circle, each wider than the last: A and the spread rank them like their error, p = 2/8!."
    g = torch.Generator().manual_seed(0)
    ang = torch.arange(8) * (2 * math.pi / 8); means = 6 * torch.stack([ang.cos(), ang.sin()], 1)
    scale = torch.linspace(0.5, 4.0, 8)
    def draw(n):
        y = torch.arange(n) % 8
        return means[y] + scale[y, None] * torch.randn(n, 2, generator=g), y
    (xtr, ytr), (xte, yte) = draw(8000), draw(16000)
    pred = ((xte[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    d = diagnose(xtr, ytr, yte, pred, bootstrap=0)
    c = {r['statistic']: r for r in d['correlations']}
    assert c['spread']['spearman_vs_error'] == 1.0 and c['spread']['p_perm'] == pytest.approx(2 / math.factorial(8))
    assert c['A']['spearman_vs_error'] > 0.9 and c['A']['p_perm'] < 0.01 and c['A']['perm_exact']
    assert c['A']['ci_class_low'] > 0 and d['permutations'] == 100_000
    assert 'ranks the classes like their error' in diagnosis_markdown(d)
    assert math.isnan(diagnose(xtr, ytr, yte, pred, bootstrap=0, permutations=0)['correlations'][0]['p_perm'])
    with pytest.raises(ValueError, match='permutations'): diagnose(xtr, ytr, yte, pred, permutations=-1)


def test_main_without_matplotlib(tmp_path, capsys, monkeypatch):
    "No matplotlib: the table and the verdict, one line saying the figure needs matplotlib, exit code 0."
    import sys
    import margin_notes.diagnose as dg
    xtr, ytr, xte, yte, pred = _toy(400)
    d = diagnose(xtr, ytr, yte, pred, bootstrap=0)
    (tmp_path / 'checkpoint.pt').write_bytes(b'')
    monkeypatch.setattr(dg, 'diagnose_run', lambda rd, **kw: {**d, 'run': str(rd), 'name': 'toy'})
    monkeypatch.setitem(sys.modules, 'matplotlib', None)           # `import matplotlib` now raises ImportError
    monkeypatch.setitem(sys.modules, 'matplotlib.pyplot', None)
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert 'no figure: diagnose.png needs matplotlib' in out and 'Traceback' not in out
    assert '| statistic |' in out and 'not significant' in out
    assert sorted(p.name for p in (tmp_path / 'diagnose').iterdir()) == ['diagnose.json', 'diagnose.md']
