#!/usr/bin/env python
"""Benchmark the losses of margin_notes (issue 4).

Measures, in one run on the machine it runs on:

1. forward + backward time of each loss alone at the ResNet-32 / CIFAR-100 shapes (B=128, K=100, D=64),
   as a ratio to cross-entropy;
2. a full ResNet-32 CIFAR training step (batch 128, K=100: forward, loss, backward, SGD step) with each loss,
   as a ratio to the same step with cross-entropy;
3. MR2Loss against a straightforward per-class-loop implementation of the same math (the structure of the
   authors' released code: Python loops over all K classes with boolean-mask indexing) at
   (B, K, D) = (128, 100, 64), (128, 100, 640), (512, 1000, 512), with the largest difference of the loss
   values and of the feature gradients;
4. with --device cuda, one training step per loss under torch.cuda.set_sync_debug_mode("error").

Timings use torch.utils.benchmark and are *interleaved*: every round times each loss once, in a rotated
order, so that slow drift of a shared machine hits every loss alike. Reported: the median over rounds and the
inter-quartile range. Results go to results/bench/losses-<device>.json (atomic write) and a table is printed.

    python benchmarks/losses.py                 # CPU, a few minutes on 2 cores
    python benchmarks/losses.py --device cuda   # GPU timings + sync-debug check
    python benchmarks/losses.py --quick         # tiny sizes, seconds (used by the test suite)
"""
from __future__ import annotations

import argparse
import datetime as _dt
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils import benchmark

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from margin_notes.core import atomic_write_json, cpu_model  # noqa: E402
from margin_notes.data import cifar_lt_counts  # noqa: E402
from margin_notes.models import CosineClassifier  # noqa: E402
from margin_notes.marc import MARCLoss  # noqa: E402
from margin_notes.models import resnet32  # noqa: E402
from margin_notes.mr2 import MR2Loss, naive_mr2_loss  # noqa: E402
from margin_notes.registry import METHODS, build_method_loss  # noqa: E402

REF = 'erm'   # the reference every ratio is taken against: the registry's cross-entropy


# ----------------------------------------------------------------------------------------------------------
# models and losses: the library's own, every training method of the registry (chapter 18); an import or build
# error is an error: no method is silently dropped
# ----------------------------------------------------------------------------------------------------------

def make_backbone():
    """The library's ResNet-32 backbone (chapter 06)."""
    m = resnet32(num_classes=10)
    return m.backbone, 'margin_notes.models.resnet32'


def cosine_head(d, k):
    return CosineClassifier(d, k)


def lt_counts(K, imbalance=100, nmax=500):
    """The book's long-tail profile (chapter 05_data), with a floor of 1 image for small K."""
    return cifar_lt_counts(K, imbalance, n_max=nmax, min_count=1)


def make_losses(K, counts, linear_head, cos_head):
    """name -> (loss module, 'linear' | 'cosine' head), one row per registry method that trains with its own loss
    (post-hoc methods train with ERM's loss), plus MARC's stage-2 loss and MR2 with lam=0. ERM first (the reference)."""
    L = {}
    for name, m in METHODS.items():
        if m.posthoc is not None:
            continue                             # trains with the ERM loss; its post-hoc step is not a training step
        head = cos_head if m.head == 'cosine' else linear_head
        L[name] = (build_method_loss(m, counts, head=head), m.head)
    assert next(iter(L)) == REF, 'the registry lists ERM first'
    L['mr2 (lam=0)'] = (build_method_loss('mr2', counts, loss_kwargs={'lam': 0.0}), 'linear')
    L['marc (stage-2 loss)'] = (MARCLoss(counts), 'linear')
    for loss, _ in L.values():
        if hasattr(loss, 'set_progress'):
            loss.set_progress(0.5)               # LWR: the trainer's job; a mid-run weight
    return L


def call_loss(loss, out, y, feats):
    return loss(out, y, features=feats)


