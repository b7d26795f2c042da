"Tests for margin_notes.probe: probes on cached features, method grids, PCA and the CIFAR feature subsets."
import json, math

import numpy as np
import pytest
import torch
import torch.nn as nn

from margin_notes.probe import (PROBE_METHODS, ProbeNet, make_scaled_head, probe_head, make_method_loss, train_probe, fit_method,
                                evaluate_probe, run_method_grid, fit_pca, grid_table, save_grid, load_grid,
                                probe_setting, _toy_problem)

torch.set_num_threads(1)


@pytest.fixture(scope='module')
def toy():
    return _toy_problem(num_classes=6, dim=12, n_max=60, imbalance=6.0, n_test=20, seed=1)


def _naive_per_class(preds, labels, K):
    out = []
    for k in range(K):
        idx = [i for i in range(len(labels)) if int(labels[i]) == k]
        out.append(sum(int(preds[i]) == k for i in idx) / len(idx))
    return torch.tensor(out, dtype=torch.float64)


def test_probe_heads_and_errors():
    assert probe_head('erm') == 'linear' and probe_head('ldam-drw') == 'cosine' and probe_head('mr2', 'cosine') == 'cosine'
    with pytest.raises(ValueError, match='cosine'): probe_head('dbm', 'linear')
    with pytest.raises(ValueError, match='method'): probe_head('svm')
    with pytest.raises(ValueError, match='head'): make_scaled_head(4, 3, 'mlp')
    h = make_scaled_head(4, 3, 'cosine', cosine_scale=7.0)
    out = h(torch.randn(5, 4))
    assert out.abs().max() <= 7.0 + 1e-4 and h.weight.shape == (3, 4)
    with pytest.raises(ValueError, match='length'):
        train_probe(torch.randn(5, 3), torch.zeros(4, dtype=torch.long), 'erm')
    with pytest.raises(ValueError, match='labels'):
        train_probe(torch.randn(4, 3), torch.tensor([0, 1, 2, 5]), 'erm', class_counts=[1, 1, 1])


def test_standardization_and_adapter():
    x = torch.randn(50, 6) * torch.arange(1, 7) + 3
    net = ProbeNet(6, 3, hidden=5).fit_standardization(x)
    z = net.norm(x)
    assert torch.allclose(z.mean(0), torch.zeros(6), atol=1e-5) and torch.allclose(z.std(0), torch.ones(6), atol=1e-4)
    assert net.backbone(x).shape == (50, 5) and (net.backbone(x) >= 0).all()
    assert ProbeNet(6, 3, hidden=0).feature_dim == 6


def test_reproducible_and_seed_dependent(toy):
    tx, ty, vx, vy, counts = toy
    a = train_probe(tx, ty, 'erm', epochs=3, batch_size=32, seed=3)
    b = train_probe(tx, ty, 'erm', epochs=3, batch_size=32, seed=3)
    c = train_probe(tx, ty, 'erm', epochs=3, batch_size=32, seed=4)
    assert torch.equal(a.scores(vx), b.scores(vx))
    assert not torch.equal(a.scores(vx), c.scores(vx))
    assert len(a.history) == 3 and a.history[-1]['loss'] < a.history[0]['loss']


def test_evaluate_matches_naive(toy):
    tx, ty, vx, vy, counts = toy
    p = train_probe(tx, ty, 'bs', epochs=2, batch_size=32)
    acc = evaluate_probe(p, vx, vy)
    naive = _naive_per_class(p.scores(vx).argmax(1), vy, 6)
    assert torch.allclose(acc.double(), naive)
    # a plain module is accepted too
    assert torch.allclose(evaluate_probe(p.model, vx, vy).double(), naive)


def test_la_posthoc_and_marc_reuse_erm(toy):
    tx, ty, vx, vy, counts = toy
    erm = train_probe(tx, ty, 'erm', epochs=2, batch_size=32, seed=0)
    la = train_probe(tx, ty, 'la-posthoc', epochs=2, batch_size=32, seed=0, erm_probe=erm)
    assert la.model is erm.model
    z = erm.scores(vx).double()
    prior = counts.double() / counts.sum()
    expected = z - torch.log(prior + 1e-12)
    assert torch.allclose(la.scores(vx).double(), expected, atol=1e-5)
    mc = train_probe(tx, ty, 'marc', epochs=2, batch_size=32, seed=0, erm_probe=erm)
    omega, beta = mc.marc.omega, mc.marc.beta
    norms = erm.model.head.weight.detach().norm(dim=1)
    assert torch.allclose(mc.scores(vx), omega * erm.scores(vx) + beta * norms, atol=1e-5)
    # without an erm probe of the same seed, one is trained (same seed -> same model)
    la2 = train_probe(tx, ty, 'la-posthoc', epochs=2, batch_size=32, seed=0)
    assert torch.allclose(la2.scores(vx), la.scores(vx), atol=1e-6)


