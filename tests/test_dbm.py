"Tests for margin_notes.dbm: CosineClassifier and DBMLoss against a naive float64 reference."
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from margin_notes.dbm import DBMLoss, dbm_class_margins, naive_dbm_loss as naive_dbm
from margin_notes.models import CosineClassifier
import functools as _ft
DBMLoss = _ft.partial(DBMLoss, base='ce')   # these tests pin the form they check; the default is tested in test_defaults


def _rand(B=12, K=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    cos = (torch.rand(B, K, generator=g, dtype=dtype) * 2 - 1) * 0.95
    y = torch.randint(0, K, (B,), generator=g)
    return cos, y


COUNTS = [300, 90, 40, 12, 5]
# the loss keeps its class margins and log prior in float32 buffers (they must follow the module to any device,
# MPS has no float64), so float64 inputs agree with the float64 reference to float32 rounding of those constants
TOL = dict(rel=1e-6, abs=1e-9)


@pytest.mark.parametrize('kw', [dict(), dict(base='bs'), dict(hard_only=False), dict(instance_weight=0.0),
                                dict(tau=0.5, margin=0.3), dict(reference='last_index'), dict(scale=10.0),
                                dict(margin=1.2, pi_fallback=True), dict(margin=1.2)])
def test_matches_naive(kw):
    cos, y = _rand()
    counts = [12, 90, 300, 40, 5] if kw.get('reference') == 'last_index' else COUNTS
    got = DBMLoss(counts, **kw)(cos, y)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(naive_dbm(cos, y, counts, **kw), **TOL)


def test_matches_naive_with_class_weights():
    cos, y = _rand(B=20)
    w = [0.2, 0.5, 1.0, 2.0, 3.0]
    loss = DBMLoss(COUNTS, base='bs'); loss.set_class_weight(w)
    assert loss(cos, y).item() == pytest.approx(naive_dbm(cos, y, COUNTS, base='bs', weight=w), **TOL)
    loss.set_class_weight(None)
    assert loss(cos, y).item() == pytest.approx(naive_dbm(cos, y, COUNTS, base='bs'), **TOL)


def test_margin_zero_is_plain_ce_on_scaled_cosine():
    cos, y = _rand(B=30, K=5, seed=3)
    for base, off in [('ce', 0.0), ('bs', torch.tensor(COUNTS, dtype=torch.float64).div(sum(COUNTS)).log())]:
        for scale in (8.0, 32.0):   # the default and the papers' scale
            got = DBMLoss(COUNTS, margin=0.0, base=base, scale=scale)(cos, y)
            ref = F.cross_entropy(scale * cos + off, y)
            torch.testing.assert_close(got, ref, rtol=1e-7, atol=1e-7)
    assert DBMLoss(COUNTS).scale == 8.0


def test_permuting_classes_permutes_margins():
    counts = torch.tensor([7., 300., 45., 12., 90.])
    perm = torch.tensor([3, 0, 4, 1, 2])
    m = dbm_class_margins(counts)
    torch.testing.assert_close(dbm_class_margins(counts[perm]), m[perm])
    assert m.max().item() == pytest.approx(0.1) and m.argmax().item() == 0  # rarest class, wherever it sits
    # the released 'last_index' reference is NOT permutation-equivariant on unsorted counts
    assert not torch.allclose(dbm_class_margins(counts[perm], reference='last_index'),
                              dbm_class_margins(counts, reference='last_index')[perm])


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), K=st.integers(2, 7), B=st.integers(1, 9), base=st.sampled_from(['ce', 'bs']))
def test_loss_equivariant_under_class_permutation(seed, K, B, base):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, 500, (K,), generator=g).double()
    cos = torch.rand(B, K, generator=g, dtype=torch.float64) * 2 - 1
    y = torch.randint(0, K, (B,), generator=g)
    perm = torch.randperm(K, generator=g)              # new class i is old class perm[i]
    inv = torch.argsort(perm)
    a = DBMLoss(counts, base=base)(cos, y)
    b = DBMLoss(counts[perm], base=base)(cos[:, perm], inv[y])
    torch.testing.assert_close(a, b)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), margin=st.floats(0.0, 0.5))
def test_margin_never_lowers_loss_and_matches_naive(seed, margin):
    cos, y = _rand(B=8, K=5, seed=seed)
    got = DBMLoss(COUNTS, margin=margin)(cos, y)
    plain = DBMLoss(COUNTS, margin=0.0)(cos, y)
    assert got >= plain - 1e-12
    assert got.item() == pytest.approx(naive_dbm(cos, y, COUNTS, margin=margin), **TOL)


