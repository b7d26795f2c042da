"Tests for margin_notes.lwr: the thresholded repulsion, its schedule and the LWRLoss wrapper."
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from margin_notes.lwr import LWRegularizer, LWRLoss, lwr_lambda, naive_lwr, with_lwr


def closed_form_grad(W, threshold):
    "The gradient of chapter 17: grad_i = 1/|w_i| sum_{j!=i} C_ij (wb_j - (wb_i.wb_j) wb_i), C_ij = 1_ij (p_ij + p_ji); loops."
    W = W.detach().double(); K = W.shape[0]
    nrm = W.norm(dim=1); wb = W / nrm[:, None]
    S = [[(wb[i] @ wb[j]).item() for j in range(K)] for i in range(K)]
    s = [[(1.0 if threshold < 1 else 0.0) if i == j else (S[i][j] if S[i][j] > threshold else 0.0) for j in range(K)]
         for i in range(K)]
    p = [[math.exp(s[i][j]) / sum(math.exp(v) for v in s[i]) for j in range(K)] for i in range(K)]
    G = torch.zeros_like(W)
    for i in range(K):
        for j in range(K):
            if i != j and S[i][j] > threshold:
                G[i] += (p[i][j] + p[j][i]) * (wb[j] - S[i][j] * wb[i])
        G[i] /= nrm[i]
    return G


def _clustered(K=6, D=5, seed=0, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    base = torch.zeros(D, dtype=torch.float64); base[0] = 2.0
    return (base + spread * torch.randn(K, D, generator=g, dtype=torch.float64)).requires_grad_()


@pytest.mark.parametrize('threshold', [-1.0, 0.0, 0.4, 0.6, 0.95])
@pytest.mark.parametrize('reduction', ['sum', 'mean'])
def test_value_matches_naive(threshold, reduction):
    W = _clustered()
    got = LWRegularizer(threshold, reduction=reduction)(W)
    assert got.item() == pytest.approx(naive_lwr(W, threshold, reduction), rel=1e-12)


@pytest.mark.parametrize('threshold', [-1.0, 0.0, 0.4, 0.8])
def test_autograd_matches_closed_form(threshold):
    W = _clustered(seed=1)
    LWRegularizer(threshold)(W).backward()
    torch.testing.assert_close(W.grad, closed_form_grad(W, threshold), rtol=1e-10, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), K=st.integers(2, 8), D=st.integers(2, 6), threshold=st.floats(-1.0, 0.99),
       scale=st.floats(0.1, 10.0))
def test_gradient_tangent_and_scale_invariance(seed, K, D, threshold, scale):
    W = _clustered(K, D, seed)
    r = LWRegularizer(threshold)(W); r.backward()
    # each row's gradient is orthogonal to the row
    dots = (W.grad * W.detach()).sum(1) / (W.grad.norm(dim=1) * W.detach().norm(dim=1) + 1e-30)
    assert dots.abs().max() < 1e-9
    # the value depends on directions only; the gradient scales like 1/|w|
    W2 = (W.detach() * scale).requires_grad_()
    r2 = LWRegularizer(threshold)(W2); r2.backward()
    assert r2.item() == pytest.approx(r.item(), rel=1e-10)
    torch.testing.assert_close(W2.grad * scale, W.grad, rtol=1e-8, atol=1e-10)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), threshold=st.floats(-0.5, 0.9))
def test_pairs_below_threshold_contribute_no_gradient(seed, threshold):
    W = _clustered(7, 4, seed)
    LWRegularizer(threshold)(W).backward()
    wb = F.normalize(W.detach(), dim=1); S = wb @ wb.T
    isolated = ((S > threshold) & ~torch.eye(7, dtype=torch.bool)).sum(1) == 0
    assert (W.grad[isolated] == 0).all()


def test_threshold_one_is_constant_with_zero_gradient():
    W = _clustered(5, 3, seed=2)
    r = LWRegularizer(1.0)(W); r.backward()
    assert r.item() == pytest.approx(5 * math.log(5))
    assert (W.grad == 0).all()
    # parallel rows (cosine 1 up to rounding) do not sneak through either
    W = torch.tensor([[1., 2., 3.], [2., 4., 6.], [0., 1., 0.]], requires_grad=True)
    LWRegularizer(1.0)(W).backward()
    assert W.grad.abs().max().item() < 1e-6


