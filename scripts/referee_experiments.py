"""The experiments behind chapters 26, 27 and 29 and the defaults measurement (results/cpu_features, results/fmnist_lt,
results/premise, results/defaults).

    python scripts/referee_experiments.py premise|probe|fmnist|defaults|mr2stat [--smoke OUT_DIR]

Every run is seeded (training seeds 0-4; subsample seed 0). Held-out data: the validation images are a fixed slice of
the official test split that is never scored (CIFAR-10 (JPEG): test images 300-399 of every class, the scored test set
being images 0-299; Fashion-MNIST: the last 200 test images of every class, the scored test set being the first 800).
Difficulty groups (Easy/Medium/Hard) come from ERM's per-class accuracy on that validation slice; every
hyper-parameter choice (lambda, tau, weight decay, label smoothing) is made on it. The grids (probe, fmnist) also keep
every run's per-image test predictions beside their results file (<name>-predictions.npz), for McNemar tests and
test-set bootstraps. `--smoke OUT_DIR` runs a tiny version and writes to OUT_DIR, never to results/.
"""
from __future__ import annotations
import argparse, json, math, os, sys, time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault('MARGIN_NOTES_DATA', str(ROOT.parent / 'shared' / 'data'))

import margin_notes.probe as P
from margin_notes.core import atomic_write_json, seed_everything
from margin_notes.diagnose import diagnose, STATISTICS
from margin_notes.metrics import accuracy_report, aggregate_reports, difficulty_groups, per_class_accuracy
from margin_notes.mr2 import MR2Loss
from margin_notes.registry import register_method
from margin_notes.margins import optimal_margins
from margin_notes.models import Classifier

SEEDS = (0, 1, 2, 3, 4)

# ----------------------------------------------------------------------------------------------------------------------
# losses the library does not name: label smoothing (regularisation control) and MR² with another class statistic

class LabelSmoothingCE(nn.Module):
    "Cross-entropy with label smoothing eps (the regularisation control)."
    def __init__(self, label_smoothing: float): super().__init__(); self.eps = float(label_smoothing); self.last = {}
    def forward(self, logits, targets, features=None): return F.cross_entropy(logits, targets, label_smoothing=self.eps)

class StatMR2Loss(MR2Loss):
    """MR² whose margins follow another per-class statistic of the same EMA (book's own option, chapter 29):
    'spread' (gamma ∝ spread^(1/3), translation-invariant) or 'A_c' (centred second moment, needs stats_mode='moment')."""
    def __init__(self, num_classes, stat='spread', **kw):
        if stat == 'A_c': kw.setdefault('stats_mode', 'moment')
        super().__init__(num_classes, **kw); self.stat = stat
    def gammas(self):
        s = self.stats
        w = s.initialized.to(s.spread.dtype); n_seen = w.sum().clamp_min(1)    # averages below are over seen classes
        if self.stat == 'spread': v = s.spread
        elif self.stat == 'A_c':
            c = (s.mean * w[:, None]).sum(0) / n_seen      # mean of the class means
            v = ((s.mean - c) ** 2).sum(1) + s.spread
        else: raise ValueError(f"unknown statistic {self.stat!r}")
        # floor at 1e-3 of the mean over seen classes: a class seen once has zero spread, and gamma = 0 would divide
        # its logits by zero (never binding in the full runs; it keeps the smoke runs on a few images finite)
        floor = 1e-3 * (v * w).sum() / n_seen
        return optimal_margins(torch.maximum(v, floor), self.mean_margin, mask=s.initialized, eps=self.eps)

# the two losses become registry methods (chapter 18's extension point), so `probe.fit_method` trains them by name
register_method('erm-ls', 'CE + label smoothing', LabelSmoothingCE, color='#b0b0b0')
register_method('mr2-stat', 'MR² (margins from another statistic)', StatMR2Loss, first_arg='num_classes', needs_features=True,
                color='#f4a6a6')

# ----------------------------------------------------------------------------------------------------------------------
# a grid with validation: per-class accuracy on the scored test set and on the validation slice, per run

# per-image test predictions of every run of a grid ('<label>|seed<k>', post-hoc: '<label>|tau<t>|seed<k>') and the test
# labels; save_setting writes them beside the results file as <name>-predictions.npz (int16 arrays, no pickle)
PREDICTIONS: dict = {}

def predictions_path(path): return Path(path).with_name(Path(path).stem + '-predictions.npz')

def write_predictions(path, extra=None):
    "Write (and clear) the collected predictions for the results file `path`; `extra` adds those of merged parts."
    preds = {**(extra or {}), **PREDICTIONS}; PREDICTIONS.clear()
    if 'labels' not in preds: return
    keys = sorted(k for k in preds if k != 'labels')
    tmp = predictions_path(path).with_suffix('.tmp.npz')
    np.savez_compressed(tmp, labels=preds['labels'], runs=np.array(keys), predictions=np.stack([preds[k] for k in keys]))
    os.replace(tmp, predictions_path(path))

