#!/usr/bin/env python
"""`make gpu-check`: what the training code costs on one GPU, measured in one run (chapter 36_gpu_check).

Four parts, each written to its own JSON file with provenance (device, torch / CUDA versions, git commit, date,
the exact settings); a part that fails records its error and the others still run:

  losses.json          every registry method's ResNet-32 training step (batch 128, K = 100, the engine's step:
                       `engine.build_training` + `engine.train_epochs`) as a ratio to the cross-entropy step
                       measured in the same run (median of interleaved rounds after warm-up), plus LWR composites;
                       on CUDA every step also runs under torch.cuda.set_sync_debug_mode('error')
  engine.json          images/s of the engine (GPU-resident CIFAR-100-shaped uint8 data, crop + flip, batch 128,
                       bf16, channels_last; eager and torch.compile) against a bare torch loop in the same run,
                       and the resulting estimate of a 200-epoch run
  cifar10jpeg_lt.json  one short real run on the bundled CIFAR-10 (JPEG)-LT through `engine.fit`
  clip.json            CLIP RN-50 (random weights) fine-tune step time at 224 x 224, AdamW, bf16: CE and MR²

    python scripts/gpu_check.py                # full run: needs CUDA (exit 2 without), writes results/gpu/
    python scripts/gpu_check.py --smoke        # tiny sizes, any device, writes to a temporary folder (also MARGIN_NOTES_SMOKE=1)
    python scripts/gpu_check.py --allow-cpu    # full sizes on the CPU, labelled CPU, never into results/gpu
    python scripts/gpu_check.py --parts losses clip --out /tmp/x

Exit status: 0 when every part ran, 1 when a part failed (or was skipped in a full run), 2 when the run was refused.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

SCHEMA = 'margin_notes.gpu_check/1'
PARTS = ('losses', 'engine', 'cifar10jpeg_lt', 'clip')
FILES = {p: f'{p}.json' for p in PARTS}
COMMAND = 'make gpu-check'
RESULTS_DIR = ROOT / 'results' / 'gpu'
STATUSES = ('ok', 'failed', 'skipped', 'not run')
MODES = ('gpu', 'cpu', 'smoke', 'not run')
TOP_KEYS = ('schema', 'part', 'status', 'mode', 'smoke', 'label', 'command', 'provenance', 'settings', 'results',
            'error', 'notes', 'wall_s', 'budget_s')
# the book's goals (chapter 36): a 200-epoch CIFAR-100 ResNet-32 run in under 2 minutes on one H100, i.e.
# 200 x 50,000 images / 120 s = 83,333 images/s of training, and the engine within 1.5x of a bare torch loop
GOAL_MINUTES = 2.0
GOAL_IMAGES_PER_S = 200 * 50_000 / (60 * GOAL_MINUTES)
GOAL_BARE_RATIO = 1.5
REFERENCE = 'erm'   # the loss every ratio of losses.json is taken against
LWR_COMPOSITES = {'erm+lwr': ('ERM + LWR', 'erm'), 'mr2+lwr': ('MR² + LWR', 'mr2')}
LWR_OPTIONS = {'threshold': 0.4}   # the registry's bs-lwr options


def settings_for(mode: str) -> dict:
    "The sizes of every part: full (a GPU run, or --allow-cpu) or tiny (smoke)."
    full = mode != 'smoke'
    return {
        'losses': dict(preset='cifar100-r32-erm', num_classes=100, image_size=32 if full else 16, batch_size=128 if full else 4,
                       class_counts='CIFAR-100-LT, imbalance factor 100 (n_max 500)', lr=1e-5,
                       distinct_batches=8 if full else 1, warmup_steps=10 if full else 1, sync_check_steps=3 if full else 1,
                       steps_per_round=30 if full else 1, rounds=7 if full else 1, budget_s=80 if full else 40,
                       lwr_composites={k: {'base': b, 'lwr': LWR_OPTIONS} for k, (_, b) in LWR_COMPOSITES.items()}),
        'engine': dict(preset='cifar100-r32-erm', num_classes=100, image_size=32 if full else 16, images=50_000 if full else 128,
                       test_images=10_000 if full else 32, batch_size=128 if full else 16, rounds=3 if full else 1,
                       sync_check_steps=20 if full else 3, fit_epochs=3 if full else 2, compile=full, judge_goals=mode == 'gpu',
                       budget_s=170 if full else 60),
        'cifar10jpeg_lt': dict(preset='cifar10jpeglt100-r32-erm', epochs=10 if full else 1, schedule='cosine',
                               warmup_epochs=1 if full else 0, batch_size=128 if full else 16,
                               max_per_class=None if full else 20, budget_s=100 if full else 40),
        'clip': dict(preset='imagenet-clip-rn50-mr2', arch='clip:RN50' if full else 'clip:<tiny RN (register_tiny_clip)>',
                     num_classes=1000, image_size=224 if full else 64, batch_size=128 if full else 4,
                     mr2=dict(loss='mr2-released', loss_kwargs={'momentum': 0.999, 'p': 5}),
                     warmup_steps=3 if full else 1, steps_per_round=10 if full else 1, rounds=5 if full else 1,
                     budget_s=60 if full else 40),
    }


# ----------------------------------------------------------------------------------------------------------
# provenance, labels, output
# ----------------------------------------------------------------------------------------------------------

def _git(*args) -> str | None:
    try:
        r = subprocess.run(['git', *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return r.stdout.strip() if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(dev) -> dict:
    "Where and with what the numbers were measured."
    p = {'device': torch.cuda.get_device_name(dev) if dev.type == 'cuda' else f'cpu ({platform.processor() or platform.machine()})',
         'device_type': dev.type, 'torch': torch.__version__, 'cuda': torch.version.cuda,
         'cudnn': torch.backends.cudnn.version() if dev.type == 'cuda' else None,
         'python': platform.python_version(), 'cpu_threads': torch.get_num_threads(), 'cpu_count': os.cpu_count(),
         'git_commit': _git('rev-parse', 'HEAD'), 'git_dirty': bool(_git('status', '--porcelain', '--untracked-files=no')),
         'date_utc': _dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds'),
         'argv': sys.argv[1:]}
    if dev.type == 'cuda':
        p['capability'] = '.'.join(map(str, torch.cuda.get_device_capability(dev)))
        p['gpu_memory_gib'] = round(torch.cuda.get_device_properties(dev).total_memory / 2**30, 1)
    try:
        import open_clip
        p['open_clip'] = open_clip.__version__
    except ImportError:
        p['open_clip'] = None
    return p


def label_for(mode: str, device: str) -> str:
    if mode == 'gpu': return f'measured on {device}'
    if mode == 'cpu': return f'CPU run (--allow-cpu) on {device}: not a GPU number'
    if mode == 'smoke': return f'SMOKE stand-in: tiny sizes on {device}; checks the code path only, not a measurement'
    return 'not run: no GPU was available when this file was committed'


def placeholder(part: str) -> dict:
    "The committed file of a part nobody has run yet."
    return {'schema': SCHEMA, 'part': part, 'status': 'not run', 'mode': 'not run', 'smoke': False,
            'label': label_for('not run', ''), 'command': COMMAND, 'provenance': {},
            'settings': settings_for('gpu')[part], 'results': {}, 'error': None,
            'notes': [f'run `{COMMAND}` on a CUDA machine to replace this file with measurements'],
            'wall_s': None, 'budget_s': settings_for('gpu')[part]['budget_s']}


def check_schema(doc: dict, part: str | None = None) -> dict:
    "Raise AssertionError when `doc` is not a gpu-check file (of `part`); returns it."
    missing = [k for k in TOP_KEYS if k not in doc]
    assert not missing, f'missing keys {missing}'
    assert doc['schema'] == SCHEMA, doc['schema']
    assert doc['part'] in PARTS and (part is None or doc['part'] == part), doc['part']
    assert doc['status'] in STATUSES and doc['mode'] in MODES, (doc['status'], doc['mode'])
    assert doc['smoke'] == (doc['mode'] == 'smoke')
    assert isinstance(doc['settings'], dict) and isinstance(doc['results'], dict) and isinstance(doc['notes'], list)
    assert doc['command'] == COMMAND
    if doc['status'] == 'not run':
        assert doc['results'] == {} and doc['mode'] == 'not run'
        return doc
    for k in ('device', 'device_type', 'torch', 'cuda', 'git_commit', 'date_utc'):
        assert k in doc['provenance'], f'provenance lacks {k}'
    if doc['mode'] == 'smoke': assert 'SMOKE' in doc['label']
    if doc['status'] == 'failed': assert doc['error'], 'a failed part records its error'
    if doc['status'] != 'ok': return doc
    r = doc['results']
    if doc['part'] == 'losses':
        assert r['reference'] == REFERENCE and r['rows'] and r['rows'][0]['name'] == REFERENCE
        for row in r['rows']:
            for k in ('name', 'label', 'head', 'step_ms', 'ratio_to_ce', 'overhead_pct', 'per_round_ratios', 'sync_check'):
                assert k in row, f'row {row.get("name")} lacks {k}'
            assert set(row['sync_check']) >= {'passed', 'method', 'error'}
        from margin_notes.registry import METHODS
        names = {row['name'] for row in r['rows']}
        # the library's own methods: a script imported in the same process may have registered more (register_method)
        library = {n for n, m in METHODS.items() if m.loss.__module__.startswith('margin_notes.')}
        assert library <= names and set(LWR_COMPOSITES) <= names, 'every registry method and the LWR composites'
        assert isinstance(r['all_sync_checks_passed'], bool)
    elif doc['part'] == 'engine':
        for k in ('modes', 'goal', 'engine_vs_bare', 'estimate_200_epochs_min'):
            assert k in r, f'engine results lack {k}'
        for m in r['modes'].values():
            for k in ('engine_images_per_s', 'bare_images_per_s', 'bare_over_engine', 'first_epoch_s', 'rounds'):
                assert k in m
        assert r['goal']['met'] in (True, False, None) and r['engine_vs_bare']['met'] in (True, False, None)
    elif doc['part'] == 'cifar10jpeg_lt':
        for k in ('dataset', 'epochs_done', 'overall_accuracy', 'wall_s', 'train_images_per_s', 'report'):
            assert k in r, f'cifar10jpeg_lt results lack {k}'
    elif doc['part'] == 'clip':
        for k in ('arch', 'rows', 'mr2_over_ce'):
            assert k in r
        assert [x['name'] for x in r['rows']] == ['ce', 'mr2']
        for x in r['rows']:
            for k in ('step_ms', 'images_per_s', 'sync_check'):
                assert k in x
    return doc


class Budget:
    "Seconds a part may take; loops ask `out()` between repeats and stop (saying so) once it is spent."
    def __init__(self, seconds: float): self.seconds, self.t0 = float(seconds), time.perf_counter()
    def used(self) -> float: return time.perf_counter() - self.t0
    def out(self) -> bool: return self.used() > self.seconds


class BudgetSpent(Exception):
    "Raised from a fit callback when a part's budget is spent."


# ----------------------------------------------------------------------------------------------------------
# host-sync check
# ----------------------------------------------------------------------------------------------------------

# Tensor methods that read values on the host: each of them synchronises when the tensor lives on a GPU
TRIPWIRE = ('item', 'tolist', '__bool__', '__int__', '__float__', '__index__', 'numpy', 'cpu', 'nonzero')
SYNC_METHODS = {'cuda': "torch.cuda.set_sync_debug_mode('error'): any host synchronisation raises",
                'cpu': ('CPU tripwire (a proxy, not a CUDA check): Tensor.' + ', .'.join(TRIPWIRE) +
                        ' raise; value checks off as on an accelerator')}


@contextlib.contextmanager
def host_sync_guard(device):
    """Inside the block a host synchronisation raises RuntimeError: on CUDA through the sync debug mode; on the CPU,
    where nothing synchronises, through a tripwire on the Tensor methods that would synchronise on a GPU."""
    from margin_notes.core import value_checks
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        prev = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode('error')
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode(prev)
        return
    saved = {n: getattr(torch.Tensor, n) for n in TRIPWIRE}

    def trip(name):
        def f(self, *a, **k):
            raise RuntimeError(f'host read: Tensor.{name}() inside the step (CPU tripwire; this call synchronises on a GPU)')
        return f
    try:
        for n in TRIPWIRE: setattr(torch.Tensor, n, trip(n))
        with value_checks(False):
            yield
    finally:
        for n, f in saved.items(): setattr(torch.Tensor, n, f)


class GuardedBatches:
    "Batches whose iteration runs under `host_sync_guard`: everything between the first batch and the end of the loop is checked."
    def __init__(self, batches, device, limit: int | None = None):
        self.batches, self.device, self.gen = batches, device, None
        self.n = len(batches) if limit is None else min(limit, len(batches))
    def __len__(self): return self.n
    def __iter__(self):
        self.gen = self._iter()
        return self.gen
    def _iter(self):
        with host_sync_guard(self.device):
            for i, b in enumerate(self.batches):
                if i >= self.n: break
                yield b
    def close(self):
        if self.gen is not None: self.gen.close()


def check_no_host_sync(run, batches, device, limit: int | None = None) -> dict:
    """Call `run(guarded)`, where iterating `guarded` (the `batches`) happens under `host_sync_guard`; code after the
    loop (an epoch's one host read) is outside it. Returns {'passed', 'method', 'error'}: passed False when a
    host sync (or any other RuntimeError) was raised inside the loop."""
    g = GuardedBatches(batches, device, limit)
    out = {'passed': True, 'method': SYNC_METHODS['cuda' if device.type == 'cuda' else 'cpu'], 'error': None, 'steps': len(g)}
    try:
        run(g)
    except RuntimeError as e:
        msg = ' '.join(str(e).split())
        out.update(passed=False, error=f'{type(e).__name__}: {msg[:300]}')
    finally:
        g.close()   # leaves the guard even when the loop stopped inside it
        if device.type == 'cuda': torch.cuda.synchronize(device)
    return out


# ----------------------------------------------------------------------------------------------------------
# timing helpers
# ----------------------------------------------------------------------------------------------------------

def _sync(dev):
    if dev.type == 'cuda': torch.cuda.synchronize(dev)


def timed(fn, dev) -> tuple:
    "(seconds, value of fn()): synchronised before and after, nothing in between."
    _sync(dev)
    t0 = time.perf_counter()
    v = fn()
    _sync(dev)
    return time.perf_counter() - t0, v


def _median_iqr(xs) -> dict:
    xs = sorted(xs)
    q = statistics.quantiles(xs, n=4) if len(xs) >= 2 else [xs[0]] * 3
    return {'median': statistics.median(xs), 'q1': q[0], 'q3': q[2], 'n': len(xs)}


def random_bundle(n_train: int, n_test: int, K: int, size: int, seed: int = 0):
    "A DataBundle of random uint8 images with balanced labels (speed only: the values do not matter)."
    from margin_notes.data import DataBundle, CIFAR_MEAN, CIFAR_STD
    g = torch.Generator().manual_seed(seed)
    def part(n):
        return (torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g),
                torch.arange(n, dtype=torch.int64) % K)
    (xtr, ytr), (xte, yte) = part(n_train), part(n_test)
    return DataBundle(name=f'random-uint8-{n_train}', label=f'random uint8 3x{size}x{size} images (timing only)',
                      train_images=xtr, train_labels=ytr, test_images=xte, test_labels=yte, num_classes=K,
                      classes=[f'class{k}' for k in range(K)], mean=CIFAR_MEAN, std=CIFAR_STD)


def batch_pool(K: int, B: int, size: int, n: int, dev, channels_last: bool, seed: int = 0) -> list:
    "n fixed (x, y) training batches made by the engine's loader from random uint8 images, on `dev`."
    from margin_notes import engine as E, presets as P
    data = random_bundle(n * B, 1, K, size, seed)
    cfg = E.Config(batch_size=B, channels_last=channels_last, augment='crop-flip', pipeline='gpu')
    return list(E.make_batches(data, cfg, dev, True, torch.Generator(device=dev).manual_seed(seed)))


def cycle(pool: list, n: int) -> list:
    return [pool[i % len(pool)] for i in range(n)]


def _free(dev):
    import gc
    gc.collect()
    if dev.type == 'cuda': torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------------------
# (a) the losses: training-step overhead over CE
# ----------------------------------------------------------------------------------------------------------

def part_losses(S: dict, dev, budget: Budget, log) -> tuple:
    from margin_notes import engine as E, presets as P
    from margin_notes.baselines import drw_weights
    from margin_notes.config import resolve, validate_config
    from margin_notes.data import cifar_lt_counts
    from margin_notes.registry import METHODS
    K, B, notes = S['num_classes'], S['batch_size'], []
    counts = cifar_lt_counts(K, 100)
    data = SimpleNamespace(num_classes=K, class_counts=counts, image_shape=(3, S['image_size'], S['image_size']))
    base = P.get_config(S['preset'], {'device': dev.type, 'progress': False, 'batch_size': B})
    specs = [(n, m.label, {'loss': n}) for n, m in METHODS.items()]
    specs += [(n, lab, {'loss': b, 'lwr': dict(LWR_OPTIONS)}) for n, (lab, b) in LWR_COMPOSITES.items()]
    pool = batch_pool(K, B, S['image_size'], S['distinct_batches'], dev, base.channels_last)
    amp = E._amp_dtype(base, dev)
    rows, runs = {}, {}
    for name, label, ov in specs:
        cfg = validate_config(base.replace(**ov))
        r = resolve(cfg)
        torch.manual_seed(0)
        model, loss_fn, opt, fwd = E.build_training(cfg, data, dev)
        if r.drw_start is not None:   # time the re-weighted phase (the costlier one)
            loss_fn.set_class_weight(torch.as_tensor(drw_weights(counts, beta=cfg.drw_beta), dtype=torch.float32, device=dev))

        def run(batches, model=model, loss_fn=loss_fn, opt=opt, fwd=fwd):
            return E.train_epochs(model, loss_fn, batches, opt, lambda step: S['lr'], 1, fwd=fwd, amp_dtype=amp)
        run(cycle(pool, S['warmup_steps']))
        sc = check_no_host_sync(run, cycle(pool, S['sync_check_steps']), dev)
        m = r.method
        rows[name] = {'name': name, 'label': label, 'loss': type(loss_fn).__name__, 'head': r.head,
                      'drw_phase': r.drw_start is not None, 'lwr': r.lwr, 'posthoc': r.posthoc,
                      'note': 'trains with the ERM loss; its post-hoc step runs after training' if m.posthoc else None,
                      'sync_check': sc}
        runs[name] = run
        log(f"  {name:<14} built ({type(loss_fn).__name__}, {r.head} head); host-sync check "
            f"{'passed' if sc['passed'] else 'FAILED: ' + sc['error']}")
    names = list(runs)
    assert names[0] == REFERENCE
    times = {n: [] for n in names}
    steps = cycle(pool, S['steps_per_round'])
    done = 0
    for rd in range(S['rounds']):
        if rd > 0 and budget.out():   # at least one round, then only while the budget lasts
            notes.append(f'budget of {budget.seconds:.0f} s spent: {done} of {S["rounds"]} rounds measured')
            break
        k = rd % len(names)
        for n in names[k:] + names[:k]:
            t, _ = timed(lambda: runs[n](steps), dev)
            times[n].append(t / len(steps))
        done += 1
        log(f'  round {done}/{S["rounds"]}')
    ref = times[REFERENCE]
    out = []
    for n in names:
        ratios = [t / c for t, c in zip(times[n], ref)]
        ratio = statistics.median(ratios)
        st = _median_iqr(times[n])
        out.append({**rows[n], 'step_ms': 1e3 * st['median'], 'step_ms_q1': 1e3 * st['q1'], 'step_ms_q3': 1e3 * st['q3'],
                    'ratio_to_ce': ratio, 'overhead_pct': 100 * (ratio - 1), 'per_round_ratios': ratios})
    res = {'reference': REFERENCE, 'rounds_done': done, 'amp': str(amp) if amp is not None else None,
           'channels_last': base.channels_last, 'compile': False, 'rows': out,
           'all_sync_checks_passed': all(r['sync_check']['passed'] for r in out),
           'max_overhead_pct': max(r['overhead_pct'] for r in out),
           'timing': ('each round times every loss once (order rotated per round) over steps_per_round engine steps, '
                      'synchronised only at the end of the block; ratio = median over rounds of the per-round ratio '
                      'to the ERM (cross-entropy) step; learning rate 1e-5 so the weights do not drift')}
    if dev.type == 'cuda': res['peak_memory_gib'] = torch.cuda.max_memory_allocated(dev) / 2**30
    return res, notes


# ----------------------------------------------------------------------------------------------------------
# (b) the engine against a bare torch loop
# ----------------------------------------------------------------------------------------------------------

class BareLoop:
    "The same training written plainly: ResNet-32, SGD, bf16 autocast, channels_last, crop + flip + normalise on the device."
    def __init__(self, data, dev, batch_size: int, amp, channels_last: bool, compile: bool, lr: float, momentum: float,
                 weight_decay: float, warmup_epochs: float, seed: int = 0):
        from margin_notes.models import resnet32
        torch.manual_seed(seed)
        self.dev, self.B, self.amp, self.cl = dev, batch_size, amp, channels_last
        self.model = resnet32(data.num_classes).to(dev)
        if channels_last: self.model = self.model.to(memory_format=torch.channels_last)
        self.net = torch.compile(self.model) if compile else self.model
        self.opt = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay,
                                   **({'fused': True} if dev.type == 'cuda' else {}))
        self.x, self.y = data.train_images.to(dev), data.train_labels.to(dev)
        self.mean = torch.tensor(data.mean, device=dev).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(data.std, device=dev).view(1, 3, 1, 1) * 255
        self.g = torch.Generator(device=dev).manual_seed(seed)
        self.lr, self.warm = lr, warmup_epochs
        self.steps = self.x.shape[0] // batch_size

    def epoch(self, e: int) -> float:
        dev, B, g = self.dev, self.B, self.g
        H, W = self.x.shape[-2:]
        ar_h, ar_w = torch.arange(H, device=dev), torch.arange(W, device=dev)
        bi, ci = torch.arange(B, device=dev).view(B, 1, 1, 1), torch.arange(3, device=dev).view(1, 3, 1, 1)
        perm = torch.randperm(self.x.shape[0], device=dev, generator=g)
        total = torch.zeros((), device=dev)
        self.model.train()
        for i in range(self.steps):
            idx = perm[i * B:(i + 1) * B]
            x, y = F.pad(self.x[idx], (4, 4, 4, 4)), self.y[idx]
            oy = torch.randint(0, 9, (B,), device=dev, generator=g)
            ox = torch.randint(0, 9, (B,), device=dev, generator=g)
            flip = torch.rand(B, device=dev, generator=g) < 0.5
            rows = (oy.view(B, 1) + ar_h).view(B, 1, H, 1)
            cols = (ox.view(B, 1) + torch.where(flip.view(B, 1), W - 1 - ar_w, ar_w)).view(B, 1, 1, W)
            x = (x[bi, ci, rows, cols].float() - self.mean) / self.std
            if self.cl: x = x.contiguous(memory_format=torch.channels_last)
            step = e * self.steps + i
            for gr in self.opt.param_groups: gr['lr'] = self.lr * min(1.0, (step + 1) / (self.warm * self.steps))
            with torch.autocast(dev.type, dtype=self.amp, enabled=self.amp is not None):
                out = self.net(x)
            loss = F.cross_entropy(out.float(), y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            total += loss.detach()
        return (total / self.steps).item()   # one host read per epoch, as the engine makes


def part_engine(S: dict, dev, budget: Budget, log) -> tuple:
    from margin_notes import engine as E, presets as P
    K, B, notes = S['num_classes'], S['batch_size'], []
    t, data = timed(lambda: random_bundle(S['images'], S['test_images'], K, S['image_size']), dev)
    cfg = P.get_config(S['preset'], {'device': dev.type, 'progress': False, 'batch_size': B})
    amp = E._amp_dtype(cfg, dev)
    res = {'data': data.label, 'images': S['images'], 'batch_size': B, 'amp': str(amp) if amp is not None else None,
           'channels_last': cfg.channels_last, 'pipeline': 'engine.make_batches -> data.GPULoader (device-resident uint8, '
           'pad-4 crop + flip + normalise per batch on the device)', 'modes': {}, 'data_build_s': t}
    compile_ok = S['compile'] and dev.type == 'cuda'
    if S['compile'] and not compile_ok: notes.append('torch.compile skipped: measured on CUDA only')
    if not S['compile']: notes.append('torch.compile not measured at these settings')
    modes = ['eager'] + (['compile'] if compile_ok else [])
    eval_s = None
    for mode in modes:
        if mode != 'eager' and budget.out():
            notes.append(f'budget of {budget.seconds:.0f} s spent before the {mode} measurement'); break
        c = cfg.replace(compile=mode == 'compile')
        torch.manual_seed(0)
        model, loss_fn, opt, fwd = E.build_training(c, data, dev)
        train_b = E.make_batches(data, c, dev, True, torch.Generator(device=dev).manual_seed(0))
        spe = len(train_b)

        def engine_epoch(e, batches=train_b, model=model, loss_fn=loss_fn, opt=opt, fwd=fwd, c=c, spe=spe):
            return E.train_epochs(model, loss_fn, batches, opt, lambda step: E.lr_at(c, step, spe), c.epochs,
                                  start=e, end=e + 1, fwd=fwd, amp_dtype=amp)
        bare = BareLoop(data, dev, B, amp, c.channels_last, mode == 'compile', c.lr, c.momentum, c.weight_decay, c.warmup_epochs)
        assert bare.steps == spe, (bare.steps, spe)
        m = {'steps_per_epoch': spe}
        m['first_epoch_s'], _ = timed(lambda: engine_epoch(0), dev)
        m['bare_first_epoch_s'], _ = timed(lambda: bare.epoch(0), dev)
        m['sync_check'] = check_no_host_sync(lambda b: E.train_epochs(model, loss_fn, b, opt, lambda s: 1e-5, 1, fwd=fwd, amp_dtype=amp),
                                             train_b, dev, limit=S['sync_check_steps'])
        eng, bar, rounds = [], [], []
        for rd in range(S['rounds']):
            if rd > 0 and budget.out():
                notes.append(f'budget of {budget.seconds:.0f} s spent: {rd} of {S["rounds"]} {mode} rounds measured'); break
            order = ('engine', 'bare') if rd % 2 == 0 else ('bare', 'engine')
            t = {}
            for who in order:
                t[who], _ = timed((lambda: engine_epoch(rd + 1)) if who == 'engine' else (lambda: bare.epoch(rd + 1)), dev)
            eng.append(t['engine']); bar.append(t['bare']); rounds.append({'engine_s': t['engine'], 'bare_s': t['bare']})
            log(f'  {mode}: round {rd + 1}/{S["rounds"]}: engine {spe * B / t["engine"]:,.0f} img/s, bare {spe * B / t["bare"]:,.0f} img/s')
        if not eng:
            res['modes'][mode] = {**m, 'engine_images_per_s': None, 'bare_images_per_s': None, 'bare_over_engine': None, 'rounds': []}
            continue
        e_s, b_s = statistics.median(eng), statistics.median(bar)
        m.update(engine_epoch_s=e_s, bare_epoch_s=b_s, engine_images_per_s=spe * B / e_s, bare_images_per_s=spe * B / b_s,
                 bare_over_engine=statistics.median([x['engine_s'] / x['bare_s'] for x in rounds]), rounds=rounds)
        m['compile_s'] = max(m['first_epoch_s'] - e_s, 0.0) if mode == 'compile' else None
        m['bare_compile_s'] = max(m['bare_first_epoch_s'] - b_s, 0.0) if mode == 'compile' else None
        if eval_s is None and not budget.out():   # the per-epoch test pass of a run (10,000 images)
            test_b = E.make_batches(data, c, dev, False, batch_size=max(B, 256))
            E.collect_outputs(model, test_b, amp)
            eval_s = statistics.median([timed(lambda: E.collect_outputs(model, test_b, amp), dev)[0] for _ in range(2)])
        res['modes'][mode] = m
        del model, loss_fn, opt, fwd, bare, train_b
        _free(dev)
    done = {k: v for k, v in res['modes'].items() if v.get('engine_images_per_s')}
    res['eval_s'] = eval_s
    best = max(done, key=lambda k: done[k]['engine_images_per_s']) if done else None
    res['best_mode'] = best
    # an end-to-end `engine.fit` of a few epochs in the best mode: training + test pass + metrics.csv + checkpoint per epoch
    fit_est = None
    need = (done[best]['first_epoch_s'] + S['fit_epochs'] * (done[best]['engine_epoch_s'] + (eval_s or 0.0))) if best else 0.0
    if best is not None and budget.used() + need <= budget.seconds:
        c = cfg.replace(compile=best == 'compile', epochs=S['fit_epochs'], name='gpu-check-engine-fit', eval_every=1)
        stamps = []
        with tempfile.TemporaryDirectory(prefix='gpu-check-fit-') as d:
            t0 = time.perf_counter()
            E.fit(c, d, data=data, verbose=False, on_epoch=lambda e, row: stamps.append(time.perf_counter()))
            wall = time.perf_counter() - t0
        first = stamps[0] - t0
        later = [b - a for a, b in zip(stamps, stamps[1:])]
        per = statistics.median(later) if later else first
        fit_est = (first + 199 * per) / 60
        res['fit'] = {'mode': best, 'epochs': S['fit_epochs'], 'wall_s': wall, 'first_epoch_with_setup_s': first,
                      'later_epoch_s': later, 'estimate_200_epochs_min': fit_est,
                      'basis': 'engine.fit on the same data: setup + first epoch + 199 x median later epoch (training, '
                               'test pass, metrics.csv and checkpoint every epoch)'}
        log(f'  engine.fit ({best}): {S["fit_epochs"]} epochs in {wall:.1f} s -> 200 epochs ~ {fit_est:.2f} min')
    elif best is not None:
        notes.append(f'end-to-end engine.fit skipped: about {need:.0f} s needed, {budget.seconds - budget.used():.0f} s of the budget left')
    est_train = None
    if best is not None:
        b = done[best]
        est_train = (200 * b['engine_epoch_s'] + (b['compile_s'] or 0.0) + 200 * (eval_s or 0.0)) / 60
    res['estimate_200_epochs_min'] = {'from_epochs': est_train, 'from_fit': fit_est,
                                      'from_epochs_basis': '200 x (median engine training epoch + test pass) + compile time'}
    est = fit_est if fit_est is not None else est_train
    ips = done[best]['engine_images_per_s'] if best else None
    judge = S['judge_goals']   # the goals are for one GPU: a smoke or CPU run measures, but does not judge them
    res['goal'] = {'target_minutes': GOAL_MINUTES, 'target_images_per_s': GOAL_IMAGES_PER_S, 'estimate_minutes': est,
                   'images_per_s': ips,
                   'met': None if (est is None or not judge) else bool(est < GOAL_MINUTES and ips >= GOAL_IMAGES_PER_S),
                   'note': ('met only when both the 200-epoch estimate is under 2 min and training reaches 83,333 images/s'
                            if judge else 'not judged: the goal is for a full run on one GPU')}
    ratio = done[best]['bare_over_engine'] if best else None
    res['engine_vs_bare'] = {'target_ratio': GOAL_BARE_RATIO, 'mode': best, 'bare_over_engine': ratio,
                             'met': None if (ratio is None or not judge) else bool(ratio <= GOAL_BARE_RATIO)}
    if dev.type == 'cuda': res['peak_memory_gib'] = torch.cuda.max_memory_allocated(dev) / 2**30
    return res, notes


# ----------------------------------------------------------------------------------------------------------
# (c) one short real run on CIFAR-10 (JPEG)-LT
# ----------------------------------------------------------------------------------------------------------

def part_cifar10jpeg(S: dict, dev, budget: Budget, log) -> tuple:
    from margin_notes import engine as E, presets as P
    from margin_notes.core import find_data
    notes = []
    if find_data('cifar10-jpeg.tar.gz', 'cifar10-jpeg/cifar10-jpeg.tar.gz') is None:
        return None, ['cifar10-jpeg.tar.gz is not under the data root: set MARGIN_NOTES_DATA to the folder that holds it']
    ov = {'epochs': S['epochs'], 'schedule': S['schedule'], 'warmup_epochs': S['warmup_epochs'], 'batch_size': S['batch_size'],
          'progress': False, 'device': dev.type, 'name': 'gpu-check-cifar10jpeglt100-r32-erm'}
    if S['max_per_class'] is not None: ov['data_kwargs'] = {'max_per_class': S['max_per_class']}
    cfg = P.get_config(S['preset'], ov)
    t_data, data = timed(lambda: E.load_data(cfg), dev)
    rows = []

    def on_epoch(e, row):
        rows.append(dict(row))
        if budget.out() and e + 1 < cfg.epochs: raise BudgetSpent()
    with tempfile.TemporaryDirectory(prefix='gpu-check-cifar10jpeg-') as d:
        t0 = time.perf_counter()
        try:
            r = E.fit(cfg, d, data=data, verbose=False, on_epoch=on_epoch)
        except BudgetSpent:
            r = None
            notes.append(f'budget of {budget.seconds:.0f} s spent: stopped after {len(rows)} of {cfg.epochs} epochs')
        wall = time.perf_counter() - t0
    train_s = sum(x['time_s'] for x in rows)
    n = len(data.train_labels)
    res = {'dataset': data.label, 'preset': S['preset'], 'config': cfg.to_dict(), 'train_images': n,
           'test_images': len(data.test_labels), 'epochs_done': len(rows), 'epochs': cfg.epochs, 'data_load_s': t_data,
           'wall_s': wall, 'train_s': train_s, 'train_images_per_s': n * len(rows) / train_s if train_s else None,
           'overall_accuracy': rows[-1].get('test_acc') if rows else None,
           'report': r['report'] if r is not None else None, 'history': rows,
           'note': 'a short run (few epochs, cosine schedule): a check of the real-data path and its speed, not a result'}
    if dev.type == 'cuda': res['peak_memory_gib'] = torch.cuda.max_memory_allocated(dev) / 2**30
    log(f"  {res['epochs_done']} epochs in {wall:.1f} s, overall accuracy {res['overall_accuracy']}")
    return res, notes


# ----------------------------------------------------------------------------------------------------------
# (d) CLIP RN-50 fine-tune step: CE and MR²
# ----------------------------------------------------------------------------------------------------------

def part_clip(S: dict, dev, budget: Budget, log, smoke: bool) -> tuple:
    from margin_notes import engine as E, presets as P
    from margin_notes.mr2 import MR2Loss
    notes = []
    arch = S['arch']
    if smoke:
        from margin_notes.clip import register_tiny_clip
        arch = 'clip:' + register_tiny_clip()
    K, B, size = S['num_classes'], S['batch_size'], S['image_size']
    data = SimpleNamespace(num_classes=K, class_counts=[100] * K, image_shape=(3, size, size))
    # the recipe's optimiser, schedule, clipping, bf16 and channels_last; random weights and a linear head (no zero-shot
    # head: it needs the OpenAI weights and ImageNet class names)
    base = P.get_config(S['preset'], {'arch': arch, 'batch_size': B, 'device': dev.type, 'progress': False, 'model_kwargs': {}})
    specs = {'ce': base.replace(loss='erm', loss_kwargs={}),
             'mr2': base.replace(loss=S['mr2']['loss'], loss_kwargs=dict(S['mr2']['loss_kwargs']))}
    amp = E._amp_dtype(base, dev)
    g = torch.Generator().manual_seed(0)
    pool = []
    for _ in range(2):
        x = torch.randn(B, 3, size, size, generator=g).to(dev)
        if base.channels_last: x = x.contiguous(memory_format=torch.channels_last)
        pool.append((x, torch.randint(0, K, (B,), generator=g).to(dev)))
    runs, rows = {}, {}
    for name, cfg in specs.items():
        torch.manual_seed(0)
        model, loss_fn, opt, fwd = E.build_training(cfg, data, dev)
        if name == 'mr2':
            assert isinstance(loss_fn, MR2Loss) and loss_fn.variant == 'released' and loss_fn.stats.momentum == 0.999, loss_fn
        def run(batches, model=model, loss_fn=loss_fn, opt=opt, fwd=fwd, cfg=cfg):
            return E.train_epochs(model, loss_fn, batches, opt, lambda step: cfg.lr, 1, fwd=fwd, amp_dtype=amp,
                                  grad_clip=cfg.grad_clip)
        run(cycle(pool, S['warmup_steps']))
        if dev.type == 'cuda':
            sc = check_no_host_sync(run, cycle(pool, 2), dev)
        else:   # AdamW keeps its step count on the host when not fused: the CPU tripwire would flag the optimiser, not the step
            sc = {'passed': None, 'method': 'checked on CUDA only', 'error': None, 'steps': 0}
        runs[name] = run
        rows[name] = {'name': name, 'loss': repr(loss_fn).split('\n')[0][:200], 'sync_check': sc}
        log(f"  {name}: built {arch} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters)")
    times = {n: [] for n in runs}
    steps = cycle(pool, S['steps_per_round'])
    done = 0
    for rd in range(S['rounds']):
        if rd > 0 and budget.out():
            notes.append(f'budget of {budget.seconds:.0f} s spent: {done} of {S["rounds"]} rounds measured'); break
        for n in (('ce', 'mr2') if rd % 2 == 0 else ('mr2', 'ce')):
            t, _ = timed(lambda: runs[n](steps), dev)
            times[n].append(t / len(steps))
        done += 1
    out = []
    for n in ('ce', 'mr2'):
        st = _median_iqr(times[n])
        out.append({**rows[n], 'step_ms': 1e3 * st['median'], 'step_ms_q1': 1e3 * st['q1'], 'step_ms_q3': 1e3 * st['q3'],
                    'images_per_s': B / st['median']})
    ratio = statistics.median([m / c for m, c in zip(times['mr2'], times['ce'])])
    res = {'arch': arch, 'weights': 'random (no download)', 'optimizer': 'adamw', 'lr': base.lr, 'weight_decay': base.weight_decay,
           'grad_clip': base.grad_clip, 'amp': str(amp) if amp is not None else None, 'channels_last': base.channels_last,
           'batch_size': B, 'image_size': size, 'rounds_done': done, 'rows': out, 'mr2_over_ce': ratio,
           'mr2_features': 'un-normalised image-tower output (the engine passes the backbone features)',
           'data': 'fixed random float batches already on the device: the step only, no image decoding'}
    if dev.type == 'cuda': res['peak_memory_gib'] = torch.cuda.max_memory_allocated(dev) / 2**30
    log(f"  CE {out[0]['step_ms']:.1f} ms/step, MR² {out[1]['step_ms']:.1f} ms/step (x{ratio:.3f})")
    return res, notes


# ----------------------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                 epilog='Run by `make gpu-check`; chapter 36 renders results/gpu/*.json.')
    ap.add_argument('--smoke', action='store_true', help='tiny sizes on any device, into a temporary folder (also MARGIN_NOTES_SMOKE=1)')
    ap.add_argument('--allow-cpu', action='store_true', help='run the full sizes without CUDA (labelled CPU, never into results/gpu)')
    ap.add_argument('--out', default=None, help='output folder (default: results/gpu for a full CUDA run, else a new temporary folder)')
    ap.add_argument('--parts', nargs='+', choices=PARTS, default=list(PARTS))
    ap.add_argument('--no-compile', action='store_true', help='engine: measure eager mode only')
    ap.add_argument('--write-placeholders', action='store_true', help='write the "not run" files into results/gpu and exit')
    args = ap.parse_args(argv)
    if args.write_placeholders:
        for p in PARTS:
            from margin_notes.core import atomic_write_json
            atomic_write_json(RESULTS_DIR / FILES[p], check_schema(placeholder(p), p))
        print(f'wrote {len(PARTS)} "not run" files into {RESULTS_DIR.relative_to(ROOT)}')
        return 0
    env = os.environ.get('MARGIN_NOTES_SMOKE', '').strip().lower()
    smoke = args.smoke or env in ('1', 'true', 'yes')
    cuda = torch.cuda.is_available()
    if not smoke and not cuda and not args.allow_cpu:
        print('gpu-check: CUDA is not available; this check measures a GPU (use --smoke for a code-path check, '
              '--allow-cpu to measure the CPU)', file=sys.stderr)
        return 2
    dev = torch.device('cuda' if cuda else 'cpu')
    mode = 'smoke' if smoke else ('gpu' if cuda else 'cpu')
    if mode == 'smoke' and dev.type == 'cpu': torch.set_num_threads(1)   # tiny sizes: one thread is faster on a shared CPU
    if args.out is None:
        out = RESULTS_DIR if mode == 'gpu' else Path(tempfile.mkdtemp(prefix=f'gpu-check-{mode}-'))
    else:
        out = Path(args.out).resolve()
        if mode != 'gpu' and (out == RESULTS_DIR.resolve() or RESULTS_DIR.resolve() in out.parents):
            print(f'gpu-check: a {mode} run never writes into results/gpu; choose another --out', file=sys.stderr)
            return 2
    prefix = {'smoke': '[smoke stand-in] ', 'cpu': '[cpu, not a GPU number] ', 'gpu': '[gpu-check] '}[mode]

    def log(msg):
        print(prefix + msg, flush=True)
    S = settings_for(mode)
    if args.no_compile: S['engine']['compile'] = False
    prov = provenance(dev)
    log(f"{mode} run on {prov['device']}, torch {prov['torch']}, CUDA {prov['cuda']}, commit {(prov['git_commit'] or '?')[:10]}; "
        f'writing to {out}')
    from margin_notes.core import atomic_write_json
    fns = {'losses': part_losses, 'engine': part_engine, 'cifar10jpeg_lt': part_cifar10jpeg,
           'clip': lambda s, d, b, l: part_clip(s, d, b, l, smoke)}
    failed, t_all = [], time.perf_counter()
    for p in args.parts:
        log(f'{p} ...')
        budget = Budget(S[p]['budget_s'])
        if dev.type == 'cuda': torch.cuda.reset_peak_memory_stats(dev)
        status, res, notes, err = 'ok', {}, [], None
        try:
            r, notes = fns[p](S[p], dev, budget, log)
            if r is None: status = 'skipped'
            else: res = r
        except Exception as e:   # recorded, and the next part runs
            status, err = 'failed', f'{type(e).__name__}: {e}'
            notes = notes + [traceback.format_exc(limit=6)[-1500:]]
            log(f'{p} FAILED: {err}')
        finally:
            if dev.type == 'cuda': torch.cuda.set_sync_debug_mode('default')
            _free(dev)
        if budget.out(): notes.append(f'the part ran {budget.used():.0f} s against a budget of {budget.seconds:.0f} s')
        doc = {'schema': SCHEMA, 'part': p, 'status': status, 'mode': mode, 'smoke': mode == 'smoke',
               'label': label_for(mode, prov['device']), 'command': COMMAND,
               'provenance': prov, 'settings': S[p], 'results': res, 'error': err, 'notes': notes,
               'wall_s': budget.used(), 'budget_s': S[p]['budget_s']}
        try:
            check_schema(doc, p)
        except AssertionError as e:
            doc.update(status='failed', error=f'schema: {e}')
        atomic_write_json(out / FILES[p], doc)
        if doc['status'] == 'failed' or (doc['status'] == 'skipped' and mode != 'smoke'): failed.append(p)
        log(f'{p}: {doc["status"]} in {budget.used():.1f} s' + (f' ({notes[0]})' if doc['status'] == 'skipped' else ''))
    log(f'done in {time.perf_counter() - t_all:.1f} s; files in {out}' + (f'; FAILED: {", ".join(failed)}' if failed else ''))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
