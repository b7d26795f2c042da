"""Does training in bf16 change what a run learns? A short paired check on CIFAR-10 (JPEG)-LT (chapter 30).

    python scripts/precision_check.py            # results/precision/cifar10jpeg-lt100.json (about 20 minutes on 2 cores)
    python scripts/precision_check.py --quick    # stand-in data, seconds, to a temporary file (run by the tests)

ResNet-32 with the CE preset of chapter 30 (`cifar10jpeglt100-r32-erm`), shortened to a few epochs with a cosine
schedule, trained for seeds 0, 1, 2 once in fp32 (amp='fp32', channels_last=False) and once with the engine's
choice on this machine (amp='auto': bf16 autocast + channels_last on CPUs with native bf16). Same seed, same batches,
same augmentation; only the arithmetic differs. The file holds every run's test accuracy and per-class accuracy, the
paired differences (bf16 - fp32) with their mean, sample std and a paired t-test, and the training time of each run.
"""
from __future__ import annotations
import argparse, sys, tempfile, time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--quick', action='store_true', help='stand-in data, tiny, to a temporary file')
    p.add_argument('--epochs', type=int, default=6)
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--out', default=None)
    a = p.parse_args(argv)
    from scipy.stats import ttest_rel
    from margin_notes.presets import get_config
    from margin_notes.core import atomic_write_json
    from margin_notes.engine import fit, load_data, precision, _smoke_cfg
    base = get_config('cifar10jpeglt100-r32-erm').replace(epochs=a.epochs, warmup_epochs=1, schedule='cosine', eval_every=a.epochs,
                                                           progress=False, name='precision-check')
    if a.quick: base = base.replace(smoke=True)
    data = load_data(_smoke_cfg(base) if a.quick else base)
    runs = {'fp32': {}, 'auto': {}}
    with tempfile.TemporaryDirectory() as d:
        for s in a.seeds:
            for mode, over in (('fp32', dict(amp='fp32', channels_last=False)), ('auto', dict(amp='auto', channels_last='auto'))):
                cfg = base.replace(seed=s, **over)
                t = time.perf_counter()
                r = fit(cfg, Path(d) / f'{mode}-{s}', data=data, verbose=False)
                runs[mode][s] = {'overall': r['report']['overall'], 'worst': r['report']['worst'],
                                 'per_class_accuracy': r['per_class_accuracy'], 'precision': r['precision'],
                                 'time_s': time.perf_counter() - t}
                print(f"seed {s} {mode:>4} ({r['precision']['amp']}): {100 * r['report']['overall']:.2f} % in {runs[mode][s]['time_s']:.0f} s", flush=True)
    fp, au = (np.array([runs[m][s]['overall'] for s in a.seeds]) for m in ('fp32', 'auto'))
    diff = au - fp
    res = {'what': __doc__.split('\n\n')[1].strip() if not a.quick else 'quick check on stand-in data', 'quick': a.quick,
           'epochs': a.epochs, 'seeds': a.seeds, 'auto_precision': runs['auto'][a.seeds[0]]['precision'], 'runs': runs,
           'diff_mean': float(diff.mean()), 'diff_std': float(diff.std(ddof=1)) if len(diff) > 1 else None,
           'p_paired_t': float(ttest_rel(au, fp).pvalue) if len(diff) > 1 and diff.std() > 0 else None,
           'speedup': float(np.mean([runs['fp32'][s]['time_s'] / runs['auto'][s]['time_s'] for s in a.seeds]))}
    out = Path(a.out) if a.out else (Path(tempfile.gettempdir()) / 'precision-quick.json' if a.quick
                                     else ROOT / 'results' / 'precision' / 'cifar10jpeg-lt100.json')
    atomic_write_json(out, res)
    print(f"bf16 - fp32: {100 * res['diff_mean']:+.2f} points (mean over {len(a.seeds)} seeds); runs {res['speedup']:.2f}x faster -> {out}")
    return res


if __name__ == '__main__':
    main()
