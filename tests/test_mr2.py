"""Tests for margin_notes.mr2.MR2Loss (chapter 13_mr2)."""
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from margin_notes.margins import optimal_margins
from margin_notes.core import value_checks
from margin_notes.mr2 import MR2Loss, naive_mr2_loss as naive_mr2
import functools as _ft
MR2Loss = _ft.partial(MR2Loss, variant='paper')   # these tests pin the form they check; the default is tested in test_defaults

ROOT = Path(__file__).resolve().parents[1]


def stream(seed, K, B, D, nb, scale=1.0, absent=()):
    g = torch.Generator().manual_seed(seed)
    allowed = torch.tensor([c for c in range(K) if c not in absent] or [0])
    return [(torch.randn(B, K, generator=g, dtype=torch.float64) * 3,
             allowed[torch.randint(0, len(allowed), (B,), generator=g)],
             torch.randn(B, D, generator=g, dtype=torch.float64) * scale) for _ in range(nb)]


def run(loss, batches):
    return [loss(z, y, f).item() for z, y, f in batches]


@pytest.mark.parametrize('kw,naive_kw', [
    (dict(), dict()),
    (dict(lam=0.0), dict(lam=0.0)),
    (dict(spread_margin=False, temperature=3.0, rep_scale=0.5), dict(spread_margin=False, temperature=3.0, rep_scale=0.5)),
    (dict(rep_reduction='class'), dict(rep_reduction='class')),
    (dict(p=5), dict(p=5.0)),
    (dict(rep_normalize=True), dict(rep_normalize=True)),
])
def test_matches_naive_loop(kw, naive_kw):
    K, D = 5, 3
    batches = stream(0, K, 11, D, 4, absent=(4,))
    lam = kw.pop('lam', 0.3)
    loss = MR2Loss(K, mean_margin=1.5, lam=lam, momentum=0.7, **kw).double()
    nkw = dict(lam=0.3); nkw.update(naive_kw)
    ref = naive_mr2(batches, K, 1.5, momentum=0.7, **nkw)
    torch.testing.assert_close(torch.tensor(run(loss, batches), dtype=torch.float64),
                               torch.tensor(ref, dtype=torch.float64), rtol=1e-9, atol=1e-9)


def test_released_variant_matches_naive():
    K, D = 4, 6
    batches = stream(1, K, 10, D, 3, scale=2.0)
    loss = MR2Loss(K, lam=0.1, variant='released').double()
    ref = naive_mr2(batches, K, 1.0, 0.1, 0.9, p=5.0, temperature=10 * D, rep_scale=D / 10, rep_reduction='class',
                    spread_margin=False)
    torch.testing.assert_close(torch.tensor(run(loss, batches), dtype=torch.float64),
                               torch.tensor(ref, dtype=torch.float64), rtol=1e-9, atol=1e-9)
    assert loss.stats.p == 5 and not loss.spread_margin and loss.rep_reduction == 'class'


@settings(max_examples=25, deadline=None)
@given(K=st.integers(1, 1000), B=st.integers(1, 20), D=st.integers(1, 4), nb=st.integers(1, 3),
       seed=st.integers(0, 10_000), lam=st.sampled_from([0.0, 0.05, 1.0]), cbar=st.floats(0.2, 5.0),
       reduction=st.sampled_from(['mean', 'class']))
def test_property_matches_naive(K, B, D, nb, seed, lam, cbar, reduction):
    g = torch.Generator().manual_seed(seed)
    # few distinct labels: singleton classes and many absent classes both occur
    labels = torch.randint(0, K, (min(K, 4),), generator=g)
    batches = []
    for _ in range(nb):
        y = labels[torch.randint(0, len(labels), (B,), generator=g)]
        batches.append((torch.randn(B, K, generator=g, dtype=torch.float64), y,
                        torch.randn(B, D, generator=g, dtype=torch.float64)))
    loss = MR2Loss(K, mean_margin=cbar, lam=lam, momentum=0.8, rep_reduction=reduction).double()
    got = run(loss, batches)
    ref = naive_mr2(batches, K, cbar, lam, 0.8, rep_reduction=reduction)
    torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), torch.tensor(ref, dtype=torch.float64),
                               rtol=1e-8, atol=1e-8)
    gam = loss.last['gamma']
    seen = loss.stats.initialized
    assert (gam[~seen] == cbar).all()
    torch.testing.assert_close(gam[seen].mean(), torch.tensor(cbar, dtype=gam.dtype))


