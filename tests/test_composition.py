"Every documented combination of losses trains a tiny model for a few steps and its loss goes down."
import pytest
import torch
import torch.nn as nn

from margin_notes.dbm import DBMLoss, DBMComposite
from margin_notes.models import CosineClassifier
import functools as _ft
DBMLoss = _ft.partial(DBMLoss, base='ce')   # these tests pin the form they check; the default is tested in test_defaults
from margin_notes.lwr import with_lwr, LWRLoss
from margin_notes.marc import MARC, MARCLoss

baselines = pytest.importorskip('margin_notes.baselines')
mr2 = pytest.importorskip('margin_notes.mr2')

K, D_IN, D = 4, 10, 8
COUNTS = [40, 20, 10, 5]


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.cat([torch.full((n,), k) for k, n in enumerate(COUNTS)])
    means = 1.5 * torch.randn(K, D_IN, generator=g)
    x = means[y] + torch.randn(len(y), D_IN, generator=g)
    return x, y


def _model(head_kind, seed=0):
    torch.manual_seed(seed)
    backbone = nn.Linear(D_IN, D)
    head = nn.Linear(D, K) if head_kind == 'linear' else CosineClassifier(D, K)
    return backbone, head


def _losses(name, head):
    B = baselines
    if name == 'bs+lwr': return 'linear', with_lwr(B.BalancedSoftmaxLoss(COUNTS), head, schedule='constant', lwr_weight=0.1)
    if name == 'ce+lwr': return 'linear', with_lwr(B.CELoss(), head, schedule='constant', lwr_weight=0.1)
    if name == 'la+lwr': return 'linear', with_lwr(B.LogitAdjustedLoss(COUNTS), head, schedule='constant', lwr_weight=0.1)
    if name == 'mr2+lwr': return 'linear', with_lwr(mr2.MR2Loss(K, lam=0.01), head, schedule='constant', lwr_weight=0.1)
    if name == 'bs+lwr(proj)': return 'linear', with_lwr(B.BalancedSoftmaxLoss(COUNTS), head, schedule='constant',
                                                          lwr_weight=0.1, proj=True)
    if name == 'dbm-ce': return 'cosine', DBMLoss(COUNTS, scale=16.0)
    if name == 'dbm-bs': return 'cosine', DBMLoss(COUNTS, scale=16.0, base='bs')
    if name == 'dbm-drw':
        loss = DBMLoss(COUNTS, scale=16.0); loss.set_class_weight(baselines.drw_weights(COUNTS)); return 'cosine', loss
    if name == 'dbm+mr2-stats': return 'cosine', DBMComposite(mr2.MR2Loss(K, lam=0.01), COUNTS, scale=16.0)
    if name == 'dbm-bs+lwr': return 'cosine', with_lwr(DBMLoss(COUNTS, scale=16.0, base='bs'), head, schedule='constant',
                                                        lwr_weight=0.1)
    if name == 'ldam+lwr': return 'cosine', with_lwr(B.LDAMLoss(COUNTS, scale=16.0), head, schedule='constant', lwr_weight=0.1)
    raise KeyError(name)


COMBOS = ['bs+lwr', 'ce+lwr', 'la+lwr', 'mr2+lwr', 'bs+lwr(proj)', 'dbm-ce', 'dbm-bs', 'dbm-drw', 'dbm+mr2-stats',
          'dbm-bs+lwr', 'ldam+lwr']
HEAD_KIND = {'bs+lwr': 'linear', 'ce+lwr': 'linear', 'la+lwr': 'linear', 'mr2+lwr': 'linear', 'bs+lwr(proj)': 'linear'}


@pytest.mark.parametrize('name', COMBOS)
def test_combination_trains(name):
    x, y = _data()
    backbone, head = _model(HEAD_KIND.get(name, 'cosine'))
    kind, loss_fn = _losses(name, head)
    assert kind == HEAD_KIND.get(name, 'cosine')
    params = [*backbone.parameters(), *head.parameters()]
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    history = []
    for _ in range(20):
        opt.zero_grad()
        feats = backbone(x)                       # raw features: MR²'s statistics are taken on these
        loss = loss_fn(head(feats), y, features=feats)
        assert torch.isfinite(loss)
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
        opt.step(); history.append(loss.item())
    assert history[-1] < history[0], history
    assert sum(history[-3:]) / 3 < sum(history[:3]) / 3
    if isinstance(loss_fn, LWRLoss):
        assert loss_fn.last['lwr'].item() > 0 and 'base' in loss_fn.last


def test_lwr_schedule_reaches_zero_in_a_training_loop():
    x, y = _data()
    backbone, head = _model('linear')
    loss_fn = with_lwr(baselines.BalancedSoftmaxLoss(COUNTS), head)
    opt = torch.optim.SGD([*backbone.parameters(), *head.parameters()], lr=0.05)
    steps = 10
    for step in range(steps + 1):
        loss_fn.set_progress(step / steps)
        opt.zero_grad(); f = backbone(x); l = loss_fn(head(f), y, features=f); l.backward(); opt.step()
    assert loss_fn.last['lwr_lambda'].item() == 0.0
    torch.testing.assert_close(l.detach(), loss_fn.last['base'])


def test_marc_on_top_of_a_dbm_trained_cosine_head():
    x, y = _data()
    backbone, head = _model('cosine')
    opt = torch.optim.SGD([*backbone.parameters(), *head.parameters()], lr=0.05, momentum=0.9)
    dbm = DBMLoss(COUNTS, scale=16.0)
    for _ in range(20):
        opt.zero_grad(); dbm(head(backbone(x)), y).backward(); opt.step()
    marc = MARC(head, scale=16.0)
    crit = MARCLoss(COUNTS)
    opt2 = torch.optim.SGD(marc.calibration_parameters(), lr=0.05, momentum=0.9)
    with torch.no_grad(): feats = backbone(x)
    w0 = head.weight.detach().clone()
    history = []
    for _ in range(20):
        opt2.zero_grad(); l = crit(marc(feats), y); l.backward(); opt2.step(); history.append(l.item())
    assert history[-1] < history[0]
    torch.testing.assert_close(head.weight.detach(), w0)      # only omega, beta were trained
