"""The preface's "What the book found" (nbs/index.ipynb): every number recomputed from the committed results/ files.

Each statement of the section is checked by one test below: the numbers are recomputed the way the linked
chapter computes them (the same rows, the same paired tests and Holm families, the same permutation test) and
the sentence fragment that quotes them must appear in the preface as written. A changed results file, a changed
sentence or a claim the data no longer supports (a tie that became significant, a row that has now been run)
fails here. The chapter table, links, citations and the reader's vocabulary of the preface are checked at the end.
"""
import json, re
from pathlib import Path

import numpy as np
import pytest

from margin_notes.diagnose import class_permutation_test, class_verdict
from margin_notes.metrics import mcnemar_test, paired_tests

ROOT = Path(__file__).resolve().parents[1]
R = ROOT / 'results'
NBS = ROOT / 'nbs'
HOLM = r'$p_{\text{Holm}}'


# ---------------------------------------------------------------- the preface
def _cells():
    return [''.join(c['source']) for c in json.loads((NBS / 'index.ipynb').read_text())['cells'] if c['cell_type'] == 'markdown']

def fold(s): return ' '.join(s.split())

def section(title):
    "The Markdown cell of the preface that starts with '## title', whitespace folded."
    hits = [c for c in _cells() if c.startswith(f'## {title}')]
    assert len(hits) == 1, f'the preface has {len(hits)} sections "## {title}"'
    return fold(hits[0])

def has(sec, *frags):
    for f in frags: assert fold(f) in sec, f'not in the preface as written: {f}'

def statement(n):
    "The text of finding n (1-based) of 'What the book found'."
    text = section('What the book found')
    parts = re.split(r' (?=\d+\. \*\*)', text)
    items = [p for p in parts if re.match(r'\d+\. \*\*', p)]
    assert items[n - 1].startswith(f'{n}. '), f'finding {n} is not numbered {n}'
    return items[n - 1]


# ---------------------------------------------------------------- formatting, as the preface writes numbers
def pm(v): "mean ± std in %, from fractions"; v = 100 * np.asarray(v, float); return f"{v.mean():.1f} ± {v.std(ddof=1):.1f} %"
def pm_summary(g, k, mt='overall'): s = g['summary'][k][mt]; return f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f} %"
def sd(x, d=1): return f"{x:+.{d}f}".replace('-', '−')          # signed difference, typographic minus
def fp(p):
    "p as the preface rounds it."
    if p >= 0.995: return '1.0'
    return f"{p:.2f}" if p >= 0.1 else f"{p:.3f}"


def load(*parts):
    p = R.joinpath(*parts)
    assert p.exists(), f'{p.relative_to(ROOT)} is not committed, but the preface quotes it'
    return json.loads(p.read_text())


def by_key(rows): return {(t['method'], t['vs'], t['metric']): t for t in rows}


@pytest.fixture(scope='module')
def probe():
    "Chapter 26's grids and their paired tests, with chapter 26's comparison families."
    out = {}
    for nm in ('balanced', 'lt100', 'lt10'):
        g = load('cpu_features', f'{nm}.json')
        lab = lambda pre, g=g: next(l for l in g['runs'] if l.startswith(pre))
        if nm == 'balanced':
            others = [lab('erm+reg (val-selected'), lab('mr2 (val-selected'), 'mr2 λ=0.1 (paper)', 'mr2 λ=0',
                      'mr2 spread-margins λ=0', 'focal', 'ldam-drw', 'marc', 'dbm', 'lwr']
            pairs = [(o, 'erm') for o in others] + [(lab('mr2 (val-selected'), lab('erm+reg (val-selected'))]
        else:
            others = ['erm', 'la-posthoc (τ val)', 'ldam-drw', 'marc', 'dbm', 'dbm base=ce', 'lwr', lab('mr2 (val-selected'),
                      'mr2 λ=0.1 (paper)']
            pairs = [(o, 'bs') for o in others]
        rows = paired_tests(g['runs'], pairs, metrics=('overall', 'hard'))
        assert len(rows) == (22 if nm == 'balanced' else 18)           # chapter 26's families
        out[nm] = (g, by_key(rows), lab)
    return out


@pytest.fixture(scope='module')
def fmnist():
    "Chapter 27's five-seed rerun (validated.json) with its 34 comparisons."
    v = load('fmnist_lt', 'validated.json')
    pairs = [(k, 'erm') for k in ('focal', 'bs', 'la-posthoc (τ val)', 'marc', 'lwr', 'ldam-drw', 'dbm', 'dbm s=8', 'mr2 λ=1e-2',
                                  'mr2 λ=0.1 (paper)', 'mr2 λ=0.1 released', 'mr2 λ=0.1 normalised')] + \
            [('lwr', 'bs'), ('marc', 'bs'), ('ldam-drw', 'bs'), ('dbm', 'bs'), ('dbm s=8', 'bs')]
    rows = paired_tests(v['runs'], pairs, metrics=('overall', 'hard'))
    assert len(rows) == 34 and len(v['seeds']) == 5
    return v, by_key(rows)