def _closed_form_gamma(A, seen, cbar, floor):
    "float64 closed form: gamma_k = cbar * K_seen * r_k / sum r, r_k = max(A_k^(1/3), floor * mean of A^(1/3) over the seen classes); cbar elsewhere."
    A = A.double(); root = A[seen] ** (1 / 3)
    root = torch.clamp(root, min=floor * float(root.mean()))
    out = torch.full_like(A, cbar); out[seen] = cbar * int(seen.sum()) * root / root.sum()
    return out


@pytest.mark.parametrize('shrink', [1.0, 1e-4])   # 1e-4: class 0's features nearly zero, so the floor binds for it
def test_gamma_is_optimal_margins_of_ema_buffers(shrink):
    K = 8
    loss = MR2Loss(K, mean_margin=0.7, lam=0.1)
    bound = False
    for z, y, f in stream(2, K, 16, 5, 5, absent=(2, 6)):
        f = f * torch.where(y == 0, shrink, 1.0)[:, None]
        loss(z.float(), y, f.float() * 4)
        st_ = loss.stats
        expected = optimal_margins(st_.mean_norm_sq + st_.spread, 0.7, mask=st_.initialized, floor=loss.margin_floor)
        assert torch.equal(loss.last['gamma'], expected)
        assert torch.equal(loss.gammas(), expected)
        # and the closed form with the floor, computed here in float64
        m = st_.initialized
        A = st_.mean_norm_sq + st_.spread
        torch.testing.assert_close(loss.last['gamma'].double(), _closed_form_gamma(A, m, 0.7, 0.1), rtol=1e-5, atol=1e-6)
        assert (loss.last['gamma'][~m] == 0.7).all()
        r = A.double()[m] ** (1 / 3)
        bound |= bool((r < 0.1 * r.mean()).any())
    assert bound == (shrink < 1)   # the floor was exercised exactly in the shrunk stream


def test_before_statistics_is_ce_over_cbar():
    z, y, f = torch.randn(6, 4), torch.tensor([0, 1, 1, 2, 2, 2]), torch.randn(6, 3)
    fresh = MR2Loss(4, mean_margin=2.5, lam=0.0).eval()
    torch.testing.assert_close(fresh(z, y, f), F.cross_entropy(z / 2.5, y))
    assert not fresh.stats.initialized.any()           # eval mode did not update
    # with lam > 0 in eval mode and no statistics: s-bar = 0, margin 0
    fresh2 = MR2Loss(4, mean_margin=2.5, lam=0.5).eval()
    d = torch.cdist(f, f) ** 2
    rep = torch.stack([torch.logsumexp(torch.cat([d[i, (y == y[i]) & (torch.arange(6) != i)], torch.zeros(1)]), 0)
                       for i in range(6)]).mean()
    torch.testing.assert_close(fresh2(z, y, f), F.cross_entropy(z / 2.5, y) + 0.5 * rep, rtol=1e-5, atol=1e-5)


def test_lambda_zero_equal_statistics_is_plain_ce():
    f = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [2.0, 0.0], [-2.0, 0.0]])
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    f[4:] /= 2.0                                   # all three classes: mean 0, spread 1
    z = torch.randn(6, 3)
    loss = MR2Loss(3, lam=0.0)
    torch.testing.assert_close(loss(z, y, f), F.cross_entropy(z, y))
    torch.testing.assert_close(loss.last['gamma'], torch.ones(3))


