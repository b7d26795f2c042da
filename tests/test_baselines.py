"""Tests for margin_notes.baselines (chapter 14_baselines)."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from margin_notes.baselines import (BalancedSoftmaxLoss, CELoss, FocalLoss, LDAMLoss, LogitAdjustedLoss,
                                    drw_class_weights_at, drw_weights, ldam_margins, logit_adjust_posthoc, naive_baseline_loss,
                                    warmup_cosine_lr, warmup_step_lr)


# the float64 loop reference of chapter 14 (exported, shared with the chapter's check)
naive = naive_baseline_loss


def build(kind, counts=None, w=None, **kw):
    if kind == 'ce':
        return CELoss(w)
    if kind == 'bs':
        return BalancedSoftmaxLoss(counts, weight=w)
    if kind == 'la':
        return LogitAdjustedLoss(counts, weight=w, **kw)
    if kind == 'ldam':
        return LDAMLoss(counts, weight=w, **kw)
    if kind == 'focal':
        return FocalLoss(weight=w, **kw)
    raise ValueError(kind)


KINDS = ['ce', 'bs', 'la', 'ldam', 'focal']


def data(seed, B, K, cos=False):
    g = torch.Generator().manual_seed(seed)
    z = torch.rand(B, K, generator=g, dtype=torch.float64) * 2 - 1 if cos else \
        torch.randn(B, K, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, K, (B,), generator=g)
    counts = torch.randint(1, 500, (K,), generator=g)
    return z, y, counts


@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.parametrize('weighted', [False, True])
def test_matches_naive_loop(kind, weighted):
    z, y, counts = data(0, 13, 6, cos=(kind == 'ldam'))
    w = torch.rand(6, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.1 if weighted else None
    kw = dict(tau=1.7) if kind == 'la' else dict(gamma=2.0) if kind == 'focal' else \
        dict(max_margin=0.4, scale=16.0) if kind == 'ldam' else {}
    got = build(kind, counts, w, **kw)(z, y)
    ref = naive(kind, z, y, counts, None if w is None else w.float().double(), **kw)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, torch.tensor(ref, dtype=torch.float64), rtol=1e-10, atol=1e-10)


@settings(max_examples=30, deadline=None)
@given(kind=st.sampled_from(KINDS), K=st.integers(1, 1000), B=st.integers(1, 24), seed=st.integers(0, 10_000),
       weighted=st.booleans())
def test_property_matches_naive(kind, K, B, seed, weighted):
    z, y, counts = data(seed, B, K, cos=(kind == 'ldam'))
    w = drw_weights(counts) if weighted else None
    got = build(kind, counts, w)(z, y)
    ref = naive(kind, z, y, counts, None if w is None else w.float().double())
    torch.testing.assert_close(got, torch.tensor(ref, dtype=torch.float64), rtol=1e-9, atol=1e-9)
    assert torch.isfinite(got) and got >= 0


def test_special_cases():
    z, y, _ = data(2, 20, 5)
    ce = F.cross_entropy(z, y)
    torch.testing.assert_close(BalancedSoftmaxLoss([3] * 5)(z, y), ce)           # uniform prior
    torch.testing.assert_close(LogitAdjustedLoss([9] * 5, tau=3.0)(z, y), ce)
    torch.testing.assert_close(LogitAdjustedLoss([1, 10, 100, 5, 7], tau=0.0)(z, y), ce)   # tau = 0
    torch.testing.assert_close(FocalLoss(0.0)(z, y), ce)
    torch.testing.assert_close(CELoss()(z, y), ce)
    cos = torch.tanh(z)
    torch.testing.assert_close(LDAMLoss([1, 10, 100, 5, 7], max_margin=0.0, scale=12.0)(cos, y),
                               F.cross_entropy(12.0 * cos, y))                  # zero margin: scaled-cosine CE
    # Balanced Softmax equals LA with tau = 1 (up to the 1e-12 inside LA's log)
    counts = [400, 30, 2, 50, 9]
    torch.testing.assert_close(BalancedSoftmaxLoss(counts)(z, y), LogitAdjustedLoss(counts)(z, y))
    # uniform weights change nothing
    torch.testing.assert_close(CELoss(torch.full((5,), 3.0))(z, y), ce)


def test_ldam_margins_and_posthoc():
    m = ldam_margins([10000, 625, 16], max_margin=0.5)
    torch.testing.assert_close(m, torch.tensor([0.5 * 0.2, 0.5 * 0.4, 0.5], dtype=torch.float64))
    z = torch.rand(4, 3) * 2 - 1
    counts = torch.tensor([50.0, 25.0, 25.0])
    torch.testing.assert_close(logit_adjust_posthoc(z, counts, tau=2.0),
                               z - 2.0 * torch.log(counts / 100 + 1e-12).float())
    # post-hoc adjustment with a uniform prior does not change predictions
    assert torch.equal(logit_adjust_posthoc(z, [4, 4, 4]).argmax(1), z.argmax(1))


@pytest.mark.parametrize('kind', KINDS)
def test_gradcheck_float64(kind):
    z, y, counts = data(3, 6, 4, cos=(kind == 'ldam'))
    loss = build(kind, counts, drw_weights(counts) if kind in ('ce', 'ldam') else None)
    z = z.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a: loss(a, y), (z,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_autocast_finite(kind, dtype):
    counts = [500, 50, 5, 1]
    loss = build(kind, counts)
    lin = torch.nn.Linear(8, 4)
    x, y = torch.randn(16, 8) * 300, torch.randint(0, 4, (16,))
    with torch.autocast('cpu', dtype=dtype):
        out = lin(x)
        out = torch.tanh(out) if kind == 'ldam' else out
        val = loss(out, y)
    assert val.dtype == torch.float32 and torch.isfinite(val)
    val.backward()
    assert torch.isfinite(lin.weight.grad).all()


@pytest.mark.parametrize('kind', KINDS)
def test_bad_input(kind):
    loss = build(kind, [5, 3, 1])
    z, y = torch.rand(4, 3) * 2 - 1, torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match=r'\[0, 3\)'):
        loss(z, torch.tensor([0, 1, 3, 0]))
    with pytest.raises(ValueError, match='entries'):
        loss(z, y[:3])
    with pytest.raises(ValueError, match='NaN'):
        loss(z.masked_fill(z > 0, float('nan')), y)
    with pytest.raises(ValueError, match=r'\(B, K\)'):
        loss(z[0], y)
    if kind in ('bs', 'la', 'ldam'):
        with pytest.raises(ValueError, match='num_classes'):
            loss(torch.randn(4, 5), y)
    with pytest.raises(ValueError, match='weight'):
        loss.set_class_weight(torch.ones(3, 2))
    with pytest.raises(ValueError, match='finite'):
        loss.set_class_weight(torch.tensor([1.0, float('inf'), 1.0]))


@pytest.mark.parametrize('cls', [BalancedSoftmaxLoss, LogitAdjustedLoss, LDAMLoss, drw_weights, ldam_margins])
@pytest.mark.parametrize('counts,msg', [([5, 0, 3], 'positive'), ([5, -1, 3], 'positive'),
                                        ([5, float('nan'), 3], 'NaN'), ([5, float('inf')], 'inf'), ([], 'empty')])
def test_bad_counts(cls, counts, msg):
    with pytest.raises(ValueError, match=msg):
        cls(counts)


def test_weight_length_checked_against_counts():
    with pytest.raises(ValueError, match='num_classes=3'):
        LDAMLoss([5, 3, 1], weight=torch.ones(4))


@pytest.mark.parametrize('kind', KINDS)
def test_weight_buffer_state_dict_round_trip(kind):
    counts = [100, 10, 1]
    a = build(kind, counts)
    w = drw_class_weights_at(170, counts, drw_start=160)
    a.set_class_weight(w)
    assert 'weight' in a.state_dict() and a.weight.dtype == torch.float32
    b = build(kind, counts)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b.weight, w.float())
    z, y = torch.rand(5, 3) * 2 - 1, torch.tensor([0, 1, 2, 2, 1])
    torch.testing.assert_close(a(z, y), b(z, y))
    b.load_state_dict(build(kind, counts).state_dict())
    assert b.weight is None
    a.set_class_weight(None)
    assert a.weight is None and 'weight' not in a.state_dict()


def test_drw_weights():
    counts = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    w = drw_weights(counts, beta=0.9999)
    raw = [(1 - 0.9999) / (1 - 0.9999 ** n) for n in counts]
    ref = torch.tensor([r / sum(raw) * 10 for r in raw], dtype=torch.float64)
    torch.testing.assert_close(w, ref, rtol=1e-12, atol=1e-12)
    assert torch.all(w[1:] > w[:-1])
    torch.testing.assert_close(drw_weights(counts, beta=0.0), torch.ones(10, dtype=torch.float64))
    for e in (0, 100, 159):
        torch.testing.assert_close(drw_class_weights_at(e, counts, 160), torch.ones(10, dtype=torch.float64))
    for e in (160, 199):
        torch.testing.assert_close(drw_class_weights_at(e, counts, 160), w)
    # the same recipe as a fraction of a short run: 0.8 of 10 epochs
    torch.testing.assert_close(drw_class_weights_at(7, counts, drw_start_frac=0.8, epochs=10), torch.ones(10, dtype=torch.float64))
    torch.testing.assert_close(drw_class_weights_at(8, counts, drw_start_frac=0.8, epochs=10), w)
    for kw, msg in [(dict(), 'drw_start'), (dict(drw_start=5, drw_start_frac=0.5, epochs=10), 'exactly one'),
                    (dict(drw_start_frac=0.8), 'epochs'), (dict(drw_start_frac=1.5, epochs=10), 'drw_start_frac')]:
        with pytest.raises(ValueError, match=msg):
            drw_class_weights_at(3, counts, **kw)
    torch.testing.assert_close(drw_class_weights_at(10, counts, drw_start=10, beta=0.99), drw_weights(counts, 0.99))
    with pytest.raises(ValueError, match='beta'):
        drw_weights(counts, beta=1.0)


def test_schedules():
    # LDAM-DRW: lr * (e + 1) / 5 for e < 5, lr, then x0.01 from 160, x0.0001 from 180
    ref = lambda e: 0.1 * (e + 1) / 5 if e < 5 else 0.1 * 0.0001 if e >= 180 else 0.1 * 0.01 if e >= 160 else 0.1
    for e in range(200):
        assert math.isclose(warmup_step_lr(e), ref(e), rel_tol=1e-12)
    # warm-up + cosine: continuous at the end of warm-up, non-increasing after, endpoints exact
    xs = [i / 10 for i in range(0, 2001)]
    lrs = [warmup_cosine_lr(x, 200, base_lr=0.2, warmup_epochs=5, min_lr=1e-4) for x in xs]
    assert math.isclose(lrs[0], 0.0, abs_tol=1e-15) and math.isclose(lrs[50], 0.2)
    assert all(b <= a + 1e-15 for a, b in zip(lrs[50:], lrs[51:]))
    assert all(b >= a - 1e-15 for a, b in zip(lrs[:50], lrs[1:51]))
    assert math.isclose(lrs[-1], 1e-4)
    assert math.isclose(warmup_cosine_lr(250, 200), 0.0, abs_tol=1e-15)    # stays at min_lr after the end
    assert math.isclose(warmup_cosine_lr(0, 300, 0.1, 20, start_factor=1 / 3), 0.1 / 3)
    with pytest.raises(ValueError):
        warmup_cosine_lr(0, 5, warmup_epochs=5)


@pytest.mark.parametrize('base, warm', [(0.1, 5), (0.2, 3), (1.0, 2.5)])
def test_warmup_step_lr_fractional_epochs_never_overshoot(base, warm):
    """Per-iteration (fractional) epochs: the warm-up stays <= the base rate (the old (e+1)/w gave 1.15x base at
    e = 4.75 of 5), is non-decreasing up to the first milestone and continuous at the end of the warm-up."""
    from margin_notes import schedules
    assert warmup_step_lr is schedules.warmup_step_lr and warmup_cosine_lr is schedules.warmup_cosine_lr   # one definition
    es = [k / 64 for k in range(0, 64 * 20)]
    lrs = [warmup_step_lr(e, base, warm, milestones=(20,), factors=(0.1,)) for e in es]
    assert max(lrs) <= base * (1 + 1e-12)
    assert all(b >= a for a, b in zip(lrs, lrs[1:]))
    assert math.isclose(warmup_step_lr(warm - 1e-9, base, warm, (20,), (0.1,)), base, rel_tol=1e-8)
    assert math.isclose(warmup_step_lr(warm - 0.25, base, warm, (20,), (0.1,)), base)


def test_module_device_and_features_ignored():
    loss = BalancedSoftmaxLoss([10, 5, 1]).set_class_weight([1.0, 2.0, 3.0])
    z, y = torch.rand(4, 3) * 2 - 1, torch.tensor([0, 1, 2, 1])
    torch.testing.assert_close(loss(z, y, features=torch.randn(4, 7)), loss(z, y))
    loss = loss.to(torch.device('cpu'))
    assert loss.weight.device.type == 'cpu' and loss._anchor.device.type == 'cpu'


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('kind', KINDS)
def test_cuda_no_host_sync(kind):
    counts = [100, 10, 1]
    loss = build(kind, counts).cuda()
    loss.set_class_weight(drw_weights(counts))
    z = torch.randn(8, 3, device='cuda', requires_grad=True)
    y = torch.randint(0, 3, (8,), device='cuda')
    torch.cuda.set_sync_debug_mode('error')
    try:
        loss(torch.tanh(z) if kind == 'ldam' else z, y).backward()
    finally:
        torch.cuda.set_sync_debug_mode('default')
