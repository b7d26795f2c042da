"Tests for margin_notes.metrics against naive Python implementations."
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from margin_notes.metrics import (per_class_accuracy, confusion_matrix, difficulty_ranking, difficulty_groups,
                                  shot_groups, accuracy_report, aggregate_reports, format_mean_std,
                                  plot_sorted_per_class)


def naive_per_class(preds, targets, K):
    out = []
    for k in range(K):
        idx = [i for i, t in enumerate(targets) if t == k]
        out.append(float('nan') if not idx else sum(preds[i] == k for i in idx) / len(idx))
    return out


@st.composite
def pred_target(draw):
    K = draw(st.integers(1, 8)); B = draw(st.integers(0, 40))
    t = draw(st.lists(st.integers(0, K - 1), min_size=B, max_size=B))
    p = draw(st.lists(st.integers(0, K - 1), min_size=B, max_size=B))
    return K, p, t


@settings(max_examples=40, deadline=None)
@given(pred_target())
def test_per_class_and_confusion_match_naive(ptk):
    K, p, t = ptk
    got = per_class_accuracy(torch.tensor(p, dtype=torch.long), torch.tensor(t, dtype=torch.long), K)
    exp = naive_per_class(p, t, K)
    for g, e in zip(got.tolist(), exp):
        assert (math.isnan(g) and math.isnan(e)) or abs(g - e) < 1e-12
    cm = confusion_matrix(torch.tensor(p, dtype=torch.long), torch.tensor(t, dtype=torch.long), K)
    for i in range(K):
        for j in range(K):
            assert cm[i, j] == sum(1 for a, b in zip(t, p) if a == i and b == j)


def test_bad_inputs():
    with pytest.raises(ValueError, match='targets'): per_class_accuracy(torch.tensor([0, 1]), torch.tensor([0, 5]), 3)
    with pytest.raises(ValueError, match='preds'): per_class_accuracy(torch.tensor([0.5, 1.0]), torch.tensor([0, 1]), 3)
    with pytest.raises(ValueError, match='preds'): confusion_matrix(torch.tensor([0, 7]), torch.tensor([0, 1]), 3)
    with pytest.raises(ValueError, match='NaN'): difficulty_ranking([0.1, float('nan'), 0.3])
    with pytest.raises(ValueError, match='permutation'): accuracy_report([0.1, 0.2, 0.3], difficulty_ranking=[0, 0, 1])
    with pytest.raises(ValueError): aggregate_reports([])


def naive_groups(ref):
    K = len(ref)
    order = sorted(range(K), key=lambda k: (-ref[k], k))
    sizes = [K // 3 + (1 if j < K % 3 else 0) for j in range(3)]
    return order, [sorted(order[sum(sizes[:j]):sum(sizes[:j + 1])]) for j in range(3)]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]), min_size=3, max_size=60))
def test_difficulty_groups_naive_with_ties(ref):
    order, groups = naive_groups(ref)
    assert difficulty_ranking(torch.tensor(ref)) == order
    g = difficulty_groups(torch.tensor(ref))
    assert [g['easy'], g['medium'], g['hard']] == groups
    assert sorted(sum(groups, [])) == list(range(len(ref)))
    sizes = [len(x) for x in groups]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_group_sizes_standard():
    assert [len(v) for v in difficulty_groups(np.random.rand(100)).values()] == [34, 33, 33]
    assert [len(v) for v in difficulty_groups(np.random.rand(1000)).values()] == [334, 333, 333]
    assert [len(v) for v in difficulty_groups(np.random.rand(10)).values()] == [4, 3, 3]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 300), min_size=1, max_size=50), st.data())
def test_report_matches_naive(counts, data):
    K = len(counts)
    acc = data.draw(st.lists(st.floats(0, 1), min_size=K, max_size=K))
    rep = accuracy_report(torch.tensor(acc, dtype=torch.float64), counts)
    assert abs(rep['overall'] - sum(acc) / K) < 1e-9
    assert rep['worst'] == min(acc) and rep['best'] == max(acc)
    mu = sum(acc) / K
    assert abs(rep['std'] - math.sqrt(sum((a - mu) ** 2 for a in acc) / K)) < 1e-9
    for key, pred in (('many_shot', lambda n: n > 100), ('medium_shot', lambda n: 20 <= n <= 100),
                      ('few_shot', lambda n: n < 20)):
        vals = [a for a, n in zip(acc, counts) if pred(n)]
        if vals: assert abs(rep[key] - sum(vals) / len(vals)) < 1e-9
        else: assert math.isnan(rep[key])  # empty group: undefined, not 0


