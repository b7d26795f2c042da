"""Dose-response of MR²'s logit margins (results/dose_response): do larger class-margin ratios move accuracy?

    python scripts/dose_response.py [--grid dose|dbm-scale] [--setting fmnist-lt100|fmnist-balanced|probe-lt100|probe-balanced] [--smoke OUT_DIR]

MR²'s logit term divides the logits of a sample of class k by a class margin gamma_k (a per-class temperature); the
rule of chapter 02 sets gamma_k proportional to A_k^(1/3), where A_k is the class statistic of chapter 03. If margins
alone matter, making the ratio max(gamma)/min(gamma) larger should move per-class accuracy more. Each run below trains
chapter 27's CNN (or, with --setting probe-*, chapter 26's probe on CIFAR-10 (JPEG) features) with the margins only (lambda = 0, no representation term) and one "dose":

- power p in {1/3, 1, 2}: gamma_k ∝ v_k^p, where v_k is MR²'s statistic A_k ('A') or the class spread s_k ('spread');
- a fixed ratio r in {2, 4}: gamma spaced geometrically from 1 to r by the rank of v_k;
- the reversed direction (the class with the largest v gets the smallest gamma) at p = 1, a control;

each margin floored at 0.1 of the mean margin (MR²'s own floor) and all normalised to a mean margin of 1 over the
classes seen so far, and the margins are recomputed at every step from
the running statistics (as MR² does). The gamma of every training step is recorded, and the results keep gamma at the
end of every epoch, so the ratio actually applied is known. CE (gamma = 1 for every class) is the reference; every
configuration runs on the same seeds, so differences are paired. Validation (Fashion-MNIST): the last 200 test images of every class
(never scored); scored: the first 800. Per-image predictions of every run are kept (predictions.npz).

`--grid methods --subsample-seed k` trains the main methods on another long-tailed subsample of Fashion-MNIST (the
same profile, other images), to see how much of a difference between methods belongs to the one subsample the book
uses.

`--grid dbm-scale` runs the controls for DBM's default scale on the same data and split: Balanced Softmax on a
linear head, Balanced Softmax on a cosine head at s in {4, 8, 16, 32} (is DBM's gain the cosine head's?), and DBM
(Balanced-Softmax base) at s in {4, 8, 16, 32}; each family's s is chosen on the validation images.
"""
from __future__ import annotations
import argparse, math, sys, time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / 'scripts'))

import referee_experiments as R   # registers its methods; gives the CNN, the data split and the probe trainer
from margin_notes.core import atomic_write_json
from margin_notes.metrics import accuracy_report, aggregate_reports, difficulty_groups, per_class_accuracy
from margin_notes.mr2 import MR2Loss
from margin_notes.registry import register_method

P = R.P


class DoseMR2Loss(MR2Loss):
    """MR²'s logit margins alone (lam = 0) at a chosen dose: gamma_k ∝ v_k**power, or a fixed max/min `ratio` spaced
    geometrically by the rank of v_k; v is MR²'s statistic ('A') or the spread ('spread'); direction -1 reverses.
    Every training step's gamma is appended to `self.trace`; the last instance made is `DoseMR2Loss.latest`."""
    latest = None

    def __init__(self, num_classes, stat='A', power=1 / 3, ratio=None, direction=1, **kw):
        kw['lam'] = 0.0
        super().__init__(num_classes, **kw)
        if stat not in ('A', 'spread'): raise ValueError(f"`stat` must be 'A' or 'spread', got {stat!r}")
        if direction not in (1, -1): raise ValueError(f"`direction` must be 1 or -1, got {direction!r}")
        self.stat, self.power, self.ratio, self.direction = stat, float(power), ratio, int(direction)
        self.trace = []
        DoseMR2Loss.latest = self

    def gammas(self):
        s = self.stats; init = s.initialized
        v = (s.variability if self.stat == 'A' else s.spread).double()
        w = init.to(v.dtype); n = w.sum().clamp_min(1)
        floor = 1e-3 * (v * w).sum() / n + 1e-12
        v = torch.maximum(v, floor)
        if self.ratio is None:
            g = v ** (self.direction * self.power)
        else:   # rank of v among the seen classes (0 = smallest), mapped to ratio ** (rank / (n - 1))
            key = torch.where(init, self.direction * v, torch.full_like(v, float('inf')))
            rank = torch.empty_like(v); rank[key.argsort()] = torch.arange(len(v), dtype=v.dtype)
            g = float(self.ratio) ** (rank / (n - 1).clamp_min(1))
        g = torch.where(init, g, torch.zeros_like(g))
        if self.ratio is None:   # MR²'s margin floor, applied to the dosed margins: at least 0.1 of their mean (seen classes)
            g = torch.where(init, torch.maximum(g, self.margin_floor * g.sum() / n), g)
        g = g * self.mean_margin * n / g.sum().clamp_min(1e-12)           # mean over the seen classes = mean_margin
        return torch.where(init, g, torch.full_like(g, self.mean_margin)).to(s.variability.dtype)

    def forward(self, logits, targets, features=None):
        loss = super().forward(logits, targets, features)
        if self.training: self.trace.append(self.last['gamma'].float().cpu())
        return loss