def read_predictions(path) -> dict:
    "The predictions written by write_predictions, as {'labels': ..., run key: array}; {} when there are none."
    f = predictions_path(path)
    if not f.exists(): return {}
    z = np.load(f, allow_pickle=False)
    return {'labels': z['labels'], **dict(zip(z['runs'].tolist(), z['predictions']))}

def _features_of(probe, inputs, bs=2048):
    m = probe.model; m.eval(); tf = probe.transform or (lambda x: x.float())
    with torch.no_grad(): return torch.cat([m.backbone(tf(inputs[i:i + bs])) for i in range(0, len(inputs), bs)])

def run_grid(make_model, xtr, ytr, xte, yte, xva, yva, configs, seeds, counts, stats_for=('erm',),
             log=lambda *a: print(*a, flush=True), **fit_kw):
    """configs: list of (label, method, loss_kwargs, fit_overrides, posthoc_taus or None).
    Returns runs[label] = [{'seed', 'per_class', 'val_per_class', 'seconds', ...}]; for labels in stats_for also the
    diagnosis (per-class statistics of the training features vs test error). The grid itself is the library's
    `probe.run_method_grid` (validation split, post-hoc tau grid, per-row fit overrides, predictions into PREDICTIONS)."""
    K = len(counts)
    def on_run(label, p, rec):
        if label in stats_for:
            rec['diagnosis'] = diagnose(_features_of(p, xtr), ytr, yte, p.scores(xte), class_counts=counts, num_classes=K, bootstrap=0)
        log(f"{label:24s} seed {rec['seed']}: test {100 * np.mean(rec['per_class']):5.1f}  val {100 * np.mean(rec['val_per_class']):5.1f}"
            f"  ({rec['seconds']:.1f} s)")
    g = P.run_method_grid(xtr, ytr, xte, yte, [c[:4] for c in configs], seeds, class_counts=counts, verbose=False,
                          make_model=make_model, val_feats=xva, val_labels=yva, add_erm=False, on_run=on_run, predictions=PREDICTIONS,
                          posthoc_taus={c[0]: c[4] for c in configs if c[4]}, **fit_kw)
    order = ('seed', 'seconds', 'tau', 'per_class', 'val_per_class', 'final_train', 'diagnosis')   # the records' key order
    return {label: [{k: r[k] for k in order if k in r} for r in rs] for label, rs in g['runs'].items()}

def select_on_val(runs, candidates, key='overall'):
    "The candidate label with the best mean validation overall accuracy."
    return max(candidates, key=lambda l: np.mean([np.mean(r['val_per_class']) for r in runs[l]]))

def summarise(runs, counts, difficulty):
    out = {}
    for label, rs in runs.items():
        for r in rs:
            r['report'] = accuracy_report(torch.tensor(r['per_class']), counts, difficulty)
        out[label] = aggregate_reports([r['report'] for r in rs])
        out[label]['seconds_per_run'] = float(np.mean([r['seconds'] for r in rs]))
        out[label]['val_overall'] = float(np.mean([np.mean(r['val_per_class']) for r in rs]))
    return out

# ----------------------------------------------------------------------------------------------------------------------
# CIFAR-10 (JPEG) probe features (chapter 26): scored test = test images 0-299 per class, validation = 300-399

def probe_data(smoke=False):
    settings = P.cifar10_probe_settings(500, (100, 10))   # the chunk of each setting is cached on its own (chapter 24)
    if smoke:
        settings = {'balanced': [8] * 10, 'lt100': [16, 13, 11, 9, 8, 6, 5, 5, 4, 4], 'lt10': [16, 15, 14, 13, 12, 11, 10, 9, 9, 8]}
        f = P.cifar10_probe_features(settings, size=64, test_per_class=8, pool_per_class=16, cache=False, verbose=False)
        n_test = 5
    else:
        f = P.cifar10_probe_features(settings, size=64, test_per_class=400); n_test = 300
    y = f['test_labels']
    rank = torch.zeros_like(y)
    for k in range(10): rank[y == k] = torch.arange(int((y == k).sum()))
    te, va = rank < n_test, rank >= n_test
    return f, (f['test_features'][te], y[te]), (f['test_features'][va], y[va])

PROBE_FIT = dict(epochs=30, batch_size=256, lr=0.05)
# DBM (on Balanced Softmax) with s = 8 instead of the paper's 32: the registry's `dbm`, the class default since chapter 29's scale sweep
DBM_S8 = ('dbm s=8', 'dbm', {}, {}, None)
_GRID = {label: name for label, name, _ in P.PROBE_GRID}   # a grid row's label -> the registry method it trains ('dbm' -> 'dbm-bs-s32')
def _rows(*labels): return [(m, _GRID.get(m, m), {}, {}, None) for m in labels]