# ---------------------------------------------------------------- the findings
def test_findings_are_a_few_numbered_linked_statements():
    text = section('What the book found')
    items = [p for p in re.split(r' (?=\d+\. \*\*)', text) if re.match(r'\d+\. \*\*', p)]
    assert 6 <= len(items) <= 10
    assert [int(p.split('.')[0]) for p in items] == list(range(1, len(items) + 1))
    for p in items:
        links = re.findall(r'\]\((\d\d_\w+)\.ipynb\)', p)
        assert links, f'finding without a link to its chapter: {p[:60]}'
        for s in links: assert (NBS / f'{s}.ipynb').exists(), s
    # the preface is above the findings and says how they are measured
    cells = _cells()
    assert cells.index(next(c for c in cells if c.startswith('## What the book found'))) <= 2


def test_1_prior_corrections_carry_the_gain(probe, fmnist):
    s = statement(1)
    g, T, _ = probe['lt100']
    has(s, f"Balanced Softmax reaches {pm_summary(g, 'bs')} against ERM's {pm_summary(g, 'erm')}")
    o, h = T[('erm', 'bs', 'overall')], T[('erm', 'bs', 'hard')]
    assert o['p (Holm)'] < 0.001 and h['p (Holm)'] < 0.001
    has(s, f"{sd(-o['difference (points)'])} points overall and {sd(-h['difference (points)'])} on the Hard classes (both {HOLM}<0.001$)")
    for k in ('la-posthoc (τ val)', 'ldam-drw'):                      # "tie with it"
        assert T[(k, 'bs', 'overall')]['p (Holm)'] > 0.05
    has(s, f"Post-hoc logit adjustment ({pm_summary(g, 'la-posthoc (τ val)')}) and LDAM-DRW ({pm_summary(g, 'ldam-drw')}) tie with it")
    t10 = probe['lt10'][1][('erm', 'bs', 'overall')]
    assert t10['p (Holm)'] < 0.05
    has(s, f"ERM {-t10['difference (points)']:.1f} points below Balanced Softmax, {HOLM}={fp(t10['p (Holm)'])}$")
    _, F = fmnist
    fo, fh = F[('bs', 'erm', 'overall')], F[('bs', 'erm', 'hard')]
    assert fo['p (Holm)'] < 0.001 and fh['p (Holm)'] < 0.001
    has(s, f"it is {sd(fo['difference (points)'])} points overall and {sd(fh['difference (points)'])} on Hard ({HOLM}<0.001$)")
    # ... and on two more long-tailed subsamples (chapter 27): smaller gains than on the book's subsample
    ss = {k: load('dose_response', f'methods-fmnist-lt100-ss{k}.json') for k in (1, 2)}
    gain = lambda r: 100 * np.mean([a['report']['overall'] - b['report']['overall'] for a, b in zip(r['runs']['bs'], r['runs']['erm'])])
    assert all(len(r['seeds']) == 3 and r['subsample_seed'] == k for k, r in ss.items())
    assert all(gain(r) < fo['difference (points)'] for r in ss.values())
    has(s, f"and {sd(gain(ss[1]))} and {sd(gain(ss[2]))} overall on two other long-tailed subsamples of the same data (three seeds each): "
           "the book's subsample gives the largest gain")


def test_2_marc_and_lwr_on_top_of_balanced_softmax(probe, fmnist):
    s = statement(2)
    g, T, _ = probe['lt100']
    lw = T[('lwr', 'bs', 'overall')]
    assert lw['p (Holm)'] > 0.05
    has(s, f"{pm_summary(g, 'lwr')} against {pm_summary(g, 'bs')} on the probe ({HOLM}={fp(lw['p (Holm)'])}$)")
    _, F = fmnist
    fl = F[('lwr', 'bs', 'overall')]
    assert fl['p (Holm)'] > 0.05
    has(s, f"{sd(fl['difference (points)'])} points on Fashion-MNIST-LT ({HOLM}={fp(fl['p (Holm)'])}$)")
    mc = T[('marc', 'bs', 'overall')]
    assert mc['p (Holm)'] > 0.05 and mc['difference (points)'] < 0
    has(s, f"({pm_summary(g, 'marc')}, {sd(mc['difference (points)'])} points against Balanced Softmax, {HOLM}={fp(mc['p (Holm)'])}$)")
    mh, mo = F[('marc', 'bs', 'hard')], F[('marc', 'bs', 'overall')]
    assert mh['p (Holm)'] < 0.05 and mh['difference (points)'] > 0 and mo['p (Holm)'] > 0.05
    has(s, f"it moves {mh['difference (points)']:.1f} more points to the Hard classes than Balanced Softmax ({HOLM}={fp(mh['p (Holm)'])}$)",
        f"at the same overall accuracy ({sd(mo['difference (points)'])} points, {HOLM}={fp(mo['p (Holm)'])}$)")


def _dbm_scale_check():
    "Chapter 29's 'Does s=8 hold on the book's other experiments?': {experiment: {row: {seed: overall %}}}."
    def overall(rs): return {r['seed']: 100 * (r['overall'] if 'overall' in r else float(np.mean(r['per_class']))) for r in rs}
    src = {'balanced': (('cpu_features', 'balanced.json'), 'runs', 'erm', 'bs', 'dbm', 'dbm s=8'),
           'lt100': (('cpu_features', 'lt100.json'), 'runs', 'erm', 'bs', 'dbm', 'dbm s=8'),
           'lt10': (('cpu_features', 'lt10.json'), 'runs', 'erm', 'bs', 'dbm', 'dbm s=8'),
           'fmnist': (('fmnist_lt', 'validated.json'), 'runs', 'erm', 'bs', 'dbm', 'dbm s=8'),
           'digits': (('defaults', 'dbm-scale-digits.json'), 'results', 'ERM (linear head)', 'BS (linear head)',
                      'DBMLoss(counts, scale=32)', 'DBMLoss(counts, scale=8)')}
    out = {}
    for name, (path, key, erm, bs, s32, s8) in src.items():
        runs = load(*path)[key]
        out[name] = {lab: overall(runs[k]) for lab, k in (('ERM', erm), ('BS', bs), ('s32', s32), ('s8', s8)) if k in runs}
    return out