register_method('mr2-dose', "MR²'s logit margins at a chosen dose (scripts/dose_response.py)", DoseMR2Loss,
                first_arg='num_classes', needs_features=True, color='#c080c0')

# (label, method, loss_kwargs, fit overrides); CE is the reference, 'A p=1/3' is MR²'s own rule with lambda = 0
CONFIGS = [('CE', 'erm', None, {})] + [
    (f"{stat} {dose}", 'mr2-dose', dict(stat=stat, **kw), {}) for stat in ('A', 'spread')
    for dose, kw in (('p=1/3', dict(power=1 / 3)), ('p=1', dict(power=1.0)), ('p=2', dict(power=2.0)),
                     ('ratio 2', dict(ratio=2.0)), ('ratio 4', dict(ratio=4.0)), ('reversed p=1', dict(power=1.0, direction=-1)))]
SCALES = (4.0, 8.0, 16.0, 32.0)
DBM_CONFIGS = [('BS', 'bs', None, {})] + \
    [(f"BS cosine s={s:g}", 'bs', None, dict(head='cosine', cosine_scale=s)) for s in SCALES] + \
    [(f"DBM s={s:g}", 'dbm', dict(scale=s), {}) for s in SCALES]
METHOD_CONFIGS = [(m, m, None, {}) for m in ('erm', 'bs', 'la-posthoc', 'marc', 'dbm', 'bs-lwr', 'mr2')]
GRIDS = {'dose': CONFIGS, 'dbm-scale': DBM_CONFIGS, 'methods': METHOD_CONFIGS}