# MR²'s rows: the paper's term at several lambda (the form the grids were run with), and the released form (the registry's `mr2`)
MR2_ROWS = [('mr2 λ=0', 'mr2-paper', dict(lam=0.0), {}, None), ('mr2 λ=1e-2', 'mr2-paper', dict(lam=1e-2), {}, None),
            ('mr2 λ=0.1 (paper)', 'mr2-paper', {}, {}, None), ('mr2 λ=0.1 normalised', 'mr2-paper', dict(rep_normalize=True), {}, None),
            ('mr2 λ=0.1 released', 'mr2', {}, {}, None)]

def run_probe(out_dir, smoke=False, settings=('balanced', 'lt100'), only=None, tag=''):
    "Chapter 26's grids; `only` restricts to some config labels and `tag` names a partial file (merged by `merge`)."
    feats, (xte, yte), (xva, yva) = probe_data(smoke)
    fit = dict(PROBE_FIT) if not smoke else dict(epochs=2, batch_size=32, lr=0.05)
    seeds = SEEDS if not smoke else (0, 1)
    pca, hidden = (128, 128) if not smoke else (16, 16)
    mr2 = MR2_ROWS + [('mr2 spread-margins λ=0', 'mr2-stat', dict(lam=0.0, stat='spread'), {}, None)]
    reg = [(f'erm wd={wd:g}', 'erm', {}, dict(weight_decay=wd), None) for wd in (2e-3, 5e-3)] + \
          [(f'erm ls={e:g}', 'erm-ls', dict(label_smoothing=e), {}, None) for e in (0.1, 0.2)]
    grids = {
        'balanced': _rows('erm') + reg + _rows('focal', 'ldam-drw', 'marc', 'dbm', 'lwr') + [DBM_S8] + mr2,
        'lt100': _rows('erm') + [('la-posthoc', 'la-posthoc', {}, {}, (0.5, 1.0, 1.5, 2.0))] +
                 _rows('focal', 'ldam-drw', 'bs', 'marc', 'dbm', 'lwr') +
                 [('dbm base=ce', 'dbm-ce-s32', {}, {}, None), DBM_S8] + MR2_ROWS,
    }
    grids['lt10'] = list(grids['lt100'])   # IF 10: the IF-100 grid
    for name, configs in grids.items():
        if name not in settings: continue
        if only is not None: configs = [c for c in configs if c[0] in only]
        xtr, ytr, counts = P.probe_setting(feats, name)
        t0 = time.time()
        proj = P.fit_pca(xtr, pca)
        Xtr, Xte, Xva = proj(xtr), proj(xte), proj(xva)
        D, K = Xtr.shape[1], 10
        def make_model(h, scale): return P.ProbeNet(D, K, hidden=hidden, head=h, cosine_scale=scale).fit_standardization(Xtr)
        runs = run_grid(make_model, Xtr, ytr, Xte, yte, Xva, yva, configs, seeds, counts, **fit)
        save_setting(out_dir / f"{name}{tag}.json", runs, counts, configs, dict(
            setting=name, data='CIFAR-10 (JPEG)' + ('' if name == 'balanced' else f"-LT, IF {name[2:]}"), class_counts=counts,
            n_train=len(ytr), n_test=len(yte), n_val=len(yva), subsample_seed=0, smoke=smoke,
            backbone='EfficientNet-Lite0 (ImageNet weights, timm tf_efficientnet_lite0)', input_size=64, pca=pca,
            pca_explained=proj.explained, hidden=hidden, optimizer='SGD momentum 0.9, half-cosine lr', **fit,
            default_weight_decay=5e-4, seeds=list(seeds), encode=feats['info'], wall_seconds=time.time() - t0,
            validation='CIFAR-10 (JPEG) test images 300-399 of every class (never scored); scored test: images 0-299',
            device=f"CPU, {torch.get_num_threads()} thread(s) on a shared 2-core machine", torch=torch.__version__,
            date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())))

def merge_parts(path, parts):
    "Merge partial grids (same setting, disjoint configs) written with a tag into one file."
    runs, configs, meta, preds = {}, [], None, {}
    for q in parts:
        g = json.loads(Path(q).read_text())
        preds = {**read_predictions(q), **preds}
        for m in g['methods']:
            lab = m['label']
            if lab in runs: continue
            runs[lab] = [{k: v for k, v in r.items() if k != 'report'} for r in g['runs'][lab]]
            configs.append((lab, m['method'], m['loss_kwargs'], m['fit'], (0.5, 1.0, 1.5, 2.0) if lab == 'la-posthoc' else None))
        if meta is None: meta = g['meta']
        else: meta['wall_seconds'] = max(meta['wall_seconds'], g['meta']['wall_seconds'])
    meta['note'] = f"merged from {len(parts)} processes run in parallel (disjoint methods)"
    save_setting(path, runs, meta['class_counts'], configs, meta, extra=preds)

