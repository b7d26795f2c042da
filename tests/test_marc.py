"Tests for margin_notes.marc: calibration module, loss weights, cached fit and stage-2 loop."
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch.utils.data import DataLoader, TensorDataset

from margin_notes.marc import (MARC, MARCLoss, MARCFit, fit_marc, marc_class_weights, marc_logits, marc_stage2,
                               naive_marc_objective)
from margin_notes.models import CosineClassifier


def naive_weights(counts, gamma):
    inv = [(1.0 / n) ** gamma for n in counts]
    return [len(counts) * v / sum(inv) for v in inv]


def naive_objective(eta, wn, y, counts, omega, beta, gamma=1.2, wd=5e-4, reduction='weighted_mean'):
    "The float64 loop reference of chapter 15 (exported, shared with the chapter's check)."
    return naive_marc_objective(eta, wn, y, counts, omega, beta, gamma, wd, reduction)


def _problem(N=120, K=4, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, K, (N,), generator=g)
    y[:K] = torch.arange(K)                                   # every class present
    bias = torch.linspace(1.5, -1.0, K, dtype=dtype)
    eta = torch.randn(N, K, generator=g, dtype=dtype) + 1.5 * F.one_hot(y, K).to(dtype) + bias
    wn = torch.rand(K, generator=g, dtype=dtype) + 0.5
    counts = torch.bincount(y, minlength=K)
    return eta, wn, y, counts


# ---------------------------------------------------------------- weights and loss
@settings(max_examples=30, deadline=None)
@given(counts=st.lists(st.integers(1, 5000), min_size=1, max_size=12), gamma=st.floats(0, 3))
def test_class_weights_match_naive(counts, gamma):
    got = marc_class_weights(counts, gamma)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), torch.tensor(naive_weights(counts, gamma), dtype=torch.float64),
                               rtol=1e-5, atol=1e-6)
    # priors instead of counts: identical weights
    tot = sum(counts)
    torch.testing.assert_close(marc_class_weights([c / tot for c in counts], gamma), got, rtol=1e-5, atol=1e-6)


def test_class_weights_no_underflow_for_huge_counts():
    w = marc_class_weights([1e6, 1e7, 1e8], gamma=3.0)
    assert torch.isfinite(w).all() and w.sum().item() == pytest.approx(3.0)


@pytest.mark.parametrize('reduction', ['weighted_mean', 'batch_mean'])
def test_marc_loss_matches_naive(reduction):
    eta, wn, y, counts = _problem(N=30)
    got = MARCLoss(counts, reduction=reduction)(eta, y)
    ref = naive_objective(eta, [1.0] * 4, y, counts.tolist(), [1.0] * 4, [0.0] * 4, wd=0.0, reduction=reduction)
    assert got.item() == pytest.approx(ref, rel=1e-6)


def test_marc_loss_gradcheck_and_errors():
    eta, wn, y, counts = _problem(N=10)
    eta = eta.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda z: MARCLoss(counts)(z, y), (eta,))
    with pytest.raises(ValueError, match='columns'): MARCLoss(counts)(eta[:, :3], y.clamp(max=2))
    with pytest.raises(ValueError, match='reduction'): MARCLoss(counts, reduction='none')
    with pytest.raises(ValueError, match='gamma'): marc_class_weights([1, 2], gamma=-1)
    with pytest.raises(ValueError, match='positive'): marc_class_weights([1, 0])


# ---------------------------------------------------------------- MARC module
def test_marc_identity_at_init_and_formula():
    torch.manual_seed(0)
    head = nn.Linear(5, 3).double(); head.bias.data.fill_(3.0)
    marc = MARC(head).double()
    f = torch.randn(7, 5, dtype=torch.float64)
    torch.testing.assert_close(marc(f), head(f))
    om, be = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64), torch.tensor([1.0, -2.0, 0.3], dtype=torch.float64)
    marc.load_fit(MARCFit(om, be, 0.0, 0, 0.0))
    out = marc(f)
    W, b = head.weight.detach(), head.bias.detach()
    for i in range(7):
        for j in range(3):
            eta = sum(W[j, k] * f[i, k] for k in range(5)) + b[j]          # bias inside eta
            nrm = math.sqrt(sum(W[j, k] ** 2 for k in range(5)))              # bias outside the norm
            assert out[i, j].item() == pytest.approx(float(om[j] * eta + be[j] * nrm), rel=1e-10)


def test_marc_parameters_and_frozen_head():
    head = nn.Linear(4, 6)
    marc = MARC(head)
    assert marc.omega.shape == (6,) and marc.beta.shape == (6,)
    f = torch.randn(3, 4)
    marc(f).sum().backward()
    assert head.weight.grad is None and marc.omega.grad is not None and marc.beta.grad is not None


