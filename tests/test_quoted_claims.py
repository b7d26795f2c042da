"Sentences of the book that quote results: each is checked against the committed results/ file it quotes (issue 24's list)."
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import ttest_rel

from margin_notes.diagnose import class_permutation_test, class_verdict
from margin_notes.metrics import holm_adjust

ROOT = Path(__file__).resolve().parents[1]
R = ROOT / 'results'


def prose(name):
    "Every markdown cell of a chapter, joined (newlines folded to spaces, so a sentence can be found across line breaks)."
    nb = json.loads((ROOT / 'nbs' / f'{name}.ipynb').read_text())
    return ' '.join(' '.join(''.join(c['source']).split()) for c in nb['cells'] if c['cell_type'] == 'markdown')


def has(name, sentence):
    assert ' '.join(sentence.split()) in prose(name), f"{name}: sentence not found: {sentence[:80]}"


def load(*parts):
    p = R.joinpath(*parts)
    if not p.exists(): pytest.skip(f"{p.name} not committed")
    return json.loads(p.read_text())


def acc(runs, k, group=None):
    "Per-seed accuracy in % of one row: overall (the test sets have equal classes) or the mean over a group of classes."
    pc = np.array([r['per_class'] for r in runs[k]])
    return 100 * (pc.mean(1) if group is None else pc[:, group].mean(1))


def test_chapter21_holm_survivors_and_lambda_sweep():
    g = load('fmnist_lt', 'grid.json'); runs, hard = g['runs'], g['difficulty_groups']['hard']
    pairs = [(m, 'erm') for m in ('focal', 'ldam-drw', 'bs', 'la-posthoc', 'marc', 'dbm', 'lwr', 'mr2', 'mr2 λ=0', 'mr2 λ=1e-3',
                                  'mr2 λ=0.1 released', 'mr2 λ=0.1 normalised')] + [('lwr', 'bs'), ('dbm', 'bs'), ('marc', 'bs')]
    tests = [(m, ref, met, (acc(runs, m, grp) - acc(runs, ref, grp)).mean(), ttest_rel(acc(runs, m, grp), acc(runs, ref, grp)).pvalue)
             for m, ref in pairs for met, grp in (('overall', None), ('hard', hard))]
    ph = holm_adjust([t[4] for t in tests])
    assert len(tests) == 30
    survivors = {(m, ref, met) for (m, ref, met, _, _), p in zip(tests, ph) if p < 0.05}
    assert survivors == {(m, 'erm', 'hard') for m in ('bs', 'la-posthoc', 'marc', 'lwr', 'mr2')}
    T = {(m, ref, met): (d, p) for m, ref, met, d, p in tests}
    assert round(T[('mr2', 'erm', 'hard')][0], 1) == -33.3 and round(T[('mr2', 'erm', 'overall')][0], 1) == -14.0
    assert round(T[('mr2 λ=1e-3', 'erm', 'overall')][0], 1) == -0.4 and T[('mr2 λ=1e-3', 'erm', 'overall')][1] > 0.05
    assert round((acc(runs, 'mr2 λ=1e-2') - acc(runs, 'erm')).mean(), 1) == -2.0
    # the hardest class (Shirt, 6) at lambda = 0 against ERM, mean over seeds
    w = {k: np.mean([r['per_class'] for r in runs[k]], 0) for k in ('erm', 'mr2 λ=0')}
    assert w['erm'].argmin() == w['mr2 λ=0'].argmin() == 6
    assert (round(100 * w['mr2 λ=0'][6], 1), round(100 * w['erm'][6], 1)) == (27.2, 25.8)
    has('27_fmnist_lt', "is the **Hard-group gains of Balanced Softmax, LA post-hoc, MARC and LWR over ERM** and the **Hard-group drop of "
                        "MR² at λ = 0.1** (paper-faithful term, −33.3 points)")
    has('27_fmnist_lt', "λ = 0 (27.2 % against ERM's 25.8 %, mean over seeds)")
    # lambda = 1e-2 in the five-seed rerun: -1.8 points, significant (raw p times 34 tests below 0.05 bounds Holm's adjustment)
    v = load('fmnist_lt', 'validated.json')['runs']
    d, p = (acc(v, 'mr2 λ=1e-2') - acc(v, 'erm')).mean(), ttest_rel(acc(v, 'mr2 λ=1e-2'), acc(v, 'erm')).pvalue
    assert round(d, 1) == -1.8 and 34 * p < 0.05 and len(v['erm']) == 5
    has('27_fmnist_lt', "(λ = 10⁻³: −0.4 points, not significant; λ = 10⁻²: −2.0 in the three-seed grid, −1.8 and significant in the "
                        "five-seed rerun; λ = 0.1: −14.0 overall and −33.3 on the Hard group")