def test_3_dbm_at_the_papers_protocol():
    "Finding 3's CIFAR-10-LT sentence: the default against the papers' form, both with DBM's recipe, seed 0."
    s = statement(3)
    base = R / 'cifar10lt_cpu'
    d8, d32 = (json.loads((base / f / 'seed0' / 'results.json').read_text()) for f in ('dbm-bs-s8', 'dbm-ce-s32'))
    for d in (d8, d32): assert (d['epochs'], d['config']['arch'], d['config']['batch_size'], d['config']['schedule']) == (200, 'resnet32', 64, 'cosine')
    t = mcnemar_test(_correct(base, 'dbm-ce-s32'), _correct(base, 'dbm-bs-s8'))
    assert t['p'] < 0.001 and t['ci95'][0] > 0
    has(s, f"the default (Balanced-Softmax base, $s=8$) reaches {100 * d8['report']['overall']:.1f} %, {100 * t['diff']:.2f} points above the papers' form "
           f"(CE base, $s=32$: {100 * d32['report']['overall']:.1f} %; [{100 * t['ci95'][0]:+.2f}, {100 * t['ci95'][1]:+.2f}], exact McNemar $p<0.001$)")
    ce = mcnemar_test(_correct(base, 'erm'), _correct(base, 'dbm-ce-s32'))
    assert ce['p'] >= 0.05; has(s, "which is level with cross-entropy")
    bs = mcnemar_test(_correct(base, 'bs'), _correct(base, 'dbm-bs-s8'))
    assert bs['ci95'][1] < 0; has(s, "the default still ends below Balanced Softmax (finding 7)")


def test_3_dbm_scale(probe, fmnist):
    s = statement(3)
    g, T, _ = probe['lt100']
    d = T[('dbm', 'bs', 'overall')]
    assert d['p (Holm)'] < 0.05 and d['difference (points)'] < 0
    has(s, f"({pm_summary(g, 'dbm')}, {sd(d['difference (points)'])} points, {HOLM}={fp(d['p (Holm)'])}$)")
    # s=8 against s=32 in every experiment where both ran: chapter 29's table, one Holm family with s=8 vs ERM
    chk = _dbm_scale_check()
    assert len(chk) == 5
    runs, pairs = {}, []
    for n, r in chk.items():
        seeds = sorted(r['s8'])
        for lab in ('ERM', 's32', 's8'): runs[n, lab] = [r[lab][x] for x in seeds]
        pairs += [((n, 's8'), (n, ref)) for ref in ('s32', 'ERM')]
    rows = [t for t in paired_tests(runs, pairs, scale=1) if t['vs'][1] == 's32']
    diffs, ph = [t['difference (points)'] for t in rows], [t['p (Holm)'] for t in rows]
    assert len(rows) == 5 and min(diffs) > 0 and max(ph) < 0.05
    bound = f"{max(ph):.3f}"; assert max(ph) <= float(bound)
    has(s, f"beats $s=32$ in all five experiments where both were run (by {min(diffs):.1f} to {max(diffs):.1f} points, "
           f"{HOLM}\\le {bound}$)")
    best = max(g['summary'], key=lambda k: g['summary'][k]['overall']['mean'])
    assert best == 'dbm s=8'
    has(s, f"is the best row of the imbalance-100 probe ({pm_summary(g, 'dbm s=8')})")
    _, F = fmnist
    f8 = F[('dbm s=8', 'bs', 'overall')]
    assert f8['p (Holm)'] > 0.05
    has(s, f"it ties Balanced Softmax on Fashion-MNIST-LT ({sd(f8['difference (points)'])} points, {HOLM}={fp(f8['p (Holm)'])}$)")
    dg = chk['digits']; v8, vb = np.array(list(dg['s8'].values())), np.array(list(dg['BS'].values()))
    assert v8.mean() < vb.mean()
    has(s, f"is below it on the digits recipe ({v8.mean():.1f} ± {v8.std(ddof=1):.1f} % against {vb.mean():.1f} ± {vb.std(ddof=1):.1f} %)")
    # s=8 is the lower edge of the scales tried, and no Balanced-Softmax-on-cosine control at s=8 exists
    meta = load('defaults', 'dbm-scale.json')['rows']
    assert sorted({m['scale'] for m in meta.values() if m['scale'] is not None}) == [8, 16, 32]
    has(s, "the lower edge of the grid {8, 16, 32}")
    # the Fashion-MNIST-LT IF-100 rerun draws, per class, the first images of the same per-class shuffle (subsample
    # seed 0) as the IF-50 set the scale was chosen on, and fewer of them: its training images are a subset of that set
    sc, vm = load('defaults', 'dbm-scale.json'), load('fmnist_lt', 'validated.json')['meta']
    assert sc['data'].startswith('Fashion-MNIST-LT') and vm['data'].startswith('Fashion-MNIST-LT') and vm['subsample_seed'] == 0
    assert all(a <= b for a, b in zip(vm['class_counts'], sc['class_counts']))
    has(s, "the Fashion-MNIST-LT experiment above reuses that dataset's images, so it is not an independent check")
    # the control on chapter 27's CNN: Balanced Softmax on the same cosine head, the scale chosen on validation
    ctl = load('dose_response', 'dbm-scale-fmnist-lt100.json')
    assert ctl['chosen_on_validation'] == {'BS cosine': 'BS cosine s=8', 'DBM': 'DBM s=8'} and len(ctl['seeds']) == 3
    assert sorted(int(k.split('=')[1]) for k in ctl['runs'] if k.startswith('DBM s=')) == [4, 8, 16, 32]
    ov = lambda k: [r['report']['overall'] for r in ctl['runs'][k]]
    t = paired_tests(ctl['runs'], [('DBM s=8', 'BS cosine s=8')])[0]
    assert t['p'] > 0.05 and abs(t['difference (points)']) < 0.5
    has(s, "(three seeds, the scale chosen on validation from 4 to 32: 8 for both)",
        f"puts Balanced Softmax on the same cosine head at {pm(ov('BS cosine s=8'))}, level with DBM at $s=8$ "
        f"({pm(ov('DBM s=8'))}; {sd(t['difference (points)'])} points, paired $t$-test $p={t['p']:.2f}$) and with Balanced "
        f"Softmax on a linear head ({pm(ov('BS'))})")
    # ... and the same control on the probe (chapter 27 shows it)
    pc = load('dose_response', 'dbm-scale-probe-lt100.json')
    assert pc['chosen_on_validation'] == {'BS cosine': 'BS cosine s=8', 'DBM': 'DBM s=8'} and len(pc['seeds']) == 3
    po = lambda k: [r['report']['overall'] for r in pc['runs'][k]]
    tp = paired_tests(pc['runs'], [('DBM s=8', 'BS cosine s=8'), ('DBM s=8', 'BS')], metrics=('overall', 'hard', 'worst'))[0]
    assert (tp['metric'], tp['significant']) == ('overall', 'no') and round(tp['difference (points)'], 1) == -0.3   # chapter 27's Holm family
    assert all(1.5 < 100 * (np.mean(po(k)) - np.mean(po('BS'))) < 2.5 for k in ('DBM s=8', 'BS cosine s=8'))
    has(s, "On the imbalance-100 probe the same control (three seeds, 8 chosen on validation for both) puts Balanced "
        f"Softmax on the cosine head at {pm(po('BS cosine s=8'))} and DBM at {pm(po('DBM s=8'))} (0.3 points below it, not "
        "significant after Holm's adjustment), both about two points above "
        f"Balanced Softmax on a linear head ({pm(po('BS'))})")