def test_marc_cosine_head():
    head = CosineClassifier(4, 3)
    with pytest.raises(ValueError, match='scale'): MARC(head)
    with pytest.raises(ValueError, match='cosine'): MARC(nn.Linear(4, 3), scale=30.0)
    marc = MARC(head, scale=10.0)
    f = torch.randn(5, 4)
    torch.testing.assert_close(marc(f), 10 * head(f))
    marc.load_fit((torch.tensor([1., 2., 3.]), torch.tensor([0.1, 0., -0.1])))
    torch.testing.assert_close(marc(f), 10 * (torch.tensor([1., 2., 3.]) * head(f) + torch.tensor([0.1, 0., -0.1])))


def test_marc_logits_gradcheck():
    eta, wn, y, counts = _problem(N=6)
    om = torch.rand(4, dtype=torch.float64, requires_grad=True)
    be = torch.rand(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda o, b: marc_logits(eta, wn, o, b), (om, be))


# ---------------------------------------------------------------- fit
@pytest.mark.parametrize('reduction', ['weighted_mean', 'batch_mean'])
@pytest.mark.parametrize('gamma,wd', [(1.2, 5e-4), (0.0, 1e-2), (2.0, 0.0)])
def test_lbfgs_reaches_stationary_point_of_naive_objective(reduction, gamma, wd):
    eta, wn, y, counts = _problem()
    fit = fit_marc(eta, wn, y, counts, gamma=gamma, weight_decay=wd, reduction=reduction, dtype=torch.float64)
    om, be = fit.omega.tolist(), fit.beta.tolist()
    f0 = naive_objective(eta, wn.tolist(), y, counts.tolist(), om, be, gamma, wd, reduction)
    assert fit.loss == pytest.approx(f0, rel=1e-6)  # U is float32
    assert fit.grad_max < 1e-7 and fit.iterations < 200
    # finite-difference gradient of the naive objective vanishes at the solution
    h = 1e-5
    for vec in (om, be):
        for j in range(4):
            vec[j] += h; fp = naive_objective(eta, wn.tolist(), y, counts.tolist(), om, be, gamma, wd, reduction)
            vec[j] -= 2 * h; fm = naive_objective(eta, wn.tolist(), y, counts.tolist(), om, be, gamma, wd, reduction)
            vec[j] += h
            assert abs(fp - fm) / (2 * h) < 1e-5


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 1000))
def test_lbfgs_is_a_minimum_and_permutation_equivariant(seed):
    eta, wn, y, counts = _problem(N=80, K=4, seed=seed)
    fit = fit_marc(eta, wn, y, counts, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    for _ in range(3):  # convex: random perturbations never do better
        d_om, d_be = 0.1 * torch.randn(4, generator=g, dtype=torch.float64), 0.1 * torch.randn(4, generator=g, dtype=torch.float64)
        f1 = naive_objective(eta, wn.tolist(), y, counts.tolist(), (fit.omega + d_om).tolist(), (fit.beta + d_be).tolist())
        assert f1 >= fit.loss - 1e-10
    perm = torch.randperm(4, generator=g); inv = torch.argsort(perm)
    fp = fit_marc(eta[:, perm], wn[perm], inv[y], counts[perm], dtype=torch.float64)
    torch.testing.assert_close(fp.omega, fit.omega[perm], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fp.beta, fit.beta[perm], rtol=1e-5, atol=1e-6)


def test_chunked_lbfgs_equals_full_and_sgd_agrees():
    eta, wn, y, counts = _problem(N=150)
    a = fit_marc(eta, wn, y, counts, dtype=torch.float64)
    b = fit_marc(eta, wn, y, counts, dtype=torch.float64, chunk_size=17)
    torch.testing.assert_close(a.omega, b.omega, rtol=1e-6, atol=1e-7)
    s = fit_marc(eta.float(), wn.float(), y, counts, optimizer='sgd', epochs=400, batch_size=150, lr=0.5)
    torch.testing.assert_close(s.omega.double(), a.omega, rtol=0, atol=2e-2)
    torch.testing.assert_close(s.beta.double(), a.beta, rtol=0, atol=2e-2)
    assert isinstance(a, tuple) and a.iterations > 0 and a.seconds >= 0


def test_common_shift_of_beta_is_pinned_by_weight_decay():
    # with equal row norms a common shift of beta changes no softmax, so at the optimum of the decayed objective
    # the derivative along that direction is wd * sum(beta) = 0
    eta, wn, y, counts = _problem(N=200)
    fit = fit_marc(eta, torch.ones(4, dtype=torch.float64), y, counts, weight_decay=1e-3, dtype=torch.float64)
    assert abs(fit.beta.sum().item()) < 1e-6
    assert abs(fit.beta).max().item() > 1e-3   # ... while beta itself is not trivially zero


# ---------------------------------------------------------------- stage-2 loop
class _Net(nn.Module):
    def __init__(self, bn=False):
        super().__init__()
        layers = [nn.Linear(6, 8)] + ([nn.BatchNorm1d(8)] if bn else []) + [nn.ReLU()]
        self.backbone = nn.Sequential(*layers); self.head = nn.Linear(8, 3)
    def forward(self, x): return self.head(self.backbone(x))


def test_stage2_loop_equals_sgd_on_cache():
    torch.manual_seed(0)
    net = _Net(bn=True)
    X, Y = torch.randn(50, 6), torch.randint(0, 3, (50,)); Y[:3] = torch.arange(3)
    counts = torch.bincount(Y, minlength=3)
    # give BatchNorm non-trivial running statistics, then freeze
    net.train(); net(X * 3 + 1)
    rm = net.backbone[1].running_mean.clone()
    loader = DataLoader(TensorDataset(X, Y), batch_size=16, shuffle=False)
    loop = marc_stage2(net, loader, counts, epochs=3)
    torch.testing.assert_close(net.backbone[1].running_mean, rm)      # eval mode: BN statistics untouched
    assert net.training                                                # mode restored
    net.eval()
    with torch.no_grad(): eta = net(X)
    cache = fit_marc(eta, net.head.weight.detach().norm(dim=1), Y, counts, optimizer='sgd', epochs=3, batch_size=16,
                     shuffle=False)
    torch.testing.assert_close(loop.omega, cache.omega, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loop.beta, cache.beta, rtol=1e-5, atol=1e-6)
    assert loop.iterations == cache.iterations == 12
    # release behaviour: train-mode BatchNorm keeps drifting
    marc_stage2(net, loader, counts, epochs=1, train_mode=True)
    assert not torch.allclose(net.backbone[1].running_mean, rm)


def test_fit_bad_inputs():
    eta, wn, y, counts = _problem(N=20)
    with pytest.raises(ValueError, match='weight_norms'): fit_marc(eta, wn[:3], y, counts)
    with pytest.raises(ValueError, match='class_counts'): fit_marc(eta, wn, y, counts[:3])
    with pytest.raises(ValueError, match='targets'): fit_marc(eta, wn, y[:5], counts)
    with pytest.raises(ValueError, match='optimizer'): fit_marc(eta, wn, y, counts, optimizer='adam')
    with pytest.raises(ValueError, match='weight_decay'): fit_marc(eta, wn, y, counts, weight_decay=-1.0)
    with pytest.raises(ValueError, match='NaN'): fit_marc(eta.masked_fill(eta > 2, float('nan')), wn, y, counts)
    with pytest.raises(ValueError, match='backbone'): marc_stage2(nn.Linear(3, 3), [], counts)
    with pytest.raises(ValueError, match='weight'): MARC(nn.ReLU())
    with pytest.raises(ValueError, match='length'): marc_stage2(_Net(), iter([]), [1, 1, 1])


def test_marc_weight_norms_of_a_scaled_cosine_head_are_its_scale():
    "A scaled cosine head's effective weight rows have norm s: MARC's beta term uses s, as the engine's post-hoc path does (one rule)."
    from margin_notes.models import ScaledCosineHead, head_weight_norms
    h = ScaledCosineHead(4, 3, 30.0)
    with torch.no_grad(): h.cos.weight.mul_(2 / h.cos.weight.norm(dim=1, keepdim=True))   # raw rows of norm 2
    assert torch.equal(MARC(h).weight_norms(), torch.full((3,), 30.0)) and torch.equal(head_weight_norms(h), MARC(h).weight_norms())
    lin = nn.Linear(4, 3)
    assert torch.allclose(MARC(lin).weight_norms(), lin.weight.detach().norm(dim=1))


def test_marc_stage2_refuses_a_device_the_model_is_not_on():
    class Net(nn.Module):
        def __init__(self): super().__init__(); self.backbone, self.head = nn.Linear(3, 4), nn.Linear(4, 3)
        def forward(self, x): return self.head(self.backbone(x))
    data = [(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))]
    net = Net()
    with pytest.raises(ValueError, match="not the model's device"): marc_stage2(net, data, [2, 1, 1], epochs=1, device='meta')
    assert next(net.head.parameters()).device.type == 'cpu'   # nothing of the caller's model was moved
    assert marc_stage2(net, data, [2, 1, 1], epochs=1, device='cpu').iterations == 1


@pytest.mark.parametrize('kw', [dict(optimizer='sgd', epochs=0), dict(max_iter=0), dict(optimizer='sgd', batch_size=0)])
def test_fit_marc_refuses_a_fit_that_would_not_fit(kw):
    "Zero epochs or iterations would report the unfitted identity calibration as MARC."
    z, y = torch.randn(12, 3), torch.tensor([0, 1, 2] * 4)
    with pytest.raises(ValueError, match='must be a positive integer'): fit_marc(z, torch.ones(3), y, [6, 4, 2], **kw)