def test_chapter21_and_10_collapse_numbers():
    d = load('defaults', 'defaults.json')['results']
    ce, paper = d['CE'], d['MR2Loss(K, lam=0.1, variant="paper")']
    assert round(100 * (np.mean([r['overall'] for r in paper]) - np.mean([r['overall'] for r in ce])), 1) == -16.4
    assert all(r['per_class'][6] == 0 == min(r['per_class']) for r in paper)   # Shirt (class 6) at 0 % on every seed ...
    assert load('defaults', 'defaults.json')['class_counts'][6] == 442 and all(r['per_class'][9] > 0.05 for r in paper)  # ... not the rarest
    has('27_fmnist_lt', "λ = 0.1 with this term cost 16.4 points against cross-entropy and left one class, Shirt (class 6, 442 training images), at 0 % on every seed")
    has('29_premise', "the one setting that hurts badly — one class (Shirt, 442 training images) at 0 % on every seed")
    g = load('fmnist_lt', 'grid.json')['runs']
    assert (round(acc(g, 'mr2').mean(), 1), round(acc(g, 'erm').mean(), 1)) == (67.7, 81.7)
    assert round(100 * np.mean([min(r['per_class']) for r in g['mr2']]), 1) == 0.5
    assert all(r['per_class'].index(min(r['per_class'])) == 6 and min(r['per_class']) < 0.01 for r in g['mr2'])
    has('27_fmnist_lt', "λ = 0.1 drives the hardest class, Shirt, to below 1 % on every seed")
    has('13_mr2', "chapter 27 measures 67.7 % against ERM's 81.7 % on Fashion-MNIST-LT, worst class 0.5 %")
    has('13_mr2', "* `variant='released'` (default):"); assert "`variant='paper'` (default)" not in prose('13_mr2')


def test_chapter20_costs_and_control_grid_edge():
    g = load('cpu_features', 'lt100.json')['runs']
    s = {k: round(float(np.mean([r['seconds'] for r in v])), 1) for k, v in g.items()}
    assert s['erm'] == s['la-posthoc'] == 57.1
    mr2 = [v for k, v in s.items() if k.startswith('mr2 λ=0.1')]
    assert (min(mr2), max(mr2)) == (14.9, 30.8)
    has('26_cpu_features', "In `lt100.json` ERM and LA post-hoc take 57.1 s a run and MR² at λ = 0.1 14.9–30.8 s")
    b = load('cpu_features', 'balanced.json')
    assert b['selected']['erm+reg'] == 'erm wd=0.005'
    wds = sorted(float(k.split('=')[1]) for k in b['runs'] if k.startswith('erm wd='))
    assert max(wds) == 0.005                                             # the chosen value is the grid's edge
    has('26_cpu_features', "the control's grid stopped at its chosen value (weight decay 5e-3, the largest tried)")
    assert 'slowest probe' not in prose('26_cpu_features') and 'is the library default (λ = 0.1, paper-faithful term)' not in prose('26_cpu_features')


def test_readme_and_index_premise_sentence():
    "README/index: A never ranks classes like their error significantly; reversed significantly on the Fashion-MNIST CNN."
    ents = {e['name']: e for f in sorted((R / 'premise').glob('premise-*.json')) for e in json.loads(f.read_text())['entries']}
    if len(ents) != 8: pytest.skip('premise results not committed')
    v = {}
    for n, e in ents.items():
        X = np.array([[c['A'] for c in ps['per_class']] for ps in e['per_seed']])
        E = np.array([[1 - c['acc'] for c in ps['per_class']] for ps in e['per_seed']])
        t = class_permutation_test(X, E, n_perm=100_000, seed=0)
        v[n] = class_verdict(t['rho'], t['p'])
    assert 'tracks difficulty' not in v.values()
    assert v['fmnist-balanced'] == v['fmnist-lt100'] == 'reversed'
    sentence = ("on none of the book's eight ten-class models does its statistic rank the classes like their error "
                "(a permutation test over the classes), and on the Fashion-MNIST CNN it ranks them significantly the other way (chapter 29)")
    has('index', sentence)
    assert ' '.join(sentence.split()) in ' '.join((ROOT / 'README.md').read_text().split())
    assert 'wrong way round' not in (ROOT / 'README.md').read_text()
