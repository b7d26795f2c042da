"""Data-parallel training on the CPU with gloo: 2 processes must reproduce the 1-process step on the same global batch.

Checks (the data-parallel requirement of chapter 21_engine): MR²'s EMA statistics (all-reduced batch sums), its margins, the CE and
MR² margin-CE terms, and the weights after an SGD step through DistributedDataParallel; then the engine's `fit` under
2 processes against `fit` in 1 process."""
import os, socket, tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def _setup(rank, port):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS='1', MARGIN_NOTES_NO_PROGRESS='1')
    torch.set_num_threads(1)
    dist.init_process_group('gloo', rank=rank, world_size=WORLD)


def _step(lam, x, y, rank=0, world=1):
    "One SGD step of an MLP with MR² on this process's shard of the global batch; returns what to compare."
    from margin_notes.engine import MLPClassifier
    from margin_notes.loop import FeatOut as _FeatOut
    from margin_notes.mr2 import MR2Loss
    torch.manual_seed(0)
    model = MLPClassifier(x.shape[1], 5, hidden=16, feature_dim=8)
    loss_fn = MR2Loss(5, lam=lam, momentum=0.9)
    fwd = _FeatOut(model)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        fwd = DDP(fwd)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    loc = len(y) // world
    xs, ys = x[rank * loc:(rank + 1) * loc], y[rank * loc:(rank + 1) * loc]
    out = {}
    for it in range(2):   # two steps: the second uses EMA statistics updated twice
        feats, logits = fwd(xs)
        loss = loss_fn(logits, ys, features=feats)
        opt.zero_grad(); loss.backward(); opt.step()
        terms = torch.stack([loss.detach(), loss_fn.last['ce'], torch.nn.functional.cross_entropy(logits.detach(), ys)])
        if world > 1:
            dist.all_reduce(terms); terms /= world   # mean of equal-sized shard means = global mean
        out[f'terms{it}'] = terms
        out[f'stats{it}'] = torch.stack([loss_fn.stats.mean_norm_sq, loss_fn.stats.spread, loss_fn.gammas().detach()]).clone()
    out.update(mean_norm_sq=loss_fn.stats.mean_norm_sq.clone(), spread=loss_fn.stats.spread.clone(),
               gammas=loss_fn.gammas().detach().clone(), **{f'w.{k}': v.detach().clone() for k, v in model.state_dict().items()})
    return out


LAMS = (0.0, 0.1)

def _fit_cfg():
    from margin_notes.presets import get_config
    # MLP on tiny synthetic images (8x8, long-tailed): the same engine path as CIFAR, without scikit-learn or a ResNet
    return get_config('digits-lt-mr2', ['dataset=synthetic-cifar10', 'imbalance_factor=10', 'data_kwargs={n_max: 40, test_per_class: 4, size: 8}',
                                        'augment=crop-flip', 'epochs=1', 'batch_size=16', 'loss_kwargs.lam=0.0',
                                        'model_kwargs={hidden: 16, feature_dim: 8}', 'progress=false', 'device=cpu'])


def _worker(rank, port, x, y, path, fit_out):
    "Everything the 2-process side computes, in one spawn (process start-up dominates the run time)."
    _setup(rank, port)
    try:
        res = {lam: _step(lam, x, y, rank, WORLD) for lam in LAMS}
        if rank == 0: torch.save(res, path)
        from margin_notes.engine import fit
        fit(_fit_cfg(), fit_out, verbose=False)
    finally: dist.destroy_process_group()


@pytest.fixture(scope='module')
def two_proc(tmp_path_factory):
    d = tmp_path_factory.mktemp('ddp')
    x, y = _global_batch()
    mp.spawn(_worker, args=(_free_port(), x, y, str(d / 'steps.pt'), str(d / 'two')), nprocs=WORLD, join=True)
    return d


def _global_batch():
    g = torch.Generator().manual_seed(1)
    y = torch.tensor([0, 0, 1, 2, 3, 3, 4, 1, 0, 2, 2, 4])   # class 3 only in the first shard, 4 split across shards
    x = torch.randn(12, 6, generator=g) + y[:, None].float()
    return x, y


def test_two_processes_match_one_on_the_same_global_batch(two_proc):
    x, y = _global_batch()
    res = torch.load(two_proc / 'steps.pt')
    for lam in LAMS:
        ref, got = _step(lam, x, y), res[lam]
        # step 0: EMA statistics, margins, CE and MR²'s margin-CE term equal for any lam. With lam > 0 the
        # representation term uses in-batch positives per process (chapter 13_mr2): total loss and weights then differ,
        # so later steps are compared only for lam = 0.
        steps = (0, 1) if lam == 0 else (0,)
        for it in steps:
            torch.testing.assert_close(got[f'stats{it}'], ref[f'stats{it}'], atol=1e-6, rtol=1e-6, msg=lambda m: f'lam {lam} stats step {it}: {m}')
            sl = slice(0, 3) if lam == 0 else slice(1, 3)
            torch.testing.assert_close(got[f'terms{it}'][sl], ref[f'terms{it}'][sl], atol=1e-6, rtol=1e-6, msg=lambda m: f'lam {lam} loss step {it}: {m}')
        if lam == 0:
            for k in ref:
                if k.startswith('w.'): torch.testing.assert_close(got[k], ref[k], atol=1e-6, rtol=1e-5, msg=lambda m: f'{k}: {m}')
        else:
            assert not torch.allclose(got['terms0'][0], ref['terms0'][0], atol=1e-6)   # the rep term is per process


def test_unsynced_statistics_would_differ():
    "Control: per-process statistics (no all-reduce) differ from the global ones, so the test above can fail."
    from margin_notes.stats import ClassStats
    x, y = _global_batch()
    a, b = ClassStats(5), ClassStats(5)
    a.update(x, y); b.update(x[:6], y[:6])
    assert not torch.allclose(a.mean_norm_sq, b.mean_norm_sq)


def test_fit_under_two_processes_equals_one_process(two_proc, tmp_path):
    from margin_notes.engine import fit
    fit(_fit_cfg(), tmp_path / 'one', verbose=False)
    a = torch.load(tmp_path / 'one' / 'checkpoint.pt', weights_only=False)
    b = torch.load(two_proc / 'two' / 'checkpoint.pt', weights_only=False)
    for k in a['model']: torch.testing.assert_close(b['model'][k], a['model'][k], atol=1e-5, rtol=1e-4, msg=lambda m: f'{k}: {m}')
    for k in a['loss']: torch.testing.assert_close(b['loss'][k], a['loss'][k], atol=1e-5, rtol=1e-4, msg=lambda m: f'{k}: {m}')
    import json
    r = json.loads((two_proc / 'two' / 'results.json').read_text())
    assert r['world_size'] == 2
    assert abs(a['rows'][0]['train_loss'] - b['rows'][0]['train_loss']) < 1e-5   # logged loss = global mean