def test_spec_group_counts():
    # Many/Medium/Few (chapter 04) for CIFAR-LT profiles (counts written out independently here)
    c100 = [math.floor(500 * (1 / 100) ** (i / 99)) for i in range(100)]
    g = shot_groups(c100)
    assert (len(g['many_shot']), len(g['medium_shot']), len(g['few_shot'])) == (35, 35, 30)
    c10 = [math.floor(5000 * (1 / 100) ** (i / 9)) for i in range(10)]
    g = shot_groups(c10)
    assert (len(g['many_shot']), len(g['medium_shot']), len(g['few_shot'])) == (8, 2, 0)


def test_report_difficulty_and_weighted_overall():
    acc = [0.9, 0.1, 0.5, 0.7, 0.3]
    rep = accuracy_report(acc, difficulty_ranking=difficulty_groups(acc))
    assert rep['easy'] == pytest.approx(0.8) and rep['medium'] == pytest.approx(0.4) and rep['hard'] == pytest.approx(0.1)
    rep2 = accuracy_report(acc, test_counts=[1, 1, 1, 1, 6])
    assert rep2['overall'] == pytest.approx((0.9 + 0.1 + 0.5 + 0.7 + 6 * 0.3) / 10)


def test_aggregate_nan_propagates_and_ddof1():
    reps = [{'overall': 0.5, 'few_shot': float('nan'), 'name': 'x', 'pc': [0.1, 0.2]},
            {'overall': 0.7, 'few_shot': 0.2, 'name': 'y', 'pc': [0.3, 0.2]}]
    agg = aggregate_reports(reps)
    assert agg['overall']['mean'] == pytest.approx(0.6)
    assert agg['overall']['std'] == pytest.approx(math.sqrt(((0.1) ** 2 + (0.1) ** 2) / 1))
    assert math.isnan(agg['few_shot']['mean']) and math.isnan(agg['few_shot']['std'])
    assert 'name' not in agg
    assert agg['pc']['mean'] == pytest.approx([0.2, 0.2])
    assert format_mean_std(agg['few_shot']) == '–'


def test_plot_runs():
    import matplotlib; matplotlib.use('Agg')
    ax = plot_sorted_per_class({'CE': np.random.rand(3, 10), 'MR2': np.random.rand(10)}, order='CE')
    assert len(ax.lines) == 2
    y = ax.lines[0].get_ydata()
    assert all(a >= b for a, b in zip(y[:-1], y[1:]))  # the reference curve is sorted descending


def test_shot_thresholds_are_parameters_fashion_mnist_like():
    """CIFAR/ImageNet-LT defaults (Many > 100, Few < 20) leave Few empty on Fashion-MNIST-LT counts (6000 -> 60);
    thresholds scaled to the dataset give all three groups, and accuracy_report passes them on."""
    fm = [int(6000 * 100 ** (-k / 9)) for k in range(10)]
    acc = torch.linspace(0.9, 0.45, 10, dtype=torch.float64)
    default = accuracy_report(acc, fm)
    assert math.isnan(default['few_shot'])
    g = shot_groups(fm, many=1000, few=200)
    assert g == {'many_shot': [0, 1, 2, 3], 'medium_shot': [4, 5, 6], 'few_shot': [7, 8, 9]}
    rep = accuracy_report(acc, fm, many=1000, few=200)
    for k, idx in g.items():
        assert rep[k] == pytest.approx(sum(acc[i].item() for i in idx) / len(idx))
    with pytest.raises(ValueError, match='few <= many'):
        shot_groups(fm, many=10, few=20)


def _naive_t_p(x, y):
    "Two-sided p of the paired t-test from its definition: t = mean(d) / (sd(d)/sqrt(n)), n-1 degrees of freedom."
    from scipy.stats import t as tdist
    d = [a - b for a, b in zip(x, y)]; n = len(d); m = sum(d) / n
    sd = math.sqrt(sum((v - m) ** 2 for v in d) / (n - 1))
    return 2 * tdist.sf(abs(m / (sd / math.sqrt(n))), n - 1)