def run(out_dir: Path, setting='fmnist-lt100', smoke=False, seeds=(0, 1, 2), grid='dose', subsample_seed=0):
    configs = GRIDS[grid]; stem = setting if grid == 'dose' else f"{grid}-{setting}"
    if subsample_seed: stem += f"-ss{subsample_seed}"
    K, res, t_all = 10, {}, time.time()
    seeds = seeds if not smoke else (0,)
    if setting.startswith('fmnist'):
        IF = 100 if setting == 'fmnist-lt100' else None
        d, (xte, yte), (xva, yva) = R.fmnist(IF, smoke, subsample_seed=subsample_seed)
        xtr, ytr, counts = d.train_images, d.train_labels, list(d.class_counts)
        fit = dict(R.FMNIST_FIT) if not smoke else dict(epochs=1, batch_size=32, lr=0.05)
        fit['transform'] = R.image_transform(d.mean, d.std)
        make_model = lambda h, s: R.FmnistCNN(K, h, s)
        data = dict(data=f"Fashion-MNIST{'-LT, IF 100' if IF else ' (balanced)'}", model='SmallCNN conv16/2-conv32/2-fc128',
                    validation='the last 200 test images of every class (never scored); scored: the first 800')
    elif subsample_seed: raise ValueError('--subsample-seed is offered for the Fashion-MNIST settings only')
    else:   # chapter 26's probe: EfficientNet-Lite0 features of CIFAR-10 (JPEG), PCA 128, a one-hidden-layer adapter
        feats, (xte, yte), (xva, yva) = R.probe_data(smoke)
        xtr, ytr, counts = P.probe_setting(feats, setting.split('-', 1)[1])
        pca, hidden = (128, 128) if not smoke else (16, 16)
        proj = P.fit_pca(xtr, pca); xtr, xte, xva = proj(xtr), proj(xte), proj(xva)
        fit = dict(R.PROBE_FIT) if not smoke else dict(epochs=2, batch_size=32, lr=0.05)
        Dm = xtr.shape[1]
        make_model = lambda h, s: P.ProbeNet(Dm, K, hidden=hidden, head=h, cosine_scale=s).fit_standardization(xtr)
        counts = [int(c) for c in counts]
        data = dict(data=f"CIFAR-10 (JPEG) probe features, setting {setting.split('-', 1)[1]}",
                    model=f'EfficientNet-Lite0 features (frozen), PCA {pca}, adapter {hidden}',
                    validation='CIFAR-10 (JPEG) test images 300-399 of every class (never scored); scored: images 0-299')
    R.PREDICTIONS.clear(); R.PREDICTIONS['labels'] = yte.numpy().astype(np.int8)
    for label, method, kw, over in configs:
        res[label] = []
        for seed in seeds:
            t0 = time.time()
            p = P.fit_method(make_model, xtr, ytr, method, seed=seed, class_counts=counts, loss_kwargs=kw, **fit, **over)
            with torch.no_grad():
                pte, pva = p.scores(xte).argmax(1), p.scores(xva).argmax(1)
            rec = {'seed': seed, 'seconds': time.time() - t0,
                   'per_class': per_class_accuracy(pte, yte, K).tolist(),
                   'val_per_class': per_class_accuracy(pva, yva, K).tolist()}
            if method == 'mr2-dose':
                tr = torch.stack(DoseMR2Loss.latest.trace)
                spe = len(tr) // fit['epochs']
                per_epoch = tr[spe - 1::spe][:fit['epochs']]
                rec['gamma_per_epoch'] = per_epoch.tolist()
                rec['gamma_ratio_per_epoch'] = (per_epoch.max(1).values / per_epoch.min(1).values).tolist()
                rec['gamma_ratio_final'] = float(rec['gamma_ratio_per_epoch'][-1])
            res[label].append(rec)
            R.PREDICTIONS[f"{label}|seed{seed}"] = pte.numpy().astype(np.int8)
            print(f"{label:18s} seed {seed}: test {100 * np.mean(rec['per_class']):5.1f}  worst {100 * min(rec['per_class']):5.1f}"
                  f"  ratio {rec.get('gamma_ratio_final', 1.0):6.2f}  ({rec['seconds']:.1f} s)", flush=True)
    # difficulty groups from CE's validation accuracy (seed-mean), as in chapter 27
    ref = configs[0][0]
    ce_val = np.mean([r['val_per_class'] for r in res[ref]], axis=0)
    groups = difficulty_groups(torch.tensor(ce_val))
    summary = {}
    for label, rs in res.items():
        for r in rs: r['report'] = accuracy_report(torch.tensor(r['per_class']), counts, groups)
        summary[label] = aggregate_reports([r['report'] for r in rs])
        if 'gamma_ratio_final' in rs[0]:
            summary[label]['gamma_ratio_final'] = float(np.mean([r['gamma_ratio_final'] for r in rs]))
    out_dir.mkdir(parents=True, exist_ok=True)
    chosen = {}   # each family's scale chosen on the validation images (dbm-scale)
    for fam in ('BS cosine', 'DBM'):
        cands = [l for l, *_ in configs if l.startswith(fam + ' s=')]
        if cands: chosen[fam] = R.select_on_val(res, cands)
    R.write_predictions(out_dir / f"{stem}.json")
    atomic_write_json(out_dir / f"{stem}.json", {
        'grid': grid, 'subsample_seed': subsample_seed, 'runs': res, 'summary': summary, 'chosen_on_validation': chosen,
        'configs': {l: dict(method=m, loss_kwargs=kw, overrides=o) for l, m, kw, o in configs}, 'class_counts': counts,
        'difficulty_groups': {k: [int(i) for i in v] for k, v in groups.items()} if isinstance(groups, dict) else groups,
        'seeds': list(seeds), 'smoke': smoke,
        'meta': dict(**data, **{k: v for k, v in fit.items() if k != 'transform'},
                     optimizer='SGD momentum 0.9, wd 5e-4, half-cosine lr',
                     **(dict(mean_margin=1.0, lam=0.0) if grid == 'dose' else {}),   # the dosed MR² rows' fixed options
                     device=f"CPU, {torch.get_num_threads()} thread(s)", torch=torch.__version__,
                     wall_seconds=time.time() - t_all, date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()))})
    print(f"wrote {out_dir / f'{stem}.json'}")


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--setting', default='fmnist-lt100', choices=['fmnist-lt100', 'fmnist-balanced', 'probe-lt100', 'probe-balanced'])
    ap.add_argument('--grid', default='dose', choices=list(GRIDS))
    ap.add_argument('--subsample-seed', type=int, default=0, help='Fashion-MNIST: seed of the long-tailed subsample (0: the book\'s)')
    ap.add_argument('--smoke', default=None, help='run a tiny version and write into this folder (never results/)')
    a = ap.parse_args()
    run(Path(a.smoke) if a.smoke else ROOT / 'results' / 'dose_response', a.setting, smoke=a.smoke is not None, grid=a.grid,
        subsample_seed=a.subsample_seed)