def save_setting(path, runs, counts, configs, meta, extra=None):
    if 'erm' not in runs:   # a partial grid (no ERM to define the groups): raw runs only, for `merge_parts`
        atomic_write_json(path, {'runs': runs, 'class_counts': list(counts), 'partial': True, 'meta': meta,
                                 'methods': [dict(label=c[0], method=c[1], loss_kwargs=c[2], fit=c[3]) for c in configs]})
        write_predictions(path)
        print(f"wrote partial {path}", flush=True); return
    erm_val = torch.tensor([r['val_per_class'] for r in runs['erm']])
    difficulty = difficulty_groups(erm_val)            # from ERM on the validation slice, never from the scored test set
    sel = {}
    mr2c = [c[0] for c in configs if c[1] in ('mr2', 'mr2-paper')]
    if mr2c: sel['mr2'] = select_on_val(runs, mr2c)
    regc = [c[0] for c in configs if c[0] == 'erm' or c[0].startswith('erm wd') or c[0].startswith('erm ls')]
    if len(regc) > 1: sel['erm+reg'] = select_on_val(runs, regc)
    if 'la-posthoc' in runs:       # tau chosen on validation, then its test accuracy reported
        taus = list(runs['la-posthoc'][0]['tau'])
        best = max(taus, key=lambda t: np.mean([np.mean(r['tau'][t]['val_per_class']) for r in runs['la-posthoc']]))
        sel['la-posthoc tau'] = float(best)
        runs['la-posthoc (τ val)'] = [{**r, **r['tau'][best]} for r in runs['la-posthoc']]
    for k, v in list(sel.items()):
        if k in ('mr2', 'erm+reg'): runs[f"{k} (val-selected: {v})"] = runs[v]
    summary = summarise(runs, counts, difficulty)
    atomic_write_json(path, {'runs': runs, 'summary': summary, 'difficulty_groups': difficulty, 'class_counts': list(counts),
                             'seeds': meta['seeds'], 'selected': sel,
                             'methods': [dict(label=c[0], method=c[1], loss_kwargs=c[2], fit=c[3]) for c in configs],
                             'meta': meta})
    write_predictions(path, extra)
    print(f"wrote {path}", flush=True)

# ----------------------------------------------------------------------------------------------------------------------
# Fashion-MNIST (chapter 27): the small CNN; scored test = first 800 test images per class, validation = last 200

class FmnistCNN(Classifier):
    """conv(16, stride 2)-conv(32, stride 2)-fc(128)-ReLU features and a linear or cosine head: the one Fashion-MNIST network
    (chapter 27 imports it, scripts/dose_response.py and `UserCNN` reuse it). Wrapper and head are the library's; the
    layers are not: `models.SmallCNN` is another network (conv-BN without bias, global pooling, 64-d features). Backbone
    built before the head, so a seed gives the weights the committed results were trained from."""
    def __init__(self, num_classes=10, head='linear', cosine_scale=1.0, feature_dim=128):
        bb = nn.Sequential(nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.ReLU(),
                           nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                           nn.Flatten(), nn.Linear(32 * 7 * 7, feature_dim), nn.ReLU())
        super().__init__(bb, P.make_scaled_head(feature_dim, num_classes, head, cosine_scale), feature_dim, arch='fmnist-cnn')

def image_transform(mean, std):
    m, s = float(mean[0]), float(std[0])
    return lambda x: (x.float() / 255.0 - m) / s

def fmnist(imbalance_factor=None, smoke=False, n_val=200, subsample_seed=0):
    "Fashion-MNIST(-LT) (subsample seed 0 unless told) and the test split: the last n_val test images of a class validate."
    from margin_notes.data import load_dataset
    d = load_dataset('fmnist', imbalance_factor=imbalance_factor, subsample_seed=subsample_seed, max_per_class=60 if smoke else None)
    y = d.test_labels; rank = torch.zeros_like(y)
    for k in range(10): rank[y == k] = torch.arange(int((y == k).sum()))
    n_k = int((y == 0).sum()); nv = n_val if not smoke else 20
    te, va = rank < n_k - nv, rank >= n_k - nv
    return d, (d.test_images[te], y[te]), (d.test_images[va], y[va])

FMNIST_FIT = dict(epochs=10, batch_size=128, lr=0.05)

