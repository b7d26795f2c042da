"""The library's public defaults are the forms measured not to hurt (chapter 27's defaults table, results/defaults/):
MR2Loss defaults to the released code's scale, DBMLoss to the Balanced-Softmax base; the paper-literal forms stay
available by name."""
import json
from pathlib import Path

import torch

from margin_notes.dbm import DBMLoss
from margin_notes.mr2 import MR2Loss

ROOT = Path(__file__).resolve().parents[1]


def _stream(seed=0, K=6, B=12, D=5, n=4):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(B, K, generator=g, dtype=torch.float64), torch.randint(0, K, (B,), generator=g),
             torch.randn(B, D, generator=g, dtype=torch.float64) * 3) for _ in range(n)]


def _losses(loss, batches):
    return torch.tensor([loss(z, y, f).item() for z, y, f in batches], dtype=torch.float64)


def test_mr2_default_is_the_released_form_not_the_paper_form():
    b = _stream()
    default = _losses(MR2Loss(6).double(), b)
    torch.testing.assert_close(default, _losses(MR2Loss(6, variant='released').double(), b), rtol=0, atol=0)
    assert not torch.allclose(default, _losses(MR2Loss(6, variant='paper').double(), b))


def test_dbm_default_is_the_balanced_softmax_base():
    counts = [50, 20, 8, 3]
    g = torch.Generator().manual_seed(1)
    cos = torch.rand(16, 4, generator=g, dtype=torch.float64) * 2 - 1
    y = torch.randint(0, 4, (16,), generator=g)
    d = DBMLoss(counts)(cos, y)
    torch.testing.assert_close(d, DBMLoss(counts, base='bs')(cos, y), rtol=0, atol=0)
    assert not torch.isclose(d, DBMLoss(counts, base='ce')(cos, y))


def test_the_chosen_defaults_are_backed_by_the_measurement():
    "results/defaults/defaults.json (a new user's CNN on Fashion-MNIST-LT IF 50, 3 seeds) backs the shipped defaults."
    res = json.loads((ROOT / 'results' / 'defaults' / 'defaults.json').read_text())['results']
    mean = {k: sum(r['overall'] for r in v) / len(v) for k, v in res.items()}
    ce = mean['CE']
    released, paper = mean['MR2Loss(K, lam=0.1, variant="released")'], mean['MR2Loss(K, lam=0.1, variant="paper")']
    assert released >= ce - 0.02 > paper          # the default is within 2 points of CE; the paper-literal form is not
    assert mean['DBMLoss(counts, base="bs", scale=32)'] > mean['DBMLoss(counts, base="ce", scale=32)']
    assert mean['DBMLoss(counts)'] >= ce - 0.02                      # the shipped DBM default (BS base, s=8) as well
    assert all('scale=8.0' in r['loss_repr'] and "base='bs'" in r['loss_repr'] for r in res['DBMLoss(counts)'])


def test_dbm_scale_sweep_backs_chapter_23s_recommendation():
    """results/defaults/dbm-scale.json (same CNN, data and seeds; s = 8, 16, 32) backs chapter 29's stated conclusion:
    DBM-BS is best at s=8 and within 2 points of linear-head CE (above it, on every seed) there and at s=16, the paper's
    s=32 is not; plain CE on s*cos at s=8 is within 2 points of linear CE too, so the gap is the scale's."""
    d = json.loads((ROOT / 'results' / 'defaults' / 'dbm-scale.json').read_text())
    assert d['smoke'] is False and d['seeds'] == [0, 1, 2] and d['epochs'] == 3 and d['scales'] == [8, 16, 32]
    res, rows = d['results'], d['rows']
    assert all([r['seed'] for r in rs] == d['seeds'] for rs in res.values())
    lin = [r['overall'] for r in res['CE (linear head)']]

    def diffs(family, s):
        lab = next(k for k, m in rows.items() if m['loss'] == family and m['scale'] == s)
        return [r['overall'] - c for r, c in zip(res[lab], lin)]      # paired by seed

    mean = lambda v: sum(v) / len(v)
    bs = {s: mean(diffs('DBM-BS', s)) for s in d['scales']}
    assert max(bs, key=bs.get) == 8                                   # the recommended scale
    assert sorted(s for s, v in bs.items() if v >= -0.02) == [8, 16]  # within 2 points of linear CE (mean)
    assert bs[32] < -0.02                                             # the paper's scale is not
    assert all(x > 0 for s in (8, 16) for x in diffs('DBM-BS', s))    # above linear CE on every seed
    assert mean(diffs('CE on s·cos', 8)) >= -0.02 > mean(diffs('CE on s·cos', 32))
    assert all(mean(diffs('DBM-BS', s)) > mean(diffs('DBM-CE', s)) for s in d['scales'])
    assert DBMLoss([50, 20, 8, 3]).scale == 8.0, "chapter 29 makes s=8 DBMLoss's default scale; update its prose if it moves"


def test_dbm_s8_does_not_hurt_on_the_books_other_experiments():
    """The default s=8 against the paper's s=32 and ERM on chapter 26's probe (balanced, IF 100), chapter 27's CNN and
    digits (results files of the full configuration): never below s=32 on average, never more than noise below ERM."""
    import numpy as np
    R = ROOT / 'results'
    def mean(rs): return float(np.mean([r['overall'] if 'overall' in r else np.mean(r['per_class']) for r in rs]))
    for path, key, erm, s32, s8 in [(R / 'cpu_features' / 'balanced.json', 'runs', 'erm', 'dbm', 'dbm s=8'),
                                    (R / 'cpu_features' / 'lt100.json', 'runs', 'erm', 'dbm', 'dbm s=8'),
                                    (R / 'cpu_features' / 'lt10.json', 'runs', 'erm', 'dbm', 'dbm s=8'),
                                    (R / 'fmnist_lt' / 'validated.json', 'runs', 'erm', 'dbm', 'dbm s=8'),
                                    (R / 'defaults' / 'dbm-scale-digits.json', 'results', 'ERM (linear head)',
                                     'DBMLoss(counts, scale=32)', 'DBMLoss(counts, scale=8)')]:
        g = json.loads(path.read_text()); runs = g[key]
        assert len(runs[s8]) == 5 and [r['seed'] for r in runs[s8]] == [r['seed'] for r in runs[s32]], path
        assert mean(runs[s8]) >= mean(runs[s32]), path
        assert mean(runs[s8]) >= mean(runs[erm]) - 0.01, path          # within a point of ERM or better