def test_gradcheck_float64():
    W = _clustered(5, 4, seed=3)
    for th in (-1.0, 0.3):
        assert torch.autograd.gradcheck(lambda w: LWRegularizer(th)(w), (W,))


def test_repulsion_lowers_similarities():
    W = _clustered(6, 5, seed=4, spread=0.3)
    wb = F.normalize(W.detach(), dim=1); before = (wb @ wb.T).fill_diagonal_(-2).max()
    opt = torch.optim.SGD([W], lr=0.05)
    for _ in range(50):
        opt.zero_grad(); LWRegularizer(-1.0)(W).backward(); opt.step()
    wb = F.normalize(W.detach(), dim=1)
    assert (wb @ wb.T).fill_diagonal_(-2).max() < before


def test_autocast_and_lwr_weight():
    W = torch.randn(6, 8)
    ref = LWRegularizer(0.0)(W)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        got = LWRegularizer(0.0)(W.bfloat16())
    assert got.dtype == torch.float32
    # float32 arithmetic on the bf16-rounded weights (exactly their fp32 value), close to the unrounded weights' value
    torch.testing.assert_close(got, LWRegularizer(0.0)(W.bfloat16().float()), rtol=0, atol=1e-6)
    torch.testing.assert_close(got, ref, rtol=0.01, atol=0.01)
    torch.testing.assert_close(LWRegularizer(0.0, lwr_weight=0.3)(W), 0.3 * ref)


