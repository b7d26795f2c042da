"""ResNet-32 training speed on a CPU: fp32 against bf16 autocast + channels_last, and the engine against a bare loop.

    python benchmarks/cpu_precision.py            # results/bench/cpu-precision.json (5 to 15 minutes on 2 cores)
    python benchmarks/cpu_precision.py --out results/bench/cpu-precision-avx2.json   # a CPU without native bf16
    python benchmarks/cpu_precision.py --quick    # tiny sizes, seconds, to a temporary file (run by the tests)

What one run measures, all on the machine it runs on (batch 128, 32x32 images, K = 10, SGD with momentum and weight
decay, cross-entropy):
  bare-fp32        a plain PyTorch loop: ResNet-32, fp32, contiguous tensors, random batches already in memory
  bare-fp32-cl     the same loop in fp32 with the model and batches in channels_last
  bare-bf16-cl     the same loop under torch.autocast(bfloat16) with the model and batches in channels_last
  engine           margin_notes.engine.train_epochs over data.GPULoader batches of uint8 images (crop + flip +
                   normalise on the batch), with the precision the engine picks by itself (`precision(cfg, dev)`)
The engine is compared with the bare loop in the precision it picked (bare-bf16-cl where the CPU has native bf16,
bare-fp32-cl elsewhere). Timings are interleaved: each round times a block of steps of every variant, in an order rotated from round to round,
so slow changes of the machine's load hit all alike; the reported ratios are medians over rounds of per-round ratios.
Then one epoch of CIFAR-10 (JPEG)-LT at IF 100 (12,406 training images, 10,000 test images) through the engine
(training epoch + test pass) is timed against the bare fp32 loop over the same number of training images.
"""
from __future__ import annotations
import argparse, json, os, platform, statistics, sys, tempfile, time
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _bare(bf16: bool, batch: int, channels_last: Optional[bool] = None):
    "A step function of the bare loop: its own model, optimiser and one random batch (channels_last: default with bf16)."
    from margin_notes.models import make_model
    torch.manual_seed(0)
    m = make_model('resnet32', 10)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    cl = bf16 if channels_last is None else channels_last
    if cl: m, x = m.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(m.parameters(), lr=1e-5, momentum=0.9, weight_decay=2e-4)

    def run(steps):
        for _ in range(steps):
            with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
                out = m(x)
            loss = F.cross_entropy(out.float(), y)
            opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    return run


def _engine(batch: int, steps: int):
    "A step function of the engine: train_epochs over GPULoader batches, precision chosen by the engine."
    from margin_notes import engine as E
    from margin_notes.config import Config
    from margin_notes.data import GPULoader
    cfg = Config(arch='resnet32', loss='erm', dataset='cifar10', lr=1e-5, schedule='constant', warmup_epochs=0)
    dev = torch.device('cpu')
    torch.manual_seed(0)
    model = E.build_model(cfg, 10, (3, 32, 32)).to(dev)
    if E._channels_last(cfg, dev): model = model.to(memory_format=torch.channels_last)
    loss_fn, opt = E.build_loss(cfg, [100] * 10, model), E.build_optimizer(cfg, model.parameters())
    imgs = torch.randint(0, 256, (batch * steps, 3, 32, 32), dtype=torch.uint8)
    loader = GPULoader(imgs, torch.randint(0, 10, (batch * steps,)), batch, drop_last=True,
                       channels_last=E._channels_last(cfg, dev))
    amp = E._amp_dtype(cfg, dev)

    def run(_steps):
        E.train_epochs(model, loss_fn, loader, opt, lambda i: cfg.lr, 1, amp_dtype=amp)
    return run, E.precision(cfg, dev)


def interleaved(variants: dict, steps: int, rounds: int, batch: int) -> dict:
    "Images/s of each variant per round (blocks of `steps` steps), order rotated every round."
    names = list(variants)
    for n in names: variants[n](1)   # warm-up (oneDNN kernels, allocator)
    ips = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            t = time.perf_counter(); variants[n](steps); ips[n].append(steps * batch / (time.perf_counter() - t))
    return ips