def run_fmnist(out_dir, smoke=False, only=None, tag=''):
    d, (xte, yte), (xva, yva) = fmnist(100, smoke)
    fit = dict(FMNIST_FIT) if not smoke else dict(epochs=1, batch_size=32, lr=0.05)
    seeds = SEEDS if not smoke else (0, 1)
    configs = _rows('erm') + [('la-posthoc', 'la-posthoc', {}, {}, (0.5, 1.0, 1.5, 2.0))] + \
              _rows('focal', 'ldam-drw', 'bs', 'marc', 'dbm', 'lwr') + [DBM_S8] + MR2_ROWS
    if only is not None: configs = [c for c in configs if c[0] in only]
    t0 = time.time()
    counts = list(d.class_counts)
    runs = run_grid(lambda h, s: FmnistCNN(10, h, s), d.train_images, d.train_labels, xte, yte, xva, yva, configs, seeds,
                    counts, transform=image_transform(d.mean, d.std), **fit)
    save_setting(out_dir / f'validated{tag}.json', runs, counts, configs, dict(
        data=d.label, dataset=d.name, class_counts=counts, n_train=len(d.train_labels), n_test=len(yte), n_val=len(yva),
        subsample_seed=0, imbalance_factor=100, model='SmallCNN conv16/2-conv32/2-fc128', smoke=smoke, **fit,
        optimizer='SGD momentum 0.9, wd 5e-4, half-cosine lr', seeds=list(seeds), wall_seconds=time.time() - t0,
        validation='Fashion-MNIST test images 800-999 of every class (file order; never scored); scored test: images 0-799',
        device=f"CPU, {torch.get_num_threads()} thread(s) on a shared 2-core machine", torch=torch.__version__,
        date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())))

# ----------------------------------------------------------------------------------------------------------------------
# the premise (chapter 29): per-class statistics of ERM models vs their per-class error

def _diag_summary(ds):
    "Across-seed mean and t-interval of each statistic's Spearman rho, plus the per-seed values."
    from scipy.stats import t as tdist
    out = {}
    for s in STATISTICS + ('count',):
        v = np.array([next(c['spearman_vs_error'] for c in d['correlations'] if c['statistic'] == s) for d in ds])
        v = v[np.isfinite(v)]
        if len(v) >= 2:
            h = tdist.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
            out[s] = {'mean': float(v.mean()), 'ci_low': float(v.mean() - h), 'ci_high': float(v.mean() + h), 'per_seed': v.tolist()}
        else: out[s] = {'mean': float(v.mean()) if len(v) else float('nan'), 'ci_low': float('nan'), 'ci_high': float('nan'),
                        'per_seed': v.tolist()}
    return out

def _per_class_mean(ds):
    keys = ('acc',) + STATISTICS + tuple(f'gamma_{s}' for s in STATISTICS)
    return [{**{'class': ds[0]['per_class'][k]['class'], 'count': ds[0]['per_class'][k]['count']},
             **{key: float(np.mean([d['per_class'][k][key] for d in ds])) for key in keys}} for k in range(len(ds[0]['per_class']))]

def premise_entry(name, ds, classes, note):
    for d in ds:
        for k, r in enumerate(d['per_class']): r['class'] = classes[k]
    return {'name': name, 'note': note, 'seeds': len(ds), 'correlations': _diag_summary(ds), 'per_class': _per_class_mean(ds),
            'overall_accuracy': float(np.mean([d['overall_accuracy'] for d in ds])),
            'spread_share': float(np.mean([d['spread_share'] for d in ds])), 'per_seed': ds}

