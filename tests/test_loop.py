"Tests for margin_notes.loop: the one training loop against a naive hand-written loop, DRW and LWR hooks, resume by epochs, outputs."
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from margin_notes.core import ClassWeighted
from margin_notes.loop import FeatOut, collect_outputs, native_bf16, train_epochs


class _CE(ClassWeighted, nn.Module):
    def __init__(self): super().__init__(); self.register_buffer('weight', None); self.progress = []
    def set_progress(self, t): self.progress.append(t)
    def forward(self, logits, y, features=None): return F.cross_entropy(logits, y, weight=self.weight)


class _Net(nn.Module):
    def __init__(self, d=6, k=3):
        super().__init__(); self.backbone = nn.Sequential(nn.Linear(d, 8), nn.ReLU()); self.head = nn.Linear(8, k)
    def forward(self, x): return self.head(self.backbone(x))


def _data(n=48, d=6, k=3, bs=12):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, d, generator=g), torch.randint(0, k, (n,), generator=g)
    return [(x[i:i + bs], y[i:i + bs]) for i in range(0, n, bs)]


def _naive(model, batches, epochs, lr_fn, drw_step=None, drw_w=None):
    "The same training written out by hand in plain PyTorch: SGD, per-step lr, class weights from drw_step."
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    spe = len(batches)
    for e in range(epochs):
        for i, (x, y) in enumerate(batches):
            s = e * spe + i
            for g in opt.param_groups: g['lr'] = lr_fn(s)
            w = drw_w if drw_step is not None and s >= drw_step else None
            loss = F.cross_entropy(model(x), y, weight=w)
            opt.zero_grad(); loss.backward(); opt.step()
    return model


def test_train_epochs_equals_a_hand_written_loop():
    torch.manual_seed(1); a = _Net(); b = copy.deepcopy(a)
    batches, lr_fn, w = _data(), (lambda s: 0.05 + 0.01 * (s % 3)), torch.tensor([1., 3., 5.])
    train_epochs(a, _CE(), batches, torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9), lr_fn, epochs=3, drw_step=6, drw_weights=w)
    _naive(b, batches, 3, lr_fn, drw_step=6, drw_w=w)
    for p, q in zip(a.parameters(), b.parameters()): torch.testing.assert_close(p, q)


def test_resumed_epochs_equal_one_call():
    torch.manual_seed(2); a = _Net(); b = copy.deepcopy(a)
    batches, lr_fn = _data(), (lambda s: 0.1 / (1 + s))
    oa, ob = torch.optim.SGD(a.parameters(), lr=0.1), torch.optim.SGD(b.parameters(), lr=0.1)
    ra = train_epochs(a, _CE(), batches, oa, lr_fn, epochs=4)
    rb = train_epochs(b, _CE(), batches, ob, lr_fn, epochs=4, end=2) + train_epochs(b, _CE(), batches, ob, lr_fn, epochs=4, start=2)
    for p, q in zip(a.parameters(), b.parameters()): torch.testing.assert_close(p, q)
    assert [r['epoch'] for r in rb] == [1, 2, 3, 4] and [r['lr'] for r in ra] == [r['lr'] for r in rb]
    assert rb[-1]['train_loss'] == pytest.approx(ra[-1]['train_loss'])


def test_progress_is_the_fraction_of_the_run_and_rows_hold_the_mean_loss():
    torch.manual_seed(3); m, loss = _Net(), _CE(); batches = _data()
    rows = train_epochs(m, loss, batches, torch.optim.SGD(m.parameters(), lr=0.0), lambda s: 0.0, epochs=2)
    assert loss.progress == [s / 8 for s in range(8)]
    with torch.no_grad(): want = sum(F.cross_entropy(m(x), y).item() for x, y in batches) / len(batches)   # lr 0: the weights never move
    assert rows[0]['train_loss'] == pytest.approx(want, rel=1e-5) and rows[1]['train_loss'] == pytest.approx(want, rel=1e-5)


def test_empty_batches_are_one_clear_error():
    m = _Net()
    with pytest.raises(ValueError, match='no training batches'): train_epochs(m, _CE(), [], torch.optim.SGD(m.parameters(), lr=0.1), lambda s: 0.1, 1)


def test_collect_outputs_in_eval_mode_and_restores_training():
    m = nn.Sequential(nn.Linear(6, 4), nn.Dropout(0.9)); m.train()
    batches = _data(k=4)
    out, y = collect_outputs(m, batches)
    assert m.training and out.dtype == torch.float32 and out.shape == (48, 4)
    torch.testing.assert_close(out, m.eval()(torch.cat([x for x, _ in batches])))   # dropout off: deterministic
    assert torch.equal(y, torch.cat([t for _, t in batches]))


def test_featout_returns_features_and_outputs():
    m = _Net(); x = torch.randn(5, 6)
    f, o = FeatOut(m)(x)
    torch.testing.assert_close(f, m.backbone(x)); torch.testing.assert_close(o, m(x))
    assert native_bf16('meta') is False