@pytest.mark.parametrize('kw', [dict(hard_only=False), dict(), dict(base='bs', pi_fallback=True, margin=1.0)])
def test_gradcheck(kw):
    # (detach_difficulty=True is excluded by design: it removes a path the finite differences see)
    cos, y = _rand(B=6, K=5, seed=1)
    cos = (cos * 0.9).requires_grad_()
    loss = DBMLoss(COUNTS, **{'margin': 0.3, **kw})
    assert torch.autograd.gradcheck(lambda c: loss(c, y), (cos,))


def test_detach_difficulty_changes_gradient_not_value():
    cos, y = _rand(B=6, K=5, seed=2)
    a = cos.clone().requires_grad_(); b = cos.clone().requires_grad_()
    la = DBMLoss(COUNTS, margin=0.3, hard_only=False)(a, y)
    lb = DBMLoss(COUNTS, margin=0.3, hard_only=False, detach_difficulty=True)(b, y)
    torch.testing.assert_close(la, lb)
    la.backward(); lb.backward()
    assert not torch.allclose(a.grad, b.grad)


def test_finite_at_plus_minus_one():
    cos = torch.tensor([[1.0, -1.0, 0.0], [-1.0, 1.0 + 1e-7, 0.3], [-1.0, 0.0, 1.0]], requires_grad=True)
    y = torch.tensor([0, 0, 1])
    l = DBMLoss([10, 5, 2], margin=0.5)(cos, y)
    l.backward()
    assert torch.isfinite(l) and torch.isfinite(cos.grad).all()


def test_autocast_low_precision_inputs_compute_in_float32():
    cos, y = _rand(B=8, K=5, seed=4, dtype=torch.float32)
    ref = DBMLoss(COUNTS)(cos, y)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        got = DBMLoss(COUNTS)(cos.bfloat16(), y)
    assert got.dtype == torch.float32
    # float32 arithmetic on the bf16-rounded inputs: equal to the fp32 loss of the rounded cosines (a loss computed in
    # bf16 and cast back would differ by ~1e-3 here), and close to the fp32 loss of the unrounded ones
    torch.testing.assert_close(got, DBMLoss(COUNTS)(cos.bfloat16().float(), y), rtol=0, atol=1e-6)
    torch.testing.assert_close(got, ref, rtol=0.01, atol=0.01)


def test_state_moves_and_saves():
    loss = DBMLoss(COUNTS, base='bs')
    sd = loss.state_dict()
    assert {'class_margin', 'log_prior'} <= set(sd) and 'weight' not in sd   # uniform: no weight buffer (chapter 00's ClassWeighted)
    loss.set_class_weight([1., 2., 3., 4., 5.])
    other = DBMLoss(COUNTS, base='bs'); other.load_state_dict(loss.state_dict())
    torch.testing.assert_close(other.weight, torch.tensor([1., 2., 3., 4., 5.]))
    # .to() moves every buffer (margins, prior, weights) with the module; .double() casts them like any buffer
    moved = loss.to('meta')
    assert {n for n, _ in moved.named_buffers()} >= {'class_margin', 'log_prior', 'weight'}
    assert all(b.device.type == 'meta' for b in moved.buffers())
    assert DBMLoss(COUNTS, base='bs').double().class_margin.dtype == torch.float64


def test_last_dict_is_detached():
    cos, y = _rand(B=8, K=5, dtype=torch.float32)
    cos.requires_grad_()
    loss = DBMLoss(COUNTS); loss(cos, y)
    assert {'margin_mean', 'hard_frac', 'loss'} <= set(loss.last)
    assert all(not v.requires_grad for v in loss.last.values())


def test_bad_inputs():
    with pytest.raises(ValueError, match='positive'): DBMLoss([10, 0, 3])
    with pytest.raises(ValueError, match='scale'): DBMLoss(COUNTS, scale=0)
    with pytest.raises(ValueError, match='margin'): DBMLoss(COUNTS, margin=-0.1)
    with pytest.raises(ValueError, match='replaces'): DBMLoss(COUNTS, base='ldam')
    with pytest.raises(ValueError, match='base'): DBMLoss(COUNTS, base='focal')
    with pytest.raises(ValueError, match='reference'): DBMLoss(COUNTS, reference='max')
    loss = DBMLoss(COUNTS)
    with pytest.raises(ValueError, match='class_counts'): loss(torch.zeros(3, 4), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match='targets'): loss(torch.zeros(3, 5), torch.tensor([0, 1, 5]))
    with pytest.raises(ValueError, match='shape'): loss(torch.zeros(3, 5, 1), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match='NaN'): loss(torch.full((2, 5), float('nan')), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match='weight'): loss.set_class_weight([1., 2.])