def run_premise(out_dir, smoke=False, log=lambda *a: print(*a, flush=True), parts=('resnet', 'effnet', 'fmnist', 'digits')):
    from margin_notes.data import CIFAR10_CLASSES, FMNIST_CLASSES
    seeds = (0, 1, 2) if not smoke else (0, 1)
    entries, t_all = [], time.time()
    # (a) the reference ResNet-32 (balanced CIFAR-10, real images) on CIFAR-10 (JPEG)
    from margin_notes.core import find_data
    w = find_data('weights/resnet32-d509ac18.th')
    if w is not None and 'resnet' in parts:
        from margin_notes.models import resnet32, predict
        from margin_notes.data import cifar10_jpeg_arrays, CIFAR_MEAN, CIFAR_STD
        a = cifar10_jpeg_arrays(max_per_class=20 if smoke else None)
        (xtr, ytr), (xte, yte) = a['train'], a['test']
        n, n_te = (10, 10) if smoke else (1000, 1000)   # 10,000 training images (seeded subsample) and the whole test split
        te = torch.cat([torch.nonzero(yte == k).flatten()[:n_te] for k in range(10)]); xte, yte = xte[te], yte[te]
        g = torch.Generator().manual_seed(0)
        keep = torch.cat([torch.nonzero(ytr == k).flatten()[torch.randperm(int((ytr == k).sum()), generator=g)[:n]] for k in range(10)])
        model = resnet32(10, weights=w).eval()
        t0 = time.time()
        m = torch.tensor(CIFAR_MEAN).view(1, -1, 1, 1); s = torch.tensor(CIFAR_STD).view(1, -1, 1, 1)
        with torch.no_grad():
            ftr = torch.cat([model.backbone((xtr[keep][i:i + 500].float() / 255 - m) / s) for i in range(0, len(keep), 500)])
            fte = torch.cat([model.backbone((xte[i:i + 500].float() / 255 - m) / s) for i in range(0, len(xte), 500)])
            pte = model.head(fte).argmax(1)
        d = diagnose(ftr, ytr[keep], yte, pte, num_classes=10, bootstrap=200 if not smoke else 5)
        e = premise_entry('resnet32-cifar10', [d], CIFAR10_CLASSES, (
            f"reference ResNet-32 trained on real balanced CIFAR-10; statistics from {len(keep):,} training images "
            f"({n}/class, seeded subsample), error on {len(yte):,} CIFAR-10 (JPEG) test images (the first {n_te}/class); one model: the interval "
            "is a bootstrap over images"))
        e['bootstrap_ci'] = {c['statistic']: [c['ci_low'], c['ci_high']] for c in d['correlations']}
        entries.append(e); log(f"resnet32: {time.time() - t0:.0f} s, acc {100 * d['overall_accuracy']:.1f}")
    # (b) EfficientNet-Lite0 probe (chapter 26): the ERM probe's adapter features, and the frozen backbone features
    if find_data('cifar10-jpeg.tar.gz') is not None and 'effnet' in parts:
        feats, (xte, yte), (xva, yva) = probe_data(smoke)
        for name in ('balanced', 'lt100'):
            xtr, ytr, counts = P.probe_setting(feats, name)
            proj = P.fit_pca(xtr, 128 if not smoke else 16)
            Xtr, Xte = proj(xtr), proj(xte)
            def make_model(h, sc): return P.ProbeNet(Xtr.shape[1], 10, hidden=128 if not smoke else 16, head=h,
                                                     cosine_scale=sc).fit_standardization(Xtr)
            ds, raw = [], []
            for seed in seeds:
                p = P.fit_method(make_model, Xtr, ytr, 'erm', seed=seed, class_counts=counts,
                                 **(PROBE_FIT if not smoke else dict(epochs=2, batch_size=32)))
                sc = p.scores(Xte)
                ds.append(diagnose(_features_of(p, Xtr), ytr, yte, sc, class_counts=counts, num_classes=10, bootstrap=0))
                raw.append(diagnose(xtr, ytr, yte, sc, class_counts=counts, num_classes=10, bootstrap=0))
            lab = 'balanced' if name == 'balanced' else 'LT, IF 100'
            entries.append(premise_entry(f'effnet-probe-{name}', ds, CIFAR10_CLASSES,
                                         f"EfficientNet-Lite0 probe (chapter 26), {lab}: the ERM probe's 128-d adapter features"))
            entries.append(premise_entry(f'effnet-backbone-{name}', raw, CIFAR10_CLASSES,
                                         f"EfficientNet-Lite0 probe (chapter 26), {lab}: the frozen 1,280-d backbone features, "
                                         "error of the same ERM probes"))
            log(f"effnet {name} done")
    # (c) Fashion-MNIST, the chapter-21 CNN, balanced and LT IF 100
    for IF in ((None, 100) if 'fmnist' in parts else ()):
        d, (xte, yte), _ = fmnist(IF, smoke)
        ds = []
        for seed in seeds:
            fit = dict(FMNIST_FIT) if not smoke else dict(epochs=1, batch_size=32)   # ten epochs, as in chapter 27
            p = P.fit_method(lambda h, s: FmnistCNN(10, h, s), d.train_images, d.train_labels, 'erm', seed=seed,
                             class_counts=d.class_counts, transform=image_transform(d.mean, d.std), **fit)
            ds.append(diagnose(_features_of(p, d.train_images), d.train_labels, yte, p.scores(xte),
                               class_counts=d.class_counts, num_classes=10, bootstrap=0))
        nm = 'fmnist-balanced' if IF is None else 'fmnist-lt100'
        entries.append(premise_entry(nm, ds, FMNIST_CLASSES, f"chapter 27's CNN, ERM, {fit['epochs']} epochs, Fashion-MNIST "
                                     + ('balanced (6,000/class)' if IF is None else 'LT, IF 100') + "; error on the scored 8,000 test images"))
        log(f"{nm} done")
    # (d) scikit-learn digits: an MLP (64-128-64, ReLU), ERM
    from margin_notes.data import load_dataset
    dg = load_dataset('digits')
    class MLP(nn.Module):
        def __init__(self, head, scale):
            super().__init__()
            self.backbone = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU())
            self.head = P.make_scaled_head(64, 10, head, scale)
        def forward(self, x): return self.head(self.backbone(x))
    ds = []
    for seed in (seeds if 'digits' in parts else ()):
        tf = image_transform(dg.mean, dg.std)
        p = P.fit_method(lambda h, s: MLP(h, s), dg.train_images, dg.train_labels, 'erm', seed=seed, transform=tf,
                         epochs=40 if not smoke else 2, batch_size=64, lr=0.05)
        ds.append(diagnose(_features_of(p, dg.train_images), dg.train_labels, dg.test_labels, p.scores(dg.test_images),
                           num_classes=10, bootstrap=0))
    if ds: entries.append(premise_entry('digits', ds, [str(k) for k in range(10)],
                                 "scikit-learn digits, MLP 64-128-64, ERM 40 epochs; 50 held-out images per class"))
    atomic_write_json(out_dir / f"premise-{'-'.join(parts)}.json", {'entries': entries, 'seeds': list(seeds), 'smoke': smoke,
                                                 'wall_seconds': time.time() - t_all,
                                                 'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})
    log(f"wrote premise-{'-'.join(parts)}.json")

# ----------------------------------------------------------------------------------------------------------------------
# defaults, tried as a new user would: own small CNN, Fashion-MNIST-LT IF 50, 3 epochs, 3 seeds

class UserCNN(FmnistCNN):
    """The network of a new user's own loop: `FmnistCNN` (conv16/2-conv32/2-fc128-ReLU) with a linear head (an nn.Linear)
    or the cosine (DBM) head, returning (features, scores); same layers, same seeded weights as before."""
    def __init__(self, cosine=False): super().__init__(10, 'cosine' if cosine else 'linear')
    def forward(self, x):
        f = self.backbone(x); return f, self.head(f)

def train_user_cnn(d, tf, cosine, mk, seed, epochs):
    """One run of a new user's own training loop (deliberately not the library's `fit`: this is the code a user
    writes around a loss): `UserCNN`, SGD lr 0.05 (constant), momentum 0.9, wd 5e-4, batch 128, seeded order;
    returns the per-class test accuracy of the last epoch (chapter 29's defaults table and scale sweep)."""
    seed_everything(seed); g = torch.Generator().manual_seed(seed)
    net, loss = UserCNN(cosine), mk()
    rep = repr(loss)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    N = len(d.train_labels); t0 = time.time()
    for ep in range(epochs):
        net.train(); loss.train()
        perm = torch.randperm(N, generator=g)
        for i in range(0, N, 128):
            idx = perm[i:i + 128]; x, y = tf(d.train_images[idx]), d.train_labels[idx]
            f, out = net(x)
            l = loss(out, y) if isinstance(loss, nn.CrossEntropyLoss) else loss(out, y, features=f)
            opt.zero_grad(); l.backward(); opt.step()
    net.eval()
    with torch.no_grad(): pred = torch.cat([net(tf(d.test_images[i:i + 2000]))[1].argmax(1) for i in range(0, len(d.test_labels), 2000)])
    acc = per_class_accuracy(pred, d.test_labels, len(d.class_counts))
    return {'seed': seed, 'per_class': acc.tolist(), 'overall': float(acc.mean()), 'seconds': time.time() - t0, 'loss_repr': rep}

def run_defaults(out_dir, smoke=False, extra=False, only=None):
    from margin_notes.data import load_dataset
    from margin_notes.dbm import DBMLoss
    d = load_dataset('fmnist', imbalance_factor=50, subsample_seed=0, max_per_class=60 if smoke else None)
    counts = list(d.class_counts); K = 10
    tf = image_transform(d.mean, d.std)
    cfgs = [('CE', False, lambda: nn.CrossEntropyLoss()),
            ('MR2Loss(K, lam=0.1, variant="paper")', False, lambda: MR2Loss(K, lam=0.1, variant='paper')),
            ('MR2Loss(K, lam=0.1, variant="released")', False, lambda: MR2Loss(K, lam=0.1, variant='released')),
            ('MR2Loss(K, lam=0.1, rep_normalize=True)', False, lambda: MR2Loss(K, lam=0.1, variant='paper', rep_normalize=True)),
            ('DBMLoss(counts, base="ce", scale=32)', True, lambda: DBMLoss(counts, base='ce', scale=32.0)),
            ('DBMLoss(counts, base="bs", scale=32)', True, lambda: DBMLoss(counts, base='bs', scale=32.0)),
            ('DBMLoss(counts)', True, lambda: DBMLoss(counts))]   # the library default since chapter 29's scale check: base 'bs', s = 8
    if extra:   # references for DBM: the same head with plain CE / BS on s * cos, and BS on the linear head
        from margin_notes.baselines import BalancedSoftmaxLoss
        class ScaledCos(nn.Module):
            def __init__(self, base, s=32.0): super().__init__(); self.base, self.s = base, s
            def forward(self, cos, y, features=None): return self.base(self.s * cos, y)
        cfgs = [('CE on s·cos (cosine head, s=32)', True, lambda: ScaledCos(nn.CrossEntropyLoss())),
                ('BalancedSoftmaxLoss(counts) on s·cos (s=32)', True, lambda: ScaledCos(BalancedSoftmaxLoss(counts))),
                ('BalancedSoftmaxLoss(counts) (linear head)', False, lambda: BalancedSoftmaxLoss(counts))]
    if only is not None: cfgs = [c for c in cfgs if c[0] in only]
    seeds = (0, 1, 2) if not smoke else (0,)
    epochs = 3 if not smoke else 1
    res, t_all = {}, time.time()
    for label, cos, mk in cfgs:
        res[label] = []
        for seed in seeds:
            r = train_user_cnn(d, tf, cos, mk, seed, epochs)
            res[label].append(r)
            print(f"{label:40s} seed {seed}: {100 * r['overall']:5.1f} %  worst {100 * min(r['per_class']):5.1f}", flush=True)
    out_name = 'defaults-references.json' if extra else ('defaults.json' if only is None else 'defaults-part.json')
    atomic_write_json(out_dir / out_name, {'results': res, 'class_counts': counts, 'data': d.label, 'epochs': epochs,
                                                  'seeds': list(seeds), 'smoke': smoke,
                                                  'model': 'conv16/2-conv32/2-fc128 (linear head; CosineClassifier for DBM)',
                                                  'optimizer': 'SGD lr 0.05 (constant), momentum 0.9, wd 5e-4, batch 128',
                                                  'test': 'Fashion-MNIST test set, 10,000 images', 'wall_seconds': time.time() - t_all,
                                                  'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})
    print(f"wrote {out_dir}")

# ----------------------------------------------------------------------------------------------------------------------
# DBM's scale on digits (chapter 29): the engine's digits-lt recipe, DBM-BS at s = 8, 16 and 32 against ERM and BS

def run_dbm_digits(out_dir, smoke=False):
    import tempfile
    from margin_notes.presets import get_config
    from margin_notes.engine import fit
    rows = {'ERM (linear head)': ('digits-lt-erm', {}), 'BS (linear head)': ('digits-lt-bs', {})}
    for s in (8, 16, 32): rows[f'DBMLoss(counts, scale={s})'] = ('digits-lt-dbm', {'loss': 'dbm', 'loss_kwargs': {'scale': float(s)}})
    seeds = SEEDS if not smoke else (0,)
    res, t_all = {}, time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for label, (preset, over) in rows.items():
            res[label] = []
            for seed in seeds:
                cfg = get_config(preset, {**over, 'seed': seed, 'progress': False, 'smoke': smoke})
                r = fit(cfg, Path(tmp) / f"{preset}-{len(res)}-{seed}", verbose=False)
                acc = r['per_class_accuracy']
                res[label].append({'seed': seed, 'per_class': acc, 'overall': float(np.mean(acc))})
                print(f"{label:28s} seed {seed}: {100 * np.mean(acc):5.1f} %  worst {100 * np.min(acc):5.1f}", flush=True)
    atomic_write_json(out_dir / 'dbm-scale-digits.json', {
        'results': res, 'presets': {k: v[0] for k, v in rows.items()}, 'overrides': {k: v[1] for k, v in rows.items()},
        'seeds': list(seeds), 'smoke': smoke, 'data': 'scikit-learn digits, long-tailed IF 20 (the digits-lt presets), 250 test images',
        'wall_seconds': time.time() - t_all, 'torch': torch.__version__, 'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})
    print(f"wrote {out_dir / 'dbm-scale-digits.json'}")

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('what', choices=['premise', 'probe', 'fmnist', 'defaults', 'dbm-digits'])
    ap.add_argument('--smoke', default=None, help='run a tiny version and write into this folder (never results/)')
    ap.add_argument('--parts', default='resnet,effnet,fmnist,digits', help='premise: which models (comma-separated)')
    ap.add_argument('--settings', default='balanced,lt100', help='probe: which settings')
    ap.add_argument('--extra', action='store_true', help='defaults: the reference losses on the same heads')
    ap.add_argument('--only', default=None, help='probe/fmnist/defaults: only these config labels (|-separated); defaults: writes defaults-part.json')
    ap.add_argument('--tag', default='', help='probe: suffix of the partial output file')
    ap.add_argument('--merge', default=None, help='probe: merge these partial files (|-separated) into SETTING.json')
    a = ap.parse_args()
    smoke = a.smoke is not None
    out = Path(a.smoke) if smoke else ROOT / 'results' / {'premise': 'premise', 'probe': 'cpu_features', 'fmnist': 'fmnist_lt',
                                                          'defaults': 'defaults', 'dbm-digits': 'defaults'}[a.what]
    out.mkdir(parents=True, exist_ok=True)
    if a.what == 'premise': run_premise(out, smoke=smoke, parts=tuple(a.parts.split(',')))
    elif a.what == 'defaults': run_defaults(out, smoke=smoke, extra=a.extra, only=None if a.only is None else a.only.split('|'))
    elif a.what == 'dbm-digits': run_dbm_digits(out, smoke=smoke)
    elif a.what == 'probe' and a.merge: merge_parts(out / f"{a.settings}.json", a.merge.split('|'))
    elif a.what == 'probe': run_probe(out, smoke=smoke, settings=tuple(a.settings.split(',')),
                                      only=None if a.only is None else a.only.split('|'), tag=a.tag)
    elif a.what == 'fmnist' and a.merge: merge_parts(out / 'validated.json', a.merge.split('|'))
    elif a.what == 'fmnist': run_fmnist(out, smoke=smoke, only=None if a.only is None else a.only.split('|'), tag=a.tag)