def test_drw_switches_at_80_percent(toy, monkeypatch):
    tx, ty, vx, vy, counts = toy
    from margin_notes.baselines import drw_weights
    import margin_notes.probe as probe_mod
    on = []   # per step: are the DRW weights on?
    real = probe_mod.train_epochs
    def recording(*a, **kw):
        kw['on_step'] = lambda step, loss_fn: on.append(loss_fn.weight is not None)
        return real(*a, **kw)
    monkeypatch.setattr(probe_mod, 'train_epochs', recording)
    p = train_probe(tx, ty, 'ldam-drw', epochs=5, batch_size=32)
    spe = len(on) // 5
    assert len(on) == 5 * spe and spe > 1
    assert on == [False] * (4 * spe) + [True] * spe          # off for epochs 0-3, on from the first step of epoch floor(0.8 * 5) = 4
    monkeypatch.setattr(probe_mod, 'train_epochs', real)
    assert p.loss.weight is not None
    assert torch.allclose(p.loss.weight.double(), drw_weights(counts).double(), atol=1e-6)
    # the trainer's rule (baselines.drw_start_epoch): the first epoch past the fraction, so 0.5 of 1 epoch is epoch 0
    from margin_notes.probe import fit_method
    with pytest.raises(TypeError): train_probe(tx, ty, 'ldam-drw', epochs=1, drw_at=0.5)   # one name: drw_start_frac
    p0 = train_probe(tx, ty, 'ldam-drw', epochs=1, batch_size=32, drw_start_frac=0.5)
    assert p0.loss.weight is not None


def test_every_method_runs_and_mr2_logs_terms(toy):
    tx, ty, vx, vy, counts = toy
    for m in PROBE_METHODS:
        p = train_probe(tx, ty, m, epochs=1, batch_size=32)
        acc = evaluate_probe(p, vx, vy)
        assert acc.shape == (6,) and torch.isfinite(acc).all(), m
        assert p.config['head'] == probe_head(m)
    p = train_probe(tx, ty, 'mr2', epochs=1, batch_size=32, loss_kwargs=dict(lam=0.01))
    assert {'ce', 'rep'} <= set(p.history[-1]) and p.history[-1]['rep'] > 0
    lw = train_probe(tx, ty, 'lwr', epochs=1, batch_size=32)
    assert 'lwr' in lw.history[-1]


def test_mr2_representation_term_needs_the_adapter(toy):
    "With hidden=0 the features are the frozen inputs: lam changes nothing; with the adapter it does."
    tx, ty, vx, vy, counts = toy
    kw = dict(epochs=2, batch_size=32, seed=0)
    a = train_probe(tx, ty, 'mr2', hidden=0, loss_kwargs=dict(lam=0.0), **kw)
    b = train_probe(tx, ty, 'mr2', hidden=0, loss_kwargs=dict(lam=0.5), **kw)
    assert torch.allclose(a.scores(vx), b.scores(vx), atol=1e-6)
    c = train_probe(tx, ty, 'mr2', hidden=16, loss_kwargs=dict(lam=0.0), **kw)
    d = train_probe(tx, ty, 'mr2', hidden=16, loss_kwargs=dict(lam=0.5), **kw)
    assert not torch.allclose(c.scores(vx), d.scores(vx), atol=1e-4)


def test_fit_method_with_a_cnn_and_transform():
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(40, 1, 8, 8, generator=g) * 255).to(torch.uint8); y = torch.arange(40) % 4

    class Tiny(nn.Module):
        def __init__(self, head, scale):
            super().__init__()
            self.backbone = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.ReLU(), nn.Flatten())
            self.head = make_scaled_head(36, 4, head, scale)
        def forward(self, z): return self.head(self.backbone(z))
    seen = []
    tf = lambda b: (seen.append(b.dtype), b.float() / 255)[1]
    for m in ('erm', 'dbm', 'mr2', 'marc'):
        p = fit_method(lambda h, s: Tiny(h, s), x, y, m, epochs=1, batch_size=8, transform=tf)
        assert evaluate_probe(p, x, y).shape == (4,)
    assert torch.uint8 in seen