# ---------------------------------------------------------------- CosineClassifier
def test_cosine_classifier_matches_naive():
    torch.manual_seed(0)
    head = CosineClassifier(4, 3).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    out = head(x)
    W = head.weight.detach()
    for i in range(5):
        for j in range(3):
            ref = sum(x[i, k] * W[j, k] for k in range(4)) / (math.sqrt(sum(x[i, k] ** 2 for k in range(4)))
                                                               * math.sqrt(sum(W[j, k] ** 2 for k in range(4))))
            assert out[i, j].item() == pytest.approx(float(ref), rel=1e-12)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), a=st.floats(0.01, 100.0), b=st.floats(0.01, 100.0))
def test_cosine_classifier_is_scale_invariant(seed, a, b):
    torch.manual_seed(seed)
    head = CosineClassifier(6, 4).double()
    x = torch.randn(3, 6, dtype=torch.float64)
    ref = head(x)
    assert (ref.abs() <= 1 + 1e-12).all()
    with torch.no_grad(): head.weight.mul_(b)
    torch.testing.assert_close(head(a * x), ref)


def test_cosine_classifier_gradcheck_and_no_bias():
    head = CosineClassifier(4, 3).double()
    assert [n for n, _ in head.named_parameters()] == ['weight'] and head.weight.shape == (3, 4)
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    # gradcheck perturbs head.weight in place, so the closure sees the perturbed weights
    assert torch.autograd.gradcheck(lambda x, w: head(x), (x, head.weight))
    with pytest.raises(ValueError, match='shape'): head(torch.randn(2, 5, dtype=torch.float64))
    with pytest.raises(ValueError): CosineClassifier(0, 3)


# ---------------------------------------------------------------- composition with any logit loss
def test_composite_with_bs_equals_dbm_bs_and_margin_zero_is_base():
    baselines = pytest.importorskip('margin_notes.baselines')
    from margin_notes.dbm import DBMComposite
    cos, y = _rand(B=20, K=5, seed=7)
    bs = baselines.BalancedSoftmaxLoss(COUNTS)
    torch.testing.assert_close(DBMComposite(bs, COUNTS)(cos, y), DBMLoss(COUNTS, base='bs')(cos, y), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(DBMComposite(bs, COUNTS, margin=0.0)(cos, y), bs(DBMLoss(COUNTS).scale * cos, y), rtol=1e-6, atol=1e-7)
    comp = DBMComposite(baselines.CELoss(), COUNTS)
    comp.set_class_weight([1., 2., 3., 4., 5.])
    ref = DBMLoss(COUNTS); ref.set_class_weight([1., 2., 3., 4., 5.])
    torch.testing.assert_close(comp(cos, y), ref(cos, y), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64, torch.bfloat16])
def test_non_target_cosines_keep_their_gradient_near_plus_minus_one(dtype):
    """Only the target cosine is clamped: d loss / d cos_j = s * softmax_j(z) for every j != y, even at |cos_j| = 1."""
    counts = [50, 20, 5, 2]
    cos = torch.tensor([[0.1, 1.0, -1.0, 0.9999], [0.998, 0.3, -0.999, 1.0]], dtype=dtype, requires_grad=True)
    y = torch.tensor([0, 2])
    loss = DBMLoss(counts, scale=16.0)
    loss(cos, y).backward()
    z = loss.margined_logits(cos.detach(), y)
    p = torch.softmax(z.double(), 1)
    mask = torch.ones_like(p, dtype=torch.bool).scatter(1, y[:, None], False)
    expected = (16.0 * p / 2)[mask]                     # mean over B = 2 rows
    got = cos.grad.double()[mask]
    assert (got != 0).all()
    torch.testing.assert_close(got, expected, rtol=2e-2 if dtype == torch.bfloat16 else 1e-4, atol=1e-6)


def test_dbm_refuses_linear_logits_and_meaningless_margins():
    with pytest.raises(ValueError, match='cosine head'):
        DBMLoss([5, 3, 1])(torch.nn.Linear(4, 3)(torch.randn(8, 4) * 3), torch.randint(0, 3, (8,)))
    with pytest.raises(ValueError, match='pi'):
        DBMLoss([5, 3, 1], margin=3.5)