def epoch_times(quick: bool) -> dict:
    "One CIFAR-10 (JPEG)-LT IF 100 epoch through the engine (train + test) against the bare fp32 loop over as many images."
    from margin_notes import engine as E
    from margin_notes.presets import get_config
    cfg = get_config('cifar10jpeglt100-r32-erm').replace(epochs=1, warmup_epochs=0, milestones=None, milestone_fracs=[1.0],
                                                           schedule='constant', progress=False)
    if quick: cfg = cfg.replace(smoke=True)
    try: data = E.load_data(E._smoke_cfg(cfg) if quick else cfg)
    except (FileNotFoundError, ValueError) as e: return {'skipped': f'CIFAR-10 (JPEG) not available: {e}'}
    n_train, n_test = sum(data.class_counts), len(data.test_labels)
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter(); E.fit(cfg, Path(d) / 'run', data=data, verbose=False)
        engine_s = time.perf_counter() - t
    steps = -(-n_train // cfg.batch_size)
    bare = _bare(False, cfg.batch_size); bare(1)
    t = time.perf_counter(); bare(steps); bare_s = time.perf_counter() - t
    return {'train_images': n_train, 'test_images': n_test, 'engine_epoch_s': engine_s, 'bare_fp32_train_s': bare_s,
            'engine_over_bare_fp32': engine_s / bare_s, 'precision': E.precision(get_config('cifar10jpeglt100-r32-erm'), 'cpu')}


def _bf16_flags() -> list:
    "The CPU's bf16 and AMX feature flags (Linux /proc/cpuinfo; empty elsewhere): AVX512-BF16 alone, or AMX as well."
    try: flags = next(l for l in Path('/proc/cpuinfo').read_text().splitlines() if l.startswith('flags')).split()
    except (OSError, StopIteration): return []
    return sorted(f for f in set(flags) if 'bf16' in f or f.startswith('amx'))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--quick', action='store_true', help='tiny sizes, to a temporary file')
    p.add_argument('--out', default=None, help='output JSON (default results/bench/cpu-precision.json)')
    a = p.parse_args(argv)
    batch, steps, rounds = (16, 2, 2) if a.quick else (128, 6, 7)
    from margin_notes.loop import cpu_has_native_bf16
    native = cpu_has_native_bf16()
    engine_run, prec = _engine(batch, steps)
    ips = interleaved({'bare-fp32': _bare(False, batch), 'bare-fp32-cl': _bare(False, batch, channels_last=True),
                       'bare-bf16-cl': _bare(True, batch), 'engine': engine_run}, steps, rounds, batch)
    ratio = lambda a_, b_: statistics.median(x / y for x, y in zip(ips[a_], ips[b_]))
    same = 'bare-bf16-cl' if prec['amp'] == 'bf16' else 'bare-fp32-cl' if prec['channels_last'] else 'bare-fp32'
    res = {'machine': {'platform': platform.platform(), 'processor': platform.processor(), 'threads': torch.get_num_threads(),
                       'cpu_capability': torch.backends.cpu.get_cpu_capability(), 'cpu_flags': _bf16_flags(),
                       'torch': torch.__version__},
           'quick': a.quick, 'batch': batch, 'steps_per_block': steps, 'rounds': rounds, 'engine_precision': prec,
           'img_per_s': {k: statistics.median(v) for k, v in ips.items()}, 'img_per_s_rounds': ips,
           'native_bf16': native, 'bf16_over_fp32': ratio('bare-bf16-cl', 'bare-fp32'),
           'fp32_cl_over_fp32': ratio('bare-fp32-cl', 'bare-fp32'),
           'bare_bf16_over_engine': ratio('bare-bf16-cl', 'engine'),
           'bare_same': same, 'bare_same_over_engine': ratio(same, 'engine'),
           'epoch': epoch_times(a.quick)}
    out = Path(a.out) if a.out else (Path(tempfile.gettempdir()) / 'cpu-precision-quick.json' if a.quick
                                     else ROOT / 'results' / 'bench' / 'cpu-precision.json')
    from margin_notes.core import atomic_write_json
    atomic_write_json(out, res)
    for k, v in res['img_per_s'].items(): print(f"{k:<14} {v:8.0f} img/s")
    print(f"native bf16: {native}; bf16+channels_last over fp32: {res['bf16_over_fp32']:.2f}x; fp32 channels_last over fp32: "
          f"{res['fp32_cl_over_fp32']:.2f}x; bare loop in the engine's precision ({same}) over the engine: "
          f"{res['bare_same_over_engine']:.2f}x (engine precision {prec})")
    if 'engine_epoch_s' in res['epoch']:
        e = res['epoch']
        print(f"CIFAR-10 (JPEG)-LT epoch: engine {e['engine_epoch_s']:.1f} s (train {e['train_images']} + test {e['test_images']}), "
              f"bare fp32 train {e['bare_fp32_train_s']:.1f} s: {e['engine_over_bare_fp32']:.2f}x")
    print(f"-> {out}")
    return res


if __name__ == '__main__':
    main()