def test_grid_difficulty_from_erm_and_empty_groups(toy, tmp_path):
    tx, ty, vx, vy, counts = toy
    res = run_method_grid(tx, ty, vx, vy, ['bs', ('bs tau', 'la', dict(tau=0.5))], seeds=(0, 1), epochs=1,
                          batch_size=32, verbose=False)
    assert list(res['runs']) == ['erm', 'bs', 'bs tau']                       # erm added and run first
    ref = np.mean([r['per_class'] for r in res['runs']['erm']], axis=0)
    order = sorted(range(6), key=lambda k: (-ref[k], k))
    assert res['difficulty_groups'] == {'easy': sorted(order[:2]), 'medium': sorted(order[2:4]), 'hard': sorted(order[4:])}
    for lab, rs in res['runs'].items():
        pcs = np.array([r['per_class'] for r in rs])
        s = res['summary'][lab]
        assert math.isclose(s['overall']['mean'], pcs.mean(1).mean(), abs_tol=1e-6)
        assert math.isclose(s['overall']['std'], pcs.mean(1).std(ddof=1), abs_tol=1e-6)
        assert math.isclose(s['worst']['mean'], pcs.min(1).mean(), abs_tol=1e-6)
    # counts 60..10: the classes below 20 form Few
    few = [k for k, n in enumerate(counts) if n < 20]
    assert few and not math.isnan(res['summary']['erm']['few_shot']['mean'])
    bal = run_method_grid(tx[:150], torch.arange(150) % 6, vx, vy, ['erm'], seeds=(0,), epochs=1, verbose=False)
    s = bal['summary']['erm']   # 25 per class: all Medium-shot; Many and Few are empty -> NaN, not 0
    assert math.isnan(s['few_shot']['mean']) and math.isnan(s['many_shot']['mean']) and s['medium_shot']['mean'] >= 0
    f = tmp_path / 'g.json'
    save_grid(res, f, meta={'device': 'cpu'})
    back = load_grid(f)
    assert back['meta'] == {'device': 'cpu'} and back['runs']['bs'][1]['per_class'] == res['runs']['bs'][1]['per_class']
    assert len(f.with_suffix('.csv').read_text().splitlines()) == 1 + 3 * 2
    t = grid_table(back)
    assert list(t.index) == ['erm', 'bs', 'bs tau'] and '±' in t.loc['bs', 'Overall']
    assert load_grid(tmp_path / 'none.json') is None


def test_fit_pca_against_numpy_svd():
    g = torch.Generator().manual_seed(2)
    X = torch.randn(300, 7, generator=g) @ torch.randn(7, 7, generator=g)
    pr = fit_pca(X, 3)
    Xc = (X - X.mean(0)).double().numpy()
    _, S, Vt = np.linalg.svd(Xc, full_matrices=False)
    P = pr(X).double().numpy()
    # the SVD's directions, each signed so that its largest entry is positive (fit_pca's sign rule): equal projections, signs included
    V = Vt[:3] * np.sign(Vt[:3][np.arange(3), np.abs(Vt[:3]).argmax(1)])[:, None]
    assert np.allclose(P, Xc @ V.T, atol=1e-3)
    assert np.allclose(P.var(0, ddof=1), S[:3] ** 2 / 299, rtol=1e-3)
    assert math.isclose(pr.explained, float((S[:3] ** 2).sum() / (S ** 2).sum()), rel_tol=1e-5)
    # new points are centred with the training mean: a shifted copy of X projects to P plus the shift's projection
    shift = torch.randn(7, generator=g)
    assert np.allclose(pr(X + shift).double().numpy(), P + shift.double().numpy() @ V.T, atol=1e-3)


def test_probe_setting_selects_prefixes():
    feats = {'train_features': torch.arange(12.).view(6, 2), 'train_labels': torch.tensor([0, 0, 0, 1, 1, 1]),
             'train_rank': torch.tensor([0, 1, 2, 2, 0, 1]), 'settings': {'a': [2, 1], 'b': [3, 3]}}
    x, y, c = probe_setting(feats, 'a')
    assert c == [2, 1] and y.tolist() == [0, 0, 1] and x[:, 0].tolist() == [0., 2., 8.]
    assert probe_setting(feats, 'b')[2] == [3, 3]