# ----------------------------------------------------------------------------------------------------------
# MR2 in the structure of the released code: Python loops over classes with boolean masks
# ----------------------------------------------------------------------------------------------------------

class LoopMR2(nn.Module):
    """Same math as MR2Loss (paper variant, chapters 03 and 13) in the structure of the released code: per-class Python loops
    with boolean masks. A timing contender, not the reference: both are checked against `naive_mr2_loss`."""
    def __init__(self, K, mean_margin=1.0, lam=0.1, momentum=0.9):
        super().__init__()
        self.K, self.c, self.lam, self.rho = K, mean_margin, lam, momentum
        self.register_buffer('mu', torch.zeros(K)); self.register_buffer('sp', torch.zeros(K))
        self.register_buffer('init', torch.zeros(K, dtype=torch.bool))

    def forward(self, logits, targets, features):
        f = features.float()
        with torch.no_grad():
            fd = f.detach()
            for c in range(self.K):                       # statistics: one masked selection per class
                idx = targets == c
                if idx.sum() == 0:
                    continue
                fc = fd[idx]
                m = fc.mean(0)
                u = (m * m).sum()
                v = ((fc - m) ** 2).sum(1).mean()
                if self.init[c]:
                    self.mu[c] = self.rho * self.mu[c] + (1 - self.rho) * u
                    self.sp[c] = self.rho * self.sp[c] + (1 - self.rho) * v
                else:
                    self.mu[c], self.sp[c] = u, v
                    self.init[c] = True
            r = (self.mu + self.sp).clamp_min(0).pow(1 / 3).clamp_min(1e-12)
            seen = self.init
            gamma = torch.full_like(r, self.c)
            gamma[seen] = self.c * seen.sum() * r[seen] / r[seen].sum()
            sbar = self.sp[seen].mean()
        ce = F.cross_entropy(logits.float() / gamma[targets][:, None], targets)
        rep = logits.new_zeros((), dtype=torch.float32)
        for c in range(self.K):                           # representation term: one block per class
            idx = targets == c
            n = int(idx.sum())
            if n < 2:
                continue
            fc = f[idx]
            d = ((fc[:, None, :] - fc[None, :, :]) ** 2).sum(-1) - 2 * sbar
            d = d.masked_fill(torch.eye(n, dtype=torch.bool, device=d.device), float('-inf'))
            rep = rep + torch.logsumexp(torch.cat([d, d.new_zeros(n, 1)], 1), 1).sum()
        return ce + self.lam * rep / targets.shape[0]


# ----------------------------------------------------------------------------------------------------------
# timing helpers
# ----------------------------------------------------------------------------------------------------------

def _progress(msg):
    print(msg, file=sys.stderr, flush=True)


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def summarise(times):
    t = sorted(times)
    q = statistics.quantiles(t, n=4) if len(t) >= 2 else [t[0]] * 3
    return {'median_s': statistics.median(t), 'q1_s': q[0], 'q3_s': q[2], 'n': len(t)}


def interleaved(fns, rounds, min_run_time, device, threads):
    """Time every closure once per round, rotating the order; returns name -> [per-run seconds of each round]."""
    names = list(fns)
    times = {n: [] for n in names}
    for n in names:                                   # warm-up (first-call allocations, lazy init)
        fns[n](); _sync(device)
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            tm = benchmark.Timer(stmt='fn()', globals={'fn': fns[n]}, num_threads=threads)
            if min_run_time is None:
                m = tm.timeit(1)
            else:
                m = tm.blocked_autorange(min_run_time=min_run_time)
            times[n].append(list(m.times))
        _progress(f'  round {r + 1}/{rounds} done')
    return times


def machine_info(device):
    info = {'python': platform.python_version(), 'torch': torch.__version__, 'platform': platform.platform(),
            'processor': platform.processor() or platform.machine(), 'cpu_count': os.cpu_count(),
            'torch_threads': torch.get_num_threads(), 'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS'),
            'device': str(device), 'date_utc': _dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}
    if (m := cpu_model()) is not None: info['cpu_model'] = m
    try:
        info['load_avg_at_start'] = os.getloadavg()
    except OSError:
        pass
    if device.type == 'cuda':
        info['gpu'] = torch.cuda.get_device_name(device)
        info['cuda'] = torch.version.cuda
    return info