def test_lambda_zero_skips_pairwise_term():
    loss = MR2Loss(3, lam=0.0)
    f = torch.randn(5, 4, requires_grad=True)
    z = torch.randn(5, 3, requires_grad=True)
    out = loss(z, torch.tensor([0, 0, 1, 1, 2]), f)
    out.backward()
    assert f.grad is None and z.grad is not None and loss.last['rep'] == 0


def test_singletons_only_give_zero_rep_term():
    loss = MR2Loss(5, lam=1.0)
    loss(torch.randn(5, 5), torch.arange(5), torch.randn(5, 3) * 100)
    assert loss.last['rep'] == 0


@pytest.mark.parametrize('kw', [dict(), dict(variant='released'), dict(rep_normalize=True),
                                dict(rep_reduction='class', temperature=2.0)])
def test_gradcheck_float64(kw):
    K, B, D = 3, 7, 4
    loss = MR2Loss(K, lam=0.5, **kw).double()
    g = torch.Generator().manual_seed(3)
    y = torch.tensor([0, 0, 1, 1, 1, 2, 0])
    z0 = torch.randn(B, K, generator=g, dtype=torch.float64)
    f0 = torch.randn(B, D, generator=g, dtype=torch.float64)
    loss(z0, y, f0)          # initialise the statistics
    loss.eval()              # then freeze them, so that repeated calls are the same function
    z, f = z0.clone().requires_grad_(), (f0 * 0.7).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: loss(a, y, b), (z, f), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_autocast_finite_float32(dtype):
    lin = torch.nn.Linear(16, 10)
    x = torch.randn(32, 16) * 30
    y = torch.randint(0, 10, (32,))
    loss = MR2Loss(10, lam=0.1)
    with torch.autocast('cpu', dtype=dtype):
        feats = torch.relu(x @ torch.randn(16, 16).T)
        out = loss(lin(feats), y, feats)
    assert out.dtype == torch.float32 and torch.isfinite(out)
    assert all(torch.isfinite(v).all() for v in loss.last.values())
    out.backward()
    assert torch.isfinite(lin.weight.grad).all()


def test_bad_input():
    loss = MR2Loss(3)
    z, y, f = torch.randn(4, 3), torch.tensor([0, 1, 2, 1]), torch.randn(4, 2)
    with pytest.raises(ValueError, match=r'\[0, 3\)'):
        loss(z, torch.tensor([0, 1, 2, 3]), f)
    with pytest.raises(ValueError, match='rows'):
        loss(z, y, f[:3])
    with pytest.raises(ValueError, match='entries'):
        loss(z, y[:3], f)
    with pytest.raises(ValueError, match='NaN'):
        loss(z, y, f.masked_fill(f > 0, float('nan')))
    with pytest.raises(ValueError, match='features'):
        loss(z, y)
    with pytest.raises(ValueError, match='num_classes'):
        loss(torch.randn(4, 5), y, f)
    for kw in (dict(variant='x'), dict(lam=-1), dict(mean_margin=0), dict(temperature=-1.0),
               dict(rep_reduction='sum'), dict(rep_scale=float('nan')), dict(eps=0.0), dict(eps=-1e-3)):
        with pytest.raises(ValueError):
            MR2Loss(3, **kw)
    with pytest.raises(ValueError, match='whole number'):
        MR2Loss(10.7)


def test_state_dict_round_trip_continues_identically():
    K = 6
    batches = stream(4, K, 12, 5, 6)
    a = MR2Loss(K, lam=0.2, rep_normalize=True)
    for z, y, f in batches[:3]:
        a(z.float(), y, f.float())
    b = MR2Loss(K, lam=0.2, rep_normalize=True)
    b.load_state_dict(a.state_dict())
    assert 'unit_stats.spread' in a.state_dict()
    for z, y, f in batches[3:]:
        torch.testing.assert_close(a(z.float(), y, f.float()), b(z.float(), y, f.float()), rtol=0, atol=0)