def test_cifar_features_match_reference_subsets():
    from margin_notes.core import find_data
    if find_data('cifar10-jpeg.tar.gz') is None: pytest.skip('cifar10-jpeg.tar.gz not under the data root')
    import timm
    from margin_notes.probe import cifar10_probe_features
    from margin_notes.data import cifar_lt_counts, lt_indices, cifar10_jpeg_arrays
    tiny = timm.create_model('tf_efficientnet_lite0', pretrained=False, num_classes=0)
    sets = {'bal': [5] * 10, 'lt3': cifar_lt_counts(10, 3, n_max=9)}
    f = cifar10_probe_features(sets, size=32, test_per_class=2, pool_per_class=9, backbone=tiny, cache=False, verbose=False)
    ytr = cifar10_jpeg_arrays(max_per_class=9)['train'][1]
    for name, counts in sets.items():
        x, y, c = probe_setting(f, name)
        assert c == counts and x.shape == (sum(counts), 1280)
        sel = f['train_index'][f['train_rank'] < torch.tensor(counts)[f['train_labels']]]
        assert sorted(sel.tolist()) == sorted(lt_indices(ytr, counts, seed=0).tolist())
    assert len(f['test_labels']) == 20 and torch.bincount(f['test_labels']).tolist() == [2] * 10


def test_grid_validation_and_tau_grid_against_naive(toy):
    "val_per_class and every tau of the post-hoc LA grid equal a by-hand per-class accuracy of the same (retrained) probe."
    tx, ty, vx, vy, counts = toy
    xte, yte, xva, yva = vx[::2], vy[::2], vx[1::2], vy[1::2]
    preds = {}
    res = run_method_grid(tx, ty, xte, yte, ['la-posthoc', ('bs wd', 'bs', {}, dict(weight_decay=1e-2))], seeds=(0, 1),
                          epochs=2, batch_size=32, verbose=False, val_feats=xva, val_labels=yva,
                          posthoc_taus={'la-posthoc': (0.5, 1.0, 2.0)}, predictions=preds)
    assert list(res['runs']) == ['erm', 'la-posthoc', 'bs wd']
    r = res['runs']['la-posthoc'][1]
    assert list(r['tau']) == ['0.5', '1.0', '2.0'] and r['per_class'] == r['tau']['1.0']['per_class']
    erm = train_probe(tx, ty, 'erm', epochs=2, batch_size=32, seed=1)      # the same model (seed 1), scored by hand
    log_prior = torch.log(counts.double() / counts.sum())
    with torch.no_grad():
        z_te, z_va = erm.model(xte).double(), erm.model(xva).double()
    for t in (0.5, 1.0, 2.0):
        p_te, p_va = (z_te - t * log_prior).argmax(1), (z_va - t * log_prior).argmax(1)
        assert np.allclose(r['tau'][str(t)]['per_class'], _naive_per_class(p_te, yte, 6).numpy(), atol=1e-12)
        assert np.allclose(r['tau'][str(t)]['val_per_class'], _naive_per_class(p_va, yva, 6).numpy(), atol=1e-12)
        assert np.array_equal(preds[f'la-posthoc|tau{t}|seed1'], p_te.numpy())
    # a trained row with its own fit options: val_per_class by hand, and the override really used
    bs = train_probe(tx, ty, 'bs', epochs=2, batch_size=32, seed=0, weight_decay=1e-2)
    rb = res['runs']['bs wd'][0]
    assert np.allclose(rb['val_per_class'], _naive_per_class(bs.scores(xva).argmax(1), yva, 6).numpy(), atol=1e-12)
    assert np.array_equal(preds['bs wd|seed0'], bs.scores(xte).argmax(1).numpy()) and preds['bs wd|seed0'].dtype == np.int16
    assert np.array_equal(preds['labels'], yte.numpy()) and res['methods'][2]['fit'] == {'weight_decay': 1e-2}
    # difficulty groups from erm on the validation split
    from margin_notes.metrics import difficulty_groups
    assert res['difficulty_groups'] == difficulty_groups(torch.tensor([x['val_per_class'] for x in res['runs']['erm']]))
    # without the new arguments: the old keys only
    plain = run_method_grid(tx, ty, xte, yte, ['erm'], seeds=(0,), epochs=1, batch_size=32, verbose=False)
    assert set(plain['runs']['erm'][0]) == {'seed', 'per_class', 'seconds', 'final_train', 'report'}
    with pytest.raises(ValueError, match='tau'):
        run_method_grid(tx, ty, xte, yte, ['la-posthoc'], seeds=(0,), epochs=1, verbose=False, posthoc_taus=(0.5,))
