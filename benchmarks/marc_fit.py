"""MARC stage 2 (issue 5): the paper's loop through a frozen ResNet-32 against the cached fit (L-BFGS / SGD).

CIFAR-100-LT IF 100 shapes (N = 10,847, K = 100, batch 512), random images: timing only. The loop is timed for a
few iterations and extrapolated to the release's effective 1,820 stage-2 iterations (chapter 15_marc); the cached fit
is timed in full. Prints the ratio and writes results/bench/marc-fit-<device>.json.

Usage: python benchmarks/marc_fit.py [--device cpu|cuda] [--loop-iters N]
"""
import argparse, json, math, os, platform, statistics, sys, time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from torch.utils.data import DataLoader, TensorDataset
from margin_notes.core import atomic_write_json
from margin_notes.data import cifar_lt_counts
from margin_notes.marc import fit_marc, marc_stage2
from margin_notes.models import resnet32


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    ap.add_argument('--loop-iters', type=int, default=None, help='loop iterations to time (default 3 on CPU, 40 on CUDA)')
    a = ap.parse_args()
    dev = torch.device(a.device)
    torch.manual_seed(0)
    K, B, sched_iters = 100, 512, 1820
    counts = [int(c) for c in cifar_lt_counts(K, 100)]
    N = sum(counts)
    y = torch.cat([torch.full((n,), k) for k, n in enumerate(counts)])
    X = torch.randn(N, 3, 32, 32)
    model = resnet32(K).to(dev).eval()
    loop_iters = a.loop_iters or (3 if dev.type == 'cpu' else 40)
    loader = DataLoader(TensorDataset(X[:B * loop_iters], y[:B * loop_iters]), batch_size=B, shuffle=False)
    fit = marc_stage2(model, loader, counts, epochs=1, device=dev)
    per_it = fit.seconds / fit.iterations
    t0 = time.perf_counter(); outs = []
    with torch.no_grad():
        for s in range(0, N, B): outs.append(model(X[s:s + B].to(dev)))
    if dev.type == 'cuda': torch.cuda.synchronize()
    t_cache = time.perf_counter() - t0
    eta, wn, yy = torch.cat(outs), model.head.weight.detach().norm(dim=1), y.to(dev)
    lb = [fit_marc(eta, wn, yy, counts) for _ in range(3)]
    sgd = fit_marc(eta, wn, yy, counts, optimizer='sgd', epochs=math.ceil(sched_iters / math.ceil(N / B)), batch_size=B)
    loop_total = per_it * sched_iters
    cached_total = t_cache + statistics.median(f.seconds for f in lb)
    res = dict(device=str(dev), torch=torch.__version__, threads=torch.get_num_threads(), host=platform.node(),
               load_average=os.getloadavg(), N=N, K=K, batch=B,
               loop_seconds_per_iteration=per_it, loop_iterations_timed=fit.iterations,
               loop_seconds_extrapolated=loop_total, schedule_iterations=sched_iters,
               cache_build_seconds=t_cache, lbfgs_seconds_median=statistics.median(f.seconds for f in lb),
               lbfgs_iterations=lb[0].iterations, cache_sgd_seconds=sgd.seconds, cache_sgd_iterations=sgd.iterations,
               speedup_cache_lbfgs_over_loop=loop_total / cached_total,
               note='random images, timing only; the loop time is extrapolated from loop_iterations_timed iterations')
    out = ROOT / 'results' / 'bench' / f'marc-fit-{dev.type}.json'
    atomic_write_json(out, res)
    print(f"stage-2 loop: {per_it:.2f} s/iteration -> {loop_total:.0f} s for {sched_iters} iterations (extrapolated)")
    print(f"cache: build {t_cache:.1f} s + L-BFGS {res['lbfgs_seconds_median']:.1f} s ({res['lbfgs_iterations']} it); "
          f"SGD on cache {sgd.seconds:.1f} s")
    print(f"cached L-BFGS fit is {res['speedup_cache_lbfgs_over_loop']:.0f}x faster than the loop; wrote {out}")


if __name__ == '__main__':
    main()