def test_last_holds_detached_tensors():
    loss = MR2Loss(3, lam=0.1)
    f = torch.randn(6, 2, requires_grad=True)
    loss(torch.randn(6, 3, requires_grad=True), torch.tensor([0, 0, 1, 1, 2, 2]), f)
    assert {'ce', 'rep', 'gamma', 'gamma_mean', 'mean_spread', 'skipped'} <= set(loss.last)
    assert all(isinstance(v, torch.Tensor) and not v.requires_grad for v in loss.last.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_step_has_no_host_sync():
    loss = MR2Loss(10, lam=0.1).cuda()
    lin = torch.nn.Linear(8, 10).cuda()
    x, y = torch.randn(32, 8, device='cuda'), torch.randint(0, 10, (32,), device='cuda')
    torch.cuda.set_sync_debug_mode('error')
    try:
        for _ in range(2):
            out = loss(lin(x), y, x)
            out.backward()
    finally:
        torch.cuda.set_sync_debug_mode('default')


def test_benchmark_quick_mode_runs(tmp_path):
    """benchmarks/losses.py --quick runs end to end and writes its JSON (tiny sizes)."""
    env = dict(os.environ, OMP_NUM_THREADS='1')
    out = tmp_path / 'bench.json'
    r = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'losses.py'), '--quick', '--out', str(out)],
                       capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    import json
    res = json.loads(out.read_text())
    assert {'machine', 'loss_fwd_bwd', 'train_step', 'mr2_vs_loop'} <= set(res)
    assert all(row['max_abs_diff'] < 1e-3 and row['naive_abs_diff'] < 1e-4 for row in res['mr2_vs_loop'])


@pytest.mark.parametrize('bad', [float('nan'), float('inf'), 1e20])
def test_bad_feature_batch_does_not_poison_later_losses(bad):
    """Checks off (the GPU path): a NaN / inf / overflowing (1e20, squared beyond float32) batch, then clean batches.
    Every later loss and gamma is finite and equals the float64 reference run on the clean batches alone."""
    K, D = 4, 3
    clean = [(z.float(), y, f.float()) for z, y, f in stream(7, K, 10, D, 4)]
    loss = MR2Loss(K, mean_margin=1.2, lam=0.3, momentum=0.8)
    got = []
    with value_checks(False):
        got.append(loss(*clean[0]).item())
        z, y, _ = clean[0]
        loss(z, y, torch.full((10, D), bad))
        assert int(loss.last['skipped']) == len(set(y.tolist()))
        for z, y, f in clean[1:]:
            got.append(loss(z, y, f).item())
            assert torch.isfinite(loss.last['gamma']).all() and int(loss.last['skipped']) == 0
    ref = naive_mr2(clean, K, 1.2, 0.3, 0.8)
    torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), torch.tensor(ref, dtype=torch.float64),
                               rtol=1e-5, atol=1e-5)


def test_half_keeps_float32_statistics():
    loss = MR2Loss(3).half()
    assert loss.stats.spread.dtype == torch.float32
    out = loss(torch.randn(6, 3, dtype=torch.float16), torch.tensor([0, 0, 1, 1, 2, 2], dtype=torch.int32),
               torch.full((6, 2), 300.0, dtype=torch.float16))          # squared norms 1.8e5 > fp16 max
    assert torch.isfinite(loss.stats.variability).all() and torch.isfinite(loss.last['ce'])


# --- issue 22: the per-class representation term, the margin floor; issue 26: torch.compile(fullgraph=True)
from margin_notes.mr2 import _rep_terms_dense, _rep_terms_classwise, _rep_margin_terms


@pytest.mark.parametrize('B,K', [(5, 2), (40, 3), (257, 60), (31, 1), (9, 9)])
def test_classwise_rep_term_equals_dense_value_and_gradient(B, K):
    g = torch.Generator().manual_seed(B * K)
    f = torch.randn(B, 4, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, K, (B,), generator=g)
    margin = torch.tensor(0.3, dtype=torch.float64)
    a, b = _rep_terms_dense(f, y, margin, 1.7), _rep_terms_classwise(f, y, margin, 1.7)
    assert torch.allclose(a, b, rtol=0, atol=1e-12)
    ga, = torch.autograd.grad((a * torch.arange(B)).sum(), f)
    gb, = torch.autograd.grad((b * torch.arange(B)).sum(), f)
    assert torch.allclose(ga, gb, rtol=0, atol=1e-12 * ga.abs().max().item())