# ----------------------------------------------------------------------------------------------------------
# the three measurements
# ----------------------------------------------------------------------------------------------------------

def bench_loss_only(cfg, device, threads):
    B, K, D = cfg['B'], cfg['K'], cfg['D']
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, K, (B,), generator=g).to(device)
    counts = lt_counts(K)
    lin, cos = nn.Linear(D, K).to(device), cosine_head(D, K).to(device)
    losses = make_losses(K, counts, lin, cos)
    fns = {}
    for name, (loss, head) in losses.items():
        loss.to(device).train()
        z0 = torch.randn(B, K, generator=g).to(device)
        z0 = torch.tanh(z0) if head == 'cosine' else z0 * 3
        f0 = torch.relu(torch.randn(B, D, generator=g)).to(device)
        z, f = z0.clone().requires_grad_(), f0.clone().requires_grad_()

        def fn(loss=loss, z=z, f=f):
            call_loss(loss, z, y, f).backward()
        fns[name] = fn
    times = interleaved(fns, cfg['rounds_loss'], cfg['min_run_time_loss'], device, threads)
    return _rows(times)


def bench_train_step(cfg, device, threads):
    B, K, H = cfg['B'], cfg['K'], cfg['img']
    torch.manual_seed(0)
    backbone, arch = make_backbone()
    backbone = backbone.to(device).train()
    D = getattr(backbone, 'feature_dim', 64)
    lin, cos = nn.Linear(D, K).to(device), cosine_head(D, K).to(device)
    losses = make_losses(K, lt_counts(K), lin, cos)
    params = list(backbone.parameters()) + list(lin.parameters()) + list(cos.parameters())
    # a tiny learning rate: the same computation as real training, without drifting to other regimes
    opt = torch.optim.SGD(params, lr=1e-5, momentum=0.9, weight_decay=2e-4)
    x = torch.randn(B, 3, H, H, device=device)
    y = torch.randint(0, K, (B,), device=device)
    fns = {}
    for name, (loss, head) in losses.items():
        loss.to(device).train()
        hd = cos if head == 'cosine' else lin

        def step(loss=loss, hd=hd):
            opt.zero_grad(set_to_none=True)
            feats = backbone(x)
            call_loss(loss, hd(feats), y, feats).backward()
            opt.step()
        fns[name] = step
    times = interleaved(fns, cfg['rounds_step'], None, device, threads)
    return _rows(times), arch, fns


def _flat(rounds):
    return [x for r in rounds for x in r]


def _rows(times):
    """Per loss: median and IQR of all runs, and the ratio to CE as the median over rounds of the per-round
    ratio (a paired comparison: both were timed within the same round, so slow drift cancels)."""
    ce = [statistics.median(r) for r in times[REF]]
    rows = []
    for name, t in times.items():
        s = summarise(_flat(t))
        ratios = [statistics.median(r) / c for r, c in zip(t, ce)]
        ratio = statistics.median(ratios)
        s.update(name=name, ratio_to_ce=ratio, overhead_pct=100 * (ratio - 1),
                 ratio_of_medians=s['median_s'] / statistics.median(_flat(times[REF])),
                 per_round_ratios=ratios)
        rows.append(s)
    return rows