def test_bad_inputs():
    with pytest.raises(ValueError, match=r'\(K, D\)'): LWRegularizer()(torch.randn(5))
    with pytest.raises(ValueError, match='floating'): LWRegularizer()(torch.ones(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match='NaN'): LWRegularizer()(torch.full((3, 2), float('nan')))
    with pytest.raises(ValueError, match='threshold'): LWRegularizer(float('inf'))
    with pytest.raises(ValueError, match='reduction'): LWRegularizer(reduction='max')
    with pytest.raises(ValueError, match='lwr_weight'): LWRegularizer(lwr_weight=-1)
    with pytest.raises(TypeError): LWRegularizer()([[1.0, 2.0]])


# ---------------------------------------------------------------- schedule
@settings(max_examples=30, deadline=None)
@given(p=st.floats(-3, 3))
def test_lwr_lambda(p):
    q = min(max(p, 0.0), 1.0)
    assert lwr_lambda(p) == pytest.approx((1 - q) ** 2)
    assert float(lwr_lambda(torch.tensor(p))) == pytest.approx((1 - q) ** 2, rel=1e-6, abs=1e-7)


def test_lwr_lambda_bad_input():
    with pytest.raises(ValueError, match='finite'): lwr_lambda(float('inf'))
    with pytest.raises(ValueError, match='NaN'): lwr_lambda(torch.tensor(float('nan')))
    with pytest.raises(TypeError): lwr_lambda('half')


# ---------------------------------------------------------------- wrapper
def _setup(seed=0):
    torch.manual_seed(seed)
    head = nn.Linear(6, 4)
    x, y = torch.randn(10, 6), torch.randint(0, 4, (10,))
    return head, x, y


class _CE(nn.Module):
    def __init__(self): super().__init__(); self.register_buffer('weight', torch.ones(4)); self.last = {'ce': None}
    def set_class_weight(self, w): self.weight.copy_(torch.ones(4) if w is None else torch.as_tensor(w, dtype=torch.float))
    def forward(self, logits, targets, features=None): return F.cross_entropy(logits, targets, weight=self.weight)


@settings(max_examples=20, deadline=None)
@given(progress=st.floats(0, 1), schedule=st.sampled_from(['poly2', 'constant']), th=st.floats(-1, 0.9))
def test_wrapper_value(progress, schedule, th):
    head, x, y = _setup()
    base = _CE(); loss = with_lwr(base, head, threshold=th, schedule=schedule, lwr_weight=0.5)
    loss.set_progress(progress)
    lam = (1 - progress) ** 2 if schedule == 'poly2' else 1.0
    out = head(x)
    expected = F.cross_entropy(out, y) + lam * 0.5 * naive_lwr(head.weight, th)
    assert loss(out, y).item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
    assert loss.last['lwr_lambda'].item() == pytest.approx(lam, rel=1e-6, abs=1e-7)


def test_wrapper_reads_current_weights_and_keeps_head_out_of_state():
    head, x, y = _setup()
    loss = LWRLoss(_CE(), head)
    a = loss(head(x), y)
    with torch.no_grad(): head.weight.mul_(-1).add_(0.3)
    assert loss(head(x), y).item() != pytest.approx(a.item())
    assert set(loss.state_dict()) == {'progress', 'base.weight'}
    assert all(p is not head.weight for p in loss.parameters())
    loss.set_class_weight([1., 2., 3., 4.]); assert loss.base.weight[3] == 4
    # a weight tensor works as well as a module
    loss2 = LWRLoss(_CE(), head.weight)
    torch.testing.assert_close(loss2(head(x), y), LWRLoss(_CE(), head)(head(x), y))


def test_wrapper_end_of_training_is_base():
    head, x, y = _setup()
    loss = with_lwr(_CE(), head, threshold=-1.0); loss.set_progress(1.0)
    head.zero_grad(); loss(head(x), y).backward(); g = head.weight.grad.clone()
    head.zero_grad(); F.cross_entropy(head(x), y).backward()
    torch.testing.assert_close(g, head.weight.grad)


def test_proj_value_unchanged_and_no_conflict():
    head, x, y = _setup(1)
    with torch.no_grad(): head.weight[1] = head.weight[0] + 0.05
    plain, projd = with_lwr(_CE(), head, threshold=-1.0), with_lwr(_CE(), head, threshold=-1.0, proj=True)
    torch.testing.assert_close(plain(head(x), y), projd(head(x), y))

    def grad(fn):
        head.zero_grad(); fn(head(x), y).backward(); return head.weight.grad.clone()
    g_ce = grad(lambda o, t: F.cross_entropy(o, t))
    r_plain, r_proj = grad(plain) - g_ce, grad(projd) - g_ce
    dots = (r_plain * g_ce).sum(1)
    assert (dots < 0).any()                                  # the test exercises a real conflict
    assert ((r_proj * g_ce).sum(1) >= -1e-6).all()
    torch.testing.assert_close(r_proj[dots >= 0], r_plain[dots >= 0])
    # projected rows: the result is the original minus its component along g_ce
    i = dots < 0
    coef = dots[i] / (g_ce[i] ** 2).sum(1)
    torch.testing.assert_close(r_proj[i], r_plain[i] - coef[:, None] * g_ce[i], rtol=1e-4, atol=1e-6)


def test_wrapper_bad_inputs():
    head, x, y = _setup()
    with pytest.raises(ValueError, match='weight'): LWRLoss(_CE(), nn.ReLU())
    with pytest.raises(ValueError, match='schedule'): LWRLoss(_CE(), head, schedule='linear')
    loss = LWRLoss(_CE(), head)
    with pytest.raises(ValueError, match='head weight has shape'): loss(torch.randn(10, 5), torch.zeros(10, dtype=torch.long))
    with pytest.raises(ValueError, match='finite'): loss.set_progress(float('nan'))


def test_forgotten_set_progress_warns_once_per_instance_in_training_only():
    import warnings
    head = torch.nn.Linear(6, 4)
    x, y = torch.randn(8, 6), torch.randint(0, 4, (8,))
    base = torch.nn.CrossEntropyLoss()
    lw = LWRLoss(base, head)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        lw.eval(); lw(head(x), y)                      # eval: no warning
        lw.train(); lw(head(x), y); lw(head(x), y)     # training: exactly one
        LWRLoss(base, head, schedule='constant')(head(x), y)   # nothing to drive
        driven = LWRLoss(base, head); driven.set_progress(0.3); driven(head(x), y)
        resumed = LWRLoss(base, head); resumed.load_state_dict(driven.state_dict()); resumed(head(x), y)
    msgs = [str(w.message) for w in caught if 'set_progress' in str(w.message)]
    assert len(msgs) == 1, msgs


def test_transposed_head_weight_is_refused():
    head = torch.nn.Linear(6, 4)
    x, y = torch.randn(8, 6), torch.randint(0, 4, (8,))
    with pytest.raises(ValueError, match='transposed'):
        LWRLoss(torch.nn.CrossEntropyLoss(), head.weight.detach().T)(head(x), y)
    square = torch.nn.Linear(4, 4)
    with pytest.raises(ValueError, match='transposed'):       # (D, K) with D == K: caught through the features
        LWRLoss(torch.nn.CrossEntropyLoss(), torch.randn(4, 6))(square(torch.randn(8, 4)), y, features=torch.randn(8, 4))