def test_classwise_rep_term_gradcheck():
    f = torch.randn(10, 3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([2, 0, 2, 1, 1, 2, 0, 3, 2, 2])
    assert torch.autograd.gradcheck(lambda x: _rep_terms_classwise(x, y, 0.4, 1.0), (f,))


def test_large_batch_uses_classwise_and_matches_dense(monkeypatch):
    import margin_notes.mr2 as M
    g = torch.Generator().manual_seed(0)
    B, K = 1100, 200                                  # above _DENSE_MAX_B: the per-class path
    z, y, f = torch.randn(B, K, generator=g), torch.randint(0, K, (B,), generator=g), torch.randn(B, 8, generator=g)
    calls = []
    monkeypatch.setattr(M, '_rep_terms_classwise', lambda *a: calls.append(1) or _rep_terms_classwise(*a))
    new = MR2Loss(K, variant='paper').double()(z.double(), y, f.double())
    assert calls
    monkeypatch.setattr(M, '_DENSE_MAX_B', 10 ** 9)
    old = MR2Loss(K, variant='paper').double()(z.double(), y, f.double())
    assert abs(new.item() - old.item()) < 1e-12 * abs(old.item())


def test_margin_floor_keeps_zero_feature_class_bounded():
    f = torch.randn(6, 4).abs(); f[:2] = 0
    y, z = torch.tensor([0, 0, 1, 1, 2, 2]), torch.randn(6, 3)
    bare = MR2Loss(3, variant='paper', lam=0.0, margin_floor=0.0)
    assert bare(z, y, features=f) > 1e6                # Corollary 1 alone collapses class 0's margin
    m = MR2Loss(3, variant='paper', lam=0.0)
    z = z.requires_grad_()
    loss = m(z.half().float(), y, features=f.half().float())
    assert loss < 100 and m.gammas()[0] > 0.05 and abs(m.gammas().mean() - 1) < 1e-6
    loss.backward(); assert torch.isfinite(z.grad).all() and z.grad.abs().max() < 100
    with pytest.raises(ValueError, match='margin_floor'): MR2Loss(3, margin_floor=1.0)
    # the float64 reference follows the same floor
    assert abs(MR2Loss(3, variant='paper', lam=0.0).double()(z.detach().double(), y, f.double()).item()
               - naive_mr2([(z.detach(), y, f)], 3, lam=0.0)[0]) < 1e-9


def test_compiles_fullgraph_and_equals_eager():
    "Issue 26 item 5: with value checks off (as on an accelerator) the loss traces as one graph and gives eager's value."
    from margin_notes.core import value_checks
    if not hasattr(torch, 'compile'): pytest.skip('torch.compile unavailable')
    import importlib
    importlib.import_module('torch._dynamo').reset()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 5, generator=g), torch.randint(0, 5, (16,), generator=g), torch.randn(16, 8, generator=g))
               for _ in range(2)]
    kw = dict(variant='paper', rep_reduction='class')   # the spread margin (a tensor) and the per-class mean: both paths
    eager, comp = MR2Loss(5, **kw), MR2Loss(5, **kw)
    c = torch.compile(comp, fullgraph=True, backend='aot_eager')   # graph capture is what fullgraph tests; no C++ build
    with value_checks(False):
        for z, y, f in batches:
            try: got = c(z, y, features=f)
            except RuntimeError as e:
                if 'not supported' in str(e).lower() and 'python' in str(e).lower(): pytest.skip(str(e)[:100])
                raise
            assert torch.allclose(got, eager(z, y, features=f), rtol=1e-6, atol=1e-6)
    assert torch.allclose(comp.gammas(), eager.gammas())