def bench_mr2_vs_loop(cfg, device, threads):
    rows = []
    for (B, K, D) in cfg['mr2_shapes']:
        g = torch.Generator().manual_seed(1)
        y = torch.randint(0, K, (B,), generator=g).to(device)
        z0 = (torch.randn(B, K, generator=g) * 3).to(device)
        f0 = (torch.relu(torch.randn(B, D, generator=g)) / math.sqrt(D)).to(device)
        vec, loop = MR2Loss(K, lam=0.1, variant='paper').to(device), LoopMR2(K, lam=0.1).to(device)
        # equality check on a fresh pair: loss value and gradient with respect to the features
        outs = {}
        for name, mod in (('vec', vec), ('loop', loop)):
            z, f = z0.clone().requires_grad_(), f0.clone().requires_grad_()
            val = mod(z, y, f)
            gz, gf = torch.autograd.grad(val, (z, f))
            outs[name] = (val.detach(), gz, gf)
        diff = (outs['vec'][0] - outs['loop'][0]).abs().item()
        gdiff = max((outs['vec'][1] - outs['loop'][1]).abs().max().item(),
                    (outs['vec'][2] - outs['loop'][2]).abs().max().item())
        state_same = bool(torch.allclose(vec.stats.variability, loop.mu + loop.sp, rtol=1e-4, atol=1e-6))
        # both against the one float64 reference (chapter 13), on the first rows (the reference is a slow loop)
        n = min(B, 48)
        sub = (z0[:n].double().cpu(), y[:n].cpu(), f0[:n].double().cpu())
        ref = naive_mr2_loss([sub], K, 1.0, 0.1, 0.9)[0]
        naive_diff = max(abs(MR2Loss(K, lam=0.1, variant='paper')(*(t.float() if t.is_floating_point() else t for t in sub)).item() - ref),
                         abs(LoopMR2(K, lam=0.1)(*(t.float() if t.is_floating_point() else t for t in sub)).item() - ref))
        fns = {}
        for name, mod in (('vectorised', vec), ('loop', loop)):
            z, f = z0.clone().requires_grad_(), f0.clone().requires_grad_()

            def fn(mod=mod, z=z, f=f):
                mod(z, y, f).backward()
            fns[name] = fn
        times = interleaved(fns, cfg['rounds_mr2'], cfg['min_run_time_mr2'], device, threads)
        sv, sl = summarise(_flat(times['vectorised'])), summarise(_flat(times['loop']))
        _progress(f'  MR2 vs loop at {(B, K, D)}: {sl["median_s"] / sv["median_s"]:.1f}x')
        rows.append({'B': B, 'K': K, 'D': D, 'vectorised': sv, 'loop': sl,
                     'speedup': sl['median_s'] / sv['median_s'], 'max_abs_diff': diff,
                     'max_abs_grad_diff': gdiff, 'ema_state_equal': state_same, 'naive_abs_diff': naive_diff})
    return rows


def sync_debug_check(step_fns):
    """Run each training step once under set_sync_debug_mode('error'); returns name -> 'ok' or the error."""
    out = {}
    for name, fn in step_fns.items():
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode('error')
        try:
            fn(); fn()
            out[name] = 'ok'
        except RuntimeError as e:   # what set_sync_debug_mode('error') raises on a host sync: the measured result
            out[name] = f'{type(e).__name__}: {str(e).splitlines()[0][:200]}'
        finally:
            torch.cuda.set_sync_debug_mode('default')
        torch.cuda.synchronize()
    return out


# ----------------------------------------------------------------------------------------------------------

