"""Every loss under the engine's bf16 training step: the backbone runs under bf16 autocast, the loss in float32 on
`outputs.float()` and `features.float()` (as `engine.train_epochs` calls it). Against the same step in fp32, the loss
value stays within 2 % and the gradient of every parameter tensor points the same way: cosine > 0.99 for the head's tensors, > 0.9
for each convolution's, > 0.8 for the batch-norm scales and shifts (bf16 keeps about three significant digits, and a
batch-norm gradient is a sum over every activation of its channel, where rounding errors add up; measured minimum
0.82), and
the losses' statistics (MR²'s EMA, DBM/LDAM margins, LWR's head weights) stay float32."""
import copy

import pytest
import torch
import torch.nn as nn

from margin_notes.data import cifar_lt_counts
from margin_notes.models import resnet32
from margin_notes.registry import METHODS, build_method_loss

K = 10
COUNTS = cifar_lt_counts(K, 100, n_max=500, min_count=1)
TRAINED = [n for n, m in METHODS.items() if m.posthoc is None]


def _model(head: str):
    torch.manual_seed(0)
    return resnet32(num_classes=K, head=head)


def _step(model, loss_fn, x, y, bf16: bool):
    model.zero_grad(set_to_none=True)
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
        f = model.backbone(x); out = model.head(f)
    loss = loss_fn(out.float(), y, features=f.float())
    loss.backward()
    return loss.detach(), {n: p.grad.detach().flatten().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize('name', TRAINED)
def test_loss_under_bf16_autocast_matches_fp32(name):
    head = METHODS[name].head or 'linear'
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 3, 16, 16, generator=g)   # small images: the same layers, a fraction of the time
    y = torch.cat([torch.arange(K), torch.randint(0, K, (32 - K,), generator=g)])
    vals, grads, losses = {}, {}, {}
    for bf16 in (False, True):
        model = _model(head)
        loss_fn = build_method_loss(name, COUNTS, head=model.head)
        if hasattr(loss_fn, 'set_progress'): loss_fn.set_progress(0.5)
        _step(model, loss_fn, x, y, bf16)            # a first step fills statistics (MR²'s EMA) the same way
        vals[bf16], grads[bf16] = _step(model, loss_fn, x, y, bf16)
        losses[bf16] = loss_fn
    assert torch.isfinite(vals[True]) and all(torch.isfinite(v).all() for v in grads[True].values())
    assert abs(vals[True] - vals[False]) <= 0.02 * abs(vals[False]) + 1e-4, (name, vals)
    assert grads[True].keys() == grads[False].keys() and any(n.startswith('head') for n in grads[False])
    # tensor by tensor (one cosine over all 0.46 M parameters would hide a wrong head or small layer); a tensor whose
    # fp32 gradient is negligible against the largest one (all-but-zero, so its direction is rounding) is skipped
    big = max(float(v.norm()) for v in grads[False].values())
    checked = 0
    for n, g32 in grads[False].items():
        if float(g32.norm()) < 1e-4 * big: continue
        cos = float(nn.functional.cosine_similarity(grads[True][n], g32, dim=0)); checked += 1
        assert cos > (0.99 if n.startswith('head') else 0.9 if 'conv' in n else 0.8), (name, n, cos)
    assert checked >= len(grads[False]) // 2, (name, checked, len(grads[False]))
    for k, b in losses[True].state_dict().items():
        if torch.is_tensor(b) and b.is_floating_point(): assert b.dtype in (torch.float32, torch.float64), (name, k, b.dtype)