def test_paired_tests_against_definition():
    from margin_notes.metrics import paired_tests, holm_adjust
    rng = np.random.default_rng(1)
    runs = {k: (0.6 + 0.02 * i + 0.01 * rng.standard_normal(5)).tolist() for i, k in enumerate(('ref', 'a', 'b', 'c'))}
    pairs = [('a', 'ref'), ('b', 'ref'), ('c', 'ref'), ('gone', 'ref')]
    rows = paired_tests(runs, pairs)
    assert [(r['method'], r['vs']) for r in rows] == pairs[:3]               # a pair with a missing label is skipped
    p = [_naive_t_p(runs[m], runs['ref']) for m in ('a', 'b', 'c')]
    assert [r['p'] for r in rows] == pytest.approx(p, rel=1e-9)
    # Holm over the whole family, by the step-down definition
    order = sorted(range(3), key=lambda k: p[k]); adj = [0.0] * 3; run = 0.0
    for j, k in enumerate(order): run = max(run, min(1.0, (3 - j) * p[k])); adj[k] = run
    assert [r['p (Holm)'] for r in rows] == pytest.approx(adj, rel=1e-9)
    assert [r['significant'] for r in rows] == ['yes' if a < 0.05 else 'no' for a in adj]
    d = np.subtract(runs['c'], runs['ref'])
    assert rows[2]['difference (points)'] == pytest.approx(100 * d.mean())
    assert rows[2]['sd of difference'] == pytest.approx(100 * d.std(ddof=1))
    # the 95 % interval by its definition: the differences delta that a paired t-test of x - delta against y
    # cannot reject at 0.05, so at each end the naive test gives p = 0.05 exactly
    for r, m in zip(rows, ('a', 'b', 'c')):
        lo, hi = r['ci95 (points)']
        assert lo < r['difference (points)'] < hi
        for end in (lo, hi):
            assert _naive_t_p([v - end / 100 for v in runs[m]], runs['ref']) == pytest.approx(0.05, rel=1e-7)
    # results dicts: one row per (pair, metric), one family; scale=1 for values already in points
    res = {k: [{'report': {'overall': v, 'hard': v / 2}} for v in vs] for k, vs in runs.items()}
    rr = paired_tests(res, pairs[:2], metrics=('overall', 'hard'))
    assert [(r['method'], r['metric']) for r in rr] == [('a', 'overall'), ('a', 'hard'), ('b', 'overall'), ('b', 'hard')]
    assert rr[0]['p'] == pytest.approx(p[0], rel=1e-9)
    assert [r['p (Holm)'] for r in rr] == pytest.approx(holm_adjust([r['p'] for r in rr]).tolist())
    assert paired_tests(runs, pairs[:1], scale=1)[0]['difference (points)'] == pytest.approx(rows[0]['difference (points)'] / 100)
    assert paired_tests(runs, pairs[:1], scale=1)[0]['ci95 (points)'] == pytest.approx([v / 100 for v in rows[0]['ci95 (points)']])
    with pytest.raises(ValueError, match='same seeds'):
        paired_tests({'a': [0.1, 0.2], 'ref': [0.1, 0.2, 0.3]}, [('a', 'ref')])


def test_paired_tests_table_formats_the_rows():
    "One row per comparison, in the rows' order; each cell is the row's number in the stated format; the interval holds Δ and has no plain space."
    pd = pytest.importorskip('pandas')
    from margin_notes.metrics import paired_tests, paired_tests_table
    rng = np.random.default_rng(2)
    runs = {k: [{'report': {'overall': v, 'hard': v - 0.1}} for v in 0.6 + 0.02 * i + 0.01 * rng.standard_normal(4)]
            for i, k in enumerate(('ref', 'a', 'b'))}
    rows = paired_tests(runs, [('a', 'ref'), ('b', 'ref')], metrics=('overall', 'hard'))
    t = paired_tests_table(rows, short=lambda s: s + '!')
    assert list(t.columns) == ['vs', 'metric', 'Δ', '95 % interval', 'sd', 'p', 'p Holm', 'sig.']
    assert list(t.index) == ['a!', 'a!', 'b!', 'b!'] and list(t['vs']) == ['ref!'] * 4
    for (_, r), x in zip(t.iterrows(), rows):
        assert float(r['Δ']) == pytest.approx(x['difference (points)'], abs=0.005)
        lo, hi = (float(v) for v in r['95 % interval'].strip('[]').split(',\u00a0'))
        assert lo <= float(r['Δ']) <= hi and ' ' not in r['95 % interval']
        assert (lo, hi) == pytest.approx(x['ci95 (points)'], abs=0.005)
        assert float(r['sd']) == pytest.approx(x['sd of difference'], abs=0.005)
        assert float(r['p Holm']) == pytest.approx(x['p (Holm)'], abs=5e-5) and r['sig.'] == x['significant']
    # a DataFrame in, no sd column, plain-number runs (no 'metric'), labels as they are
    plain = paired_tests({k: [v['report']['overall'] for v in vs] for k, vs in runs.items()}, [('a', 'ref')])
    t2 = paired_tests_table(pd.DataFrame(plain), sd=False)
    assert list(t2.columns) == ['vs', 'Δ', '95 % interval', 'p', 'p Holm', 'sig.'] and list(t2.index) == ['a']

def test_accuracy_report_keeps_python_floats_in_float64():
    "A list of Python floats is summarised in float64: overall and groups equal the float64 means exactly (once rounded through float32)."
    acc = [0.1234567891234, 0.9876543219876, 0.5555555555555, 0.3333333333333]
    rep = accuracy_report(acc, class_counts=[500, 120, 50, 5])
    assert rep['overall'] == float(np.mean(np.array(acc, dtype=np.float64)))
    assert rep['worst'] == acc[0] and rep['best'] == acc[1] and rep['few_shot'] == acc[3]
    assert rep['many_shot'] == float(np.mean(np.array(acc[:2], dtype=np.float64)))