def fmt_table(res):
    lines = []
    m = res['machine']
    lines.append(f"device: {m['device']} ({m.get('gpu') or m.get('cpu_model', m['processor'])}), torch {m['torch']}, "
                 f"{m['torch_threads']} threads; medians over interleaved rounds [IQR]; x CE = median of per-round paired ratios")
    step = {r['name']: r for r in res['train_step']}
    lines.append(f"\n{'loss':26s} {'fwd+bwd (us)':>14s} {'x CE':>6s} | {'train step (ms)':>16s} {'x CE':>6s} "
                 f"{'overhead':>9s}")
    for r in res['loss_fwd_bwd']:
        s = step.get(r['name'])
        st = (f"{1e3 * s['median_s']:8.1f} [{1e3 * (s['q3_s'] - s['q1_s']):5.1f}] {s['ratio_to_ce']:6.3f} "
              f"{s['overhead_pct']:+8.1f}%") if s else ''
        lines.append(f"{r['name']:26s} {1e6 * r['median_s']:8.0f} [{1e6 * (r['q3_s'] - r['q1_s']):4.0f}] "
                     f"{r['ratio_to_ce']:6.2f} | {st}")
    lines.append(f"\nMR2 forward+backward, vectorised vs per-class loop (released-code structure)")
    lines.append(f"{'(B, K, D)':>18s} {'vectorised (ms)':>16s} {'loop (ms)':>11s} {'speed-up':>9s} "
                 f"{'|dloss|':>9s} {'|dgrad|':>9s} {'EMA equal':>9s}")
    for r in res['mr2_vs_loop']:
        lines.append(f"{str((r['B'], r['K'], r['D'])):>18s} {1e3 * r['vectorised']['median_s']:16.2f} "
                     f"{1e3 * r['loop']['median_s']:11.2f} {r['speedup']:8.1f}x {r['max_abs_diff']:9.1e} "
                     f"{r['max_abs_grad_diff']:9.1e} {str(r['ema_state_equal']):>9s}")
    if res.get('sync_debug'):
        lines.append('\nCUDA training step under set_sync_debug_mode("error"):')
        for k, v in res['sync_debug'].items():
            lines.append(f'  {k:26s} {v}')
    return '\n'.join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    ap.add_argument('--quick', action='store_true', help='tiny sizes (seconds), for the test suite')
    ap.add_argument('--out', default=None, help='JSON path (default results/bench/losses-<device>.json)')
    ap.add_argument('--rounds', type=int, default=None, help='interleaved rounds for the training step')
    args = ap.parse_args(argv)
    if args.device == 'cuda' and not torch.cuda.is_available():
        ap.error('--device cuda but CUDA is not available')
    device = torch.device(args.device)
    threads = torch.get_num_threads()
    if args.quick:
        cfg = dict(B=8, K=10, D=64, img=8, rounds_loss=1, min_run_time_loss=0.002, rounds_step=1,
                   mr2_shapes=[(16, 10, 8)], rounds_mr2=1, min_run_time_mr2=0.002)
    else:
        cfg = dict(B=128, K=100, D=64, img=32, rounds_loss=5, min_run_time_loss=0.1, rounds_step=args.rounds or 6,
                   mr2_shapes=[(128, 100, 64), (128, 100, 640), (512, 1000, 512)], rounds_mr2=5,
                   min_run_time_mr2=0.2)
    t0 = time.time()
    res = {'machine': machine_info(device), 'config': {k: v for k, v in cfg.items()}, 'quick': args.quick}
    _progress('loss forward+backward ...')
    res['loss_fwd_bwd'] = bench_loss_only(cfg, device, threads)
    _progress('ResNet-32 training step ...')
    res['train_step'], res['model'], step_fns = bench_train_step(cfg, device, threads)
    _progress('MR2 vectorised vs per-class loop ...')
    res['mr2_vs_loop'] = bench_mr2_vs_loop(cfg, device, threads)
    if device.type == 'cuda':
        res['sync_debug'] = sync_debug_check(step_fns)
    res['wall_s'] = time.time() - t0
    targets = {'train_step_overhead_le_5pct': all(r['overhead_pct'] <= 5.0 for r in res['train_step']),
               'mr2_speedup_ge_5x': all(r['speedup'] >= 5.0 for r in res['mr2_vs_loop'])}
    if device.type == 'cuda':
        targets['no_host_sync'] = all(v == 'ok' for v in res['sync_debug'].values())
    res['targets_met'] = targets
    out = Path(args.out) if args.out else ROOT / 'results' / 'bench' / f'losses-{device.type}.json'
    atomic_write_json(out, res)
    print(fmt_table(res))
    print(f"\nmodel: {res['model']}; wall {res['wall_s']:.0f} s; targets: {targets}; written {out}")
    return res


if __name__ == '__main__':
    main()