def _committed_json():
    "The results files git tracks (all of them in a clone); every results/**/*.json where git cannot answer."
    import subprocess
    try:
        out = subprocess.run(['git', 'ls-files', '-z', 'results'], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        files = [ROOT / f for f in out.split('\0') if f.endswith('.json')]
        if files: return sorted(files)
    except (OSError, subprocess.CalledProcessError): pass
    return sorted(R.rglob('*.json'))


def _row_labels(d):
    "Row names of a results file (grid runs, defaults results, the sweep's row table)."
    if not isinstance(d, dict): return []
    out = []
    for key in ('runs', 'results', 'rows', 'summary'):
        if isinstance(d.get(key), dict): out += [str(k) for k in d[key]]
    return out


def test_4_balanced_data_mr2_and_margins(probe):
    s = statement(4)
    g, T, lab = probe['balanced']
    sel, reg = lab('mr2 (val-selected'), lab('erm+reg (val-selected')
    t = T[(sel, 'erm', 'overall')]
    assert t['p (Holm)'] < 0.05
    has(s, f"gains {t['difference (points)']:.1f} points over ERM ({pm_summary(g, sel)} against {pm_summary(g, 'erm')}, "
           f"{HOLM}={fp(t['p (Holm)'])}$)")
    r = T[(sel, reg, 'overall')]
    assert r['p (Holm)'] > 0.05 and T[(reg, 'erm', 'overall')]['p (Holm)'] < 0.05
    has(s, f"({pm_summary(g, reg)}; MR² minus it: {sd(r['difference (points)'])} points, {HOLM}={fp(r['p (Holm)'])}$")
    wds = sorted(float(k.split('=')[1]) for k in g['runs'] if k.startswith('erm wd='))
    assert g['selected']['erm+reg'] == f"erm wd={max(wds)}"                      # the grid stopped at its chosen value
    has(s, "that grid stopped at its chosen value")
    z = T[('mr2 λ=0', 'erm', 'overall')]
    assert z['p (Holm)'] > 0.05
    has(s, f"(λ = 0) is ERM: {pm_summary(g, 'mr2 λ=0')} ({sd(z['difference (points)'])} points, {HOLM}={fp(z['p (Holm)'])}$)")
    # chapter 27's three-seed grid, its 30 comparisons
    fg = load('fmnist_lt', 'grid.json')
    pairs = [(m, 'erm') for m in ('focal', 'ldam-drw', 'bs', 'la-posthoc', 'marc', 'dbm', 'lwr', 'mr2', 'mr2 λ=0', 'mr2 λ=1e-3',
                                  'mr2 λ=0.1 released', 'mr2 λ=0.1 normalised')] + [('lwr', 'bs'), ('dbm', 'bs'), ('marc', 'bs')]
    FG = by_key(paired_tests(fg['runs'], pairs, metrics=('overall', 'hard')))
    assert len(FG) == 30 and len(fg['runs']['erm']) == 3
    f0 = FG[('mr2 λ=0', 'erm', 'overall')]
    assert f0['p (Holm)'] > 0.05
    has(s, f"and {sd(f0['difference (points)'])} points on the Fashion-MNIST-LT CNN (three seeds, {HOLM}={fp(f0['p (Holm)'])}$)")
    # margins alone on chapter 27's CNN: MR²'s rule, amplified, fixed ratios, and the spread direction
    dr = load('dose_response', 'fmnist-lt100.json')
    assert dr['meta']['lam'] == 0 and len(dr['seeds']) == 3 and dr['configs']['A p=1/3']['power'] == pytest.approx(1 / 3)
    ov = lambda k: [r['report']['overall'] for r in dr['runs'][k]]
    ratio = lambda k: dr['summary'][k]['gamma_ratio_final']
    has(s, f"a ratio of {ratio('A p=1/3'):.1f} between the largest and the smallest at the end of training",
        f"leave accuracy at cross-entropy's ({pm(ov('A p=1/3'))} against {pm(ov('CE'))})",
        f"amplified to a ratio of {ratio('A p=1'):.0f} ($\\gamma_k\\propto A_k$) they still do ({pm(ov('A p=1'))})")
    assert 90 < ratio('A p=2') < 110
    worst = 100 * np.mean([r['report']['worst'] for r in dr['runs']['A p=2']])
    has(s, f"they cost {100 * (np.mean(ov('CE')) - np.mean(ov('A p=2'))):.1f} points (worst class {worst:.1f} %)")
    gain = max(100 * (np.mean(ov(k)) - np.mean(ov('CE'))) for k in dr['runs'] if k != 'CE')
    assert {dr['configs'][k]['stat'] for k in dr['runs'] if k != 'CE'} == {'A', 'spread'}
    has(s, f"The largest gain over cross-entropy of any direction or ratio tried, from MR²'s statistic or from the spread, is {gain:.1f} points")
    for m in ('focal', 'ldam-drw', 'marc', 'dbm', 'lwr'):                         # "within 0.5 points of ERM, none significantly"
        assert abs(T[(m, 'erm', 'overall')]['difference (points)']) <= 0.5, m
        assert all(T[(m, 'erm', mt)]['p (Holm)'] > 0.05 for mt in ('overall', 'hard')), m
    has(s, "focal loss, LDAM-DRW, MARC, DBM and LWR stay within 0.5 points of ERM, none significantly")


def test_5_premise_class_level(probe):
    s = statement(5)
    ents = {e['name']: e for f in sorted((R / 'premise').glob('premise-*.json')) for e in json.loads(f.read_text())['entries']}
    assert len(ents) == 8
    res = {}
    for n, e in ents.items():
        X = np.array([[c['A'] for c in ps['per_class']] for ps in e['per_seed']])
        E = np.array([[1 - c['acc'] for c in ps['per_class']] for ps in e['per_seed']])
        t = class_permutation_test(X, E, n_perm=100_000, seed=0)
        res[n] = (t['rho'], t['p'], class_verdict(t['rho'], t['p']))
    assert 'tracks difficulty' not in {v for _, _, v in res.values()}
    has(s, "on none of the eight models of [chapter 29](29_premise.ipynb)")
    rb, pb, vb = res['fmnist-balanced']; rl, pl, vl = res['fmnist-lt100']
    assert vb == vl == 'reversed' and pb < 0.001
    has(s, f"(Spearman's ρ = {sd(rb, 2)} on the balanced set, $p<0.001$; {sd(rl, 2)} on the long-tailed set, $p={pl:.3f}$)")
    rest = [r for n, (r, p, v) in res.items() if n not in ('fmnist-balanced', 'fmnist-lt100')]
    assert len(rest) == 6 and all(res[n][2] == 'not significant' for n in res if n not in ('fmnist-balanced', 'fmnist-lt100'))
    has(s, f"ρ lies between {sd(min(rest), 2)} and {sd(max(rest), 2)}, not significant")


def test_6_paper_literal_mr2_term(probe, fmnist):
    s = statement(6)
    d = load('defaults', 'defaults.json')
    ce, paper, rel = (d['results'][k] for k in ('CE', 'MR2Loss(K, lam=0.1, variant="paper")', 'MR2Loss(K, lam=0.1, variant="released")'))
    o = lambda rs: [r['overall'] for r in rs]
    assert len(ce) == len(paper) == 3
    has(s, f"cost {100 * (np.mean(o(ce)) - np.mean(o(paper))):.1f} points against cross-entropy",
        f"three seeds: {pm(o(paper))} against {pm(o(ce))})")
    from margin_notes.data import FMNIST_CLASSES
    zero = [k for k in range(len(d['class_counts'])) if all(r['per_class'][k] == 0 for r in paper)]
    assert [FMNIST_CLASSES[k] for k in zero] == ['Shirt']                          # one class at 0 % on every seed
    has(s, "left one class, shirts, at 0 % on every seed")
    _, F = fmnist
    fo, fh = F[('mr2 λ=0.1 (paper)', 'erm', 'overall')], F[('mr2 λ=0.1 (paper)', 'erm', 'hard')]
    assert fo['p (Holm)'] < 0.05 and fh['p (Holm)'] < 0.05
    has(s, f"it costs {-fo['difference (points)']:.1f} points overall and {-fh['difference (points)']:.1f} on the Hard classes "
           f"({HOLM}={fp(fo['p (Holm)'])}$ and ${fp(fh['p (Holm)'])}$)")
    pb = probe['lt100'][1][('mr2 λ=0.1 (paper)', 'bs', 'overall')]
    assert pb['p (Holm)'] < 0.05
    has(s, f"on the imbalance-100 probe {-pb['difference (points)']:.1f} points against Balanced Softmax")
    diff = 100 * (np.mean(o(rel)) - np.mean(o(ce)))
    assert abs(diff) < 1
    has(s, f"within noise of cross-entropy ({pm(o(rel))}, {sd(diff)} points)")
    from margin_notes.mr2 import MR2Loss
    assert MR2Loss(10).variant == 'released'                                     # "the default of MR2Loss(K)"
    # chapter 30's ResNet-32 pair (paper minus released on the same test images), quoted once the paper form has run
    base = R / 'cifar10lt_cpu'
    if not (base / 'mr2-paper' / 'seed0' / 'results.json').exists():
        assert 'ResNet-32' not in s, 'finding 6 quotes a ResNet-32 result that is not committed'
        return
    t = mcnemar_test(_correct(base, 'mr2-released'), _correct(base, 'mr2-paper'))
    pstr = '$p<0.001$' if t['p'] < 0.001 else f"$p={t['p']:.2g}$"
    if t['p'] >= 0.05:
        has(s, f"the test images cannot tell the paper's form from the released one ({_ci(t)}, exact McNemar {pstr}")
    else:
        has(s, f"the paper's form ends {abs(100 * t['diff']):.2f} points {'below' if t['diff'] < 0 else 'above'} the released one "
               f"({_ci(t)}, exact McNemar {pstr}")


def _correct(base, folder, seed=0):
    p = np.load(base / folder / f'seed{seed}' / 'predictions.npz')
    return (p['pred_posthoc'] if 'pred_posthoc' in p else p['pred']) == p['labels']


def _ci(t):
    return f"{100 * t['diff']:+.2f} [{100 * t['ci95'][0]:+.2f}, {100 * t['ci95'][1]:+.2f}]".replace('-', '−')


ROWS_27 = {'bs': 'Balanced Softmax', 'la-posthoc': 'post-hoc logit adjustment of the CE model', 'bs-lwr': 'BS + LWR',
           'dbm-bs-s8': "DBM with the library's defaults", 'ldam-drw': 'LDAM-DRW', 'ce-drw': 'CE-DRW', 'marc': 'MARC fitted on the CE model'}


def test_7_cifar10lt_papers_protocol():
    s = statement(7)
    base = R / 'cifar10lt_cpu'
    seed0 = {f.parent.parent.name: json.loads(f.read_text()) for f in base.glob('*/seed0/results.json')}   # read once
    ce = seed0['erm']
    assert (ce['epochs'], ce['config']['arch'], ce['config']['imbalance_factor']) == (200, 'resnet32', 100)
    has(s, "the comparisons below pair each method's first run (seed 0) with cross-entropy's")
    has(s, f"Cross-entropy reaches {100 * ce['report']['overall']:.1f} %, worst class {100 * ce['report']['worst']:.1f} %")
    from margin_notes.paper import MARC_TABLE2
    t2 = MARC_TABLE2['cifar10-lt100']
    has(s, f"MARC's paper reports {t2.rows['Softmax']['overall']:.1f} %",
        f"puts ahead of Balanced Softmax ({t2.value('MARC'):.1f} % against {t2.value('Balanced Softmax'):.1f} %)")
    assert t2.value('MARC') > t2.value('Balanced Softmax')
    c0 = _correct(base, 'erm'); ts = {}
    for folder, name in ROWS_27.items():
        r = seed0[folder]
        t = ts[folder] = mcnemar_test(c0, _correct(base, folder))
        assert t['n'] == 10_000 and t['p'] < 0.05
        assert round(100 * t['diff'], 2) == round(100 * (r['report']['overall'] - ce['report']['overall']), 2)
        has(s, f"{name} {100 * r['report']['overall']:.1f} % ({_ci(t)}")
    # the precisions: CE-DRW alone trained in fp32 (a CPU without native bf16), every other training run in bf16
    amp = {k: r['precision']['amp'] for k, r in seed0.items() if 'posthoc' not in r}
    fp32 = sorted(k for k, a in amp.items() if a == 'fp32')
    assert set(amp.values()) <= {'fp32', 'bf16'} and 'ce-drw' in fp32 and set(fp32) <= {'ce-drw', 'mr2-paper'}, amp
    has(s, "trained in fp32 on a CPU without native bf16, " + ("as was MR² in the paper's form, " if 'mr2-paper' in fp32 else '')
        + "the others in bf16, so this gap mixes DRW with the precision")
    order = sorted(ROWS_27, key=lambda f: -ts[f]['diff'])
    assert [s.index(ROWS_27[f] + ' ') for f in order] == sorted(s.index(ROWS_27[f] + ' ') for f in order)   # listed best first
    lwr = mcnemar_test(_correct(base, 'bs'), _correct(base, 'bs-lwr'))
    assert lwr['ci95'][1] < 0
    has(s, f"costs Balanced Softmax {-100 * lwr['diff']:.2f} points ([{100 * lwr['ci95'][0]:+.2f}, {100 * lwr['ci95'][1]:+.2f}])".replace('-', '−'))
    dbm = seed0['dbm-bs-s8']
    assert "base='bs'" in dbm['loss'] and 'scale=8.0' in dbm['loss'] and dbm['config']['batch_size'] == 64 and dbm['config']['schedule'] == 'cosine'
    from margin_notes.paper import DBM_CIFAR100LT as D
    t = mcnemar_test(_correct(base, 'bs'), _correct(base, 'dbm-bs-s8'))
    assert t['ci95'][1] < 0 < D.value('DBM-BS') - D.value('BS')                  # below BS here, above it in the paper
    has(s, "trained with its own recipe (batch 64, cosine schedule), ends "
           f"{-100 * t['diff']:.2f} points below Balanced Softmax ([{100 * t['ci95'][0]:+.2f}, {100 * t['ci95'][1]:+.2f}])".replace('-', '−'),
        f"on CIFAR-100-LT, puts it {D.value('DBM-BS') - D.value('BS'):.2f} points above")
    assert ts['la-posthoc']['ci95'][0] > ts['marc']['ci95'][1]                    # "the one-line adjustment gains more than MARC"
    has(s, "the one-line adjustment gains more than MARC")
    mr2 = seed0['mr2-released']
    assert "variant='released'" in mr2['loss']                                    # "MR² in the library's default form"
    t = mcnemar_test(c0, _correct(base, 'mr2-released'))
    assert t['p'] >= 0.05                                                          # "cannot tell from noise"
    has(s, f"MR² in the library's default form reaches {100 * mr2['report']['overall']:.1f} % ({_ci(t)}, exact p = {t['p']:.2g})")
    d32 = seed0['dbm-ce-s32']
    assert "base='ce'" in d32['loss'] and 'scale=32.0' in d32['loss']
    t = mcnemar_test(c0, _correct(base, 'dbm-ce-s32'))
    assert t['p'] >= 0.05
    has(s, f"and DBM in its papers' form {100 * d32['report']['overall']:.1f} % ({_ci(t)}, exact p = {t['p']:.2g}), gains the test set cannot tell from noise")
    if 'mr2-paper' in seed0:                                                       # MR² in the paper's form, against CE
        paper = seed0['mr2-paper']
        assert "variant='paper'" in paper['loss']
        t = mcnemar_test(c0, _correct(base, 'mr2-paper'))
        assert not (t['p'] < 0.05 and t['diff'] > 0), "MR² in the paper's form beats CE now: list it with the rows above (finding 7)"
        verb = 'falls below cross-entropy:' if t['p'] < 0.05 else 'reaches'
        has(s, f"MR² in the paper's form {verb} {100 * paper['report']['overall']:.1f} % ({_ci(t)}, exact p = {t['p']:.2g})")
    # over training seeds, where CE and its two calibrations have three: mean ± sample std, and each calibration's mean paired
    # difference from CE with its 95 % t-interval (recomputed here from the results files, as chapter 30's seed table has it)
    from scipy.stats import t as student_t
    seeds = sorted(p.parent.name for p in (base / 'erm').glob('seed*/results.json'))
    if len(seeds) >= 3:
        run = lambda f, k: seed0[f] if k == 'seed0' else json.loads((base / f / k / 'results.json').read_text())   # seed 0 read above
        acc = {f: np.array([run(f, k)['report']['overall'] for k in seeds], dtype=np.float64) for f in ('erm', 'la-posthoc', 'marc')}
        n = len(seeds)
        has(s, f"Over {NUMBER_WORDS[n]} training seeds, cross-entropy reaches {100 * acc['erm'].mean():.1f} ± {100 * acc['erm'].std(ddof=1):.1f} %")
        for f in ('la-posthoc', 'marc'):
            d = 100 * (acc[f] - acc['erm']); h = student_t.ppf(0.975, n - 1) * d.std(ddof=1) / np.sqrt(n)
            has(s, f"{SEED_ROWS[f]} {100 * acc[f].mean():.1f} ± {100 * acc[f].std(ddof=1):.1f} % ("
                   + f"{d.mean():+.2f} [{d.mean() - h:+.2f}, {d.mean() + h:+.2f}]".replace('-', '−'))
    else: assert 'training seeds, cross-entropy reaches' not in s, 'finding 7 quotes CE over seeds it does not have'


# the rows that get more seeds (chapter 30's SEEDS), in its order, as finding 8 names them
SEED_ROWS = {'erm': 'CE', 'ldam-drw': 'LDAM-DRW', 'bs': 'Balanced Softmax', 'la-posthoc': 'post-hoc logit adjustment', 'marc': 'MARC',
             'dbm-bs-s8': "DBM with the library's defaults", 'bs-lwr': 'BS + LWR', 'mr2-released': "MR² in the library's default form",
             'mr2-paper': "MR² in the paper's form"}


def _and(names): return names[0] if len(names) == 1 else ', '.join(names[:-1]) + ' and ' + names[-1]


PENDING_27 = {'mr2-paper': "MR² in the paper's form"}                          # chapter 30's rows that had no run when the preface was written
NUMBER_WORDS = {1: 'one', 2: 'two', 3: 'three', 4: 'four', 5: 'five', 6: 'six', 7: 'seven', 8: 'eight'}


def test_8_not_run_yet():
    s = statement(8)
    for f in sorted((R / 'gpu').glob('*.json')):                               # chapter 36
        assert json.loads(f.read_text())['status'] == 'not run', f'{f.name} has a result now: update finding 8'
    done = [p for p in R.glob('3[0-3]_*/**/results.json')]
    assert done == [], f'results of the full-scale chapters are committed now ({done[:3]}): update finding 8'
    for n in (32, 33, 34, 35, 36): assert f'[chapter {n}]({n}_' in s
    runs = {(p.parent.parent.name, p.parent.name) for p in (R / 'cifar10lt_cpu').glob('*/seed*/results.json')}   # (row, seed folder), listed once
    finished = {f for f, _ in runs}
    rows = {'erm', 'la-posthoc', 'marc', 'mr2-released', 'dbm-ce-s32'} | set(ROWS_27)
    assert rows <= finished <= rows | set(PENDING_27), f'chapter 30 rows with runs: {sorted(finished)}: update findings 7 and 8'
    seeds = {k for _, k in runs}
    assert seeds <= {'seed0', 'seed1', 'seed2'}, seeds
    # the rows with a second and a third seed, in chapter 30's order, named as the preface names them
    have = {k: [f for f in SEED_ROWS if (f, f'seed{k}') in runs] for k in (1, 2)}
    for k in (1, 2): assert set(have[k]) == {f for f, x in runs if x == f'seed{k}'}, 'a row the preface cannot name'
    if have[2] and have[2] == have[1]:   # the same rows have both: one phrase
        has(s, f"{_and([SEED_ROWS[f] for f in have[1]])} {'has' if len(have[1]) == 1 else 'have'} a second and a third training seed")
    else:
        for k, (one, many, none) in {1: ('has a second training seed', 'have a second training seed', 'no row has its second training seed yet'),
                                     2: ('has its third', 'have their third', 'none has its third yet')}.items():
            if k == 2 and not have[2] and not have[1]: continue
            has(s, f"{_and([SEED_ROWS[f] for f in have[k]])} {one if len(have[k]) == 1 else many}" if have[k] else none)
    not_run = {k: v for k, v in PENDING_27.items() if k not in finished}
    n = len(not_run)
    if n == 0:
        has(s, "Every one of the eleven rows of [chapter 30](30_cifar10lt_cpu.ipynb) has its first run")
        assert 'no run yet' not in s
    else:
        has(s, f"{NUMBER_WORDS[n]} {'has' if n == 1 else 'have'} no run yet", "(" + ', '.join(not_run.values()) + ")")


# ---------------------------------------------------------------- the rest of the preface
def _title(stem):
    c = next(c for c in json.loads((NBS / f'{stem}.ipynb').read_text())['cells'] if c['cell_type'] == 'markdown')
    return ''.join(c['source']).splitlines()[0][2:].strip()


def test_chapter_table_titles_and_links():
    "Every chapter once, linked, under the title its notebook has (`# Title`); the parts say what kind of chapters they hold."
    text = section('The chapters')
    stems = sorted(p.stem for p in NBS.glob('[0-9][0-9]_*.ipynb'))
    for st in stems:
        entry = f"{st[:2]} · [{_title(st)}]({st}.ipynb)"
        assert text.count(entry) == 1, f'the chapter table should list {entry!r} once'
    assert len(re.findall(r'\]\(\d\d_\w+\.ipynb\)', text)) == len(stems)
    for part in ('Part I · Theory', 'Part II · Toolkit', 'Part III · Methods', 'Part IV · Running experiments', 'Part V · Experiments'):
        assert f'### {part}' in text
    has(text, "*Recipes for a GPU, not run yet*")


def test_links_citations_and_title():
    cells = _cells()
    title = cells[0].splitlines()[0]
    assert title.startswith('# ') and title != '# margin_notes'
    text = '\n'.join(cells)
    for target in re.findall(r'\]\(([\w-]+\.ipynb)', text):
        assert (NBS / target).exists(), f'link to a missing notebook: {target}'
    assert '](contributing.ipynb)' in text
    bib = (NBS / 'references.bib').read_text()
    keys = set(re.findall(r'@\w+\{([^,\s]+),', bib))
    cited = set(re.findall(r'@([\w:-]+)', ' '.join(re.findall(r'\[(@[^\]]+)\]', text))))
    assert cited <= keys, f'cited but not in references.bib: {cited - keys}'
    assert {'zhu2026mr2', 'wang2022marc', 'son2025dbm', 'lwr_poster'} <= cited


def test_reader_vocabulary():
    "The preface speaks to readers: the test harness lives on the contributing page."
    text = '\n'.join(_cells())
    for word in (r'\bsmoke\b', r'nbdev_test', r'#\| ?slow', r'#\| ?gpu', r'hidden (cell|check)', r'\bseed (poster|paper)', r'earlier version'):
        assert not re.search(word, text, re.I), f'preface uses {word!r}'
    assert '## How this book is built' not in text                                 # moved to contributing.ipynb
