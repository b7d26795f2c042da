"""`make check-site` reads like a reader: every reader check of scripts/check_site.py (READER_CHECKS) fails on an
injected defect and passes on a clean example. Notebook-side checks are pure Python; page-side checks run the probe
in headless Chromium on a tiny page (skipped when chromium or libjs-mathjax is missing)."""
import json, shutil, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'scripts'))
import check_site as cs  # noqa: E402


def md(src, id='m1'): return {'cell_type': 'markdown', 'id': id, 'metadata': {}, 'source': src}
def code(src, outputs=(), id='c1'):
    return {'cell_type': 'code', 'id': id, 'metadata': {}, 'source': src, 'outputs': list(outputs), 'execution_count': 1}
def stream(text): return {'output_type': 'stream', 'name': 'stdout', 'text': text}
def display(**data): return {'output_type': 'display_data', 'metadata': {}, 'data': data}
def checks(findings): return [f.check for f in findings]


def test_every_check_is_documented():
    assert len(cs.READER_CHECKS) == 15
    f = cs.Finding('md-code', 'x.html', 'cell ab12', 'why')
    assert str(f) == '[md-code] x.html cell ab12: why' and f.check == 'md-code' and f.page == 'x.html'


# ---------------------------------------------------------------- 1. md-code
CODE_AS_MD = """import subprocess, sys
from pathlib import Path
import margin_notes
root = Path(margin_notes.__file__).parents[1]
for name in ('cifar', 'digits'):
    subprocess.run([sys.executable, str(root / 'scripts' / 'x.py'), name], check=True)
print('done')"""

def test_md_code_fires():
    for src in ('#| slow\n' + CODE_AS_MD, CODE_AS_MD, 'x = f(3)\ny = g(x, 2)\nprint(y)'):
        got = cs.md_code_findings([md(src)], 'p.html')
        assert checks(got) == ['md-code'] and 'cell m1' in got[0].where, src


def test_md_code_passes_prose():
    clean = [
        '# Title\n\n> One line.\n\nSome prose with `x = f(y)` in a code span.',
        'The loss is\n\n```python\nimport torch\nx = torch.zeros(3)\nprint(x)\n```\n\nand that is all.',
        'Note: see below.\nDefaults: the released scale.\nT = 10d is the temperature of the exponent here.',
        '- `fit(cfg)` trains a run\n- `evaluate(model)` scores it\n\nThree steps: load(), fit(), report().',
        '$$\nx = \\frac{1}{2}\n$$\n\nwhere x = 1 here.',
    ]
    for src in clean: assert cs.md_code_findings([md(src)], 'p.html') == [], src


# ---------------------------------------------------------------- 2. list-para
def test_list_para_fires_in_cells_and_markdown_outputs():
    bad = 'What the results show:\n- CIFAR-10: 63.9 %\n- digits: 91.0 %'
    got = cs.list_para_findings([md(bad), code('summary()', [display(**{'text/markdown': bad, 'text/plain': 'x'})], id='c9')], 'p.html')
    assert checks(got) == ['list-para', 'list-para']       # one per list, not per item
    assert got[1].where == 'cell c9 (Markdown output)'
    assert checks(cs.list_para_findings([md('Three steps:\n1. load\n2. fit')], 'p.html')) == ['list-para']


def test_list_para_passes_real_lists():
    clean = [
        'What the results show:\n\n- CIFAR-10: 63.9 %\n- digits: 91.0 %',
        '## Steps\n- load\n- fit',
        '* an item that wraps\n  onto a second line\n* the next item\n  $$x=1$$\n* and a third',
        '1. **First.** Long text\n   $$\n   \\gamma_k\\propto A_k\n   $$\n   more text.\n2. **Second.**',
        'A sum of\n$$\na - b\n$$\nwith x - y in between.',
        '| a | b |\n|---|---|\n| - | 1 |',
        'Code:\n```\nrun\n- not a list\n```',
    ]
    for src in clean: assert cs.list_para_findings([md(src)], 'p.html') == [], src


# ---------------------------------------------------------------- 9. output-repr
def test_output_repr_fires():
    bad = {
        'temporary path': stream('outputs: /tmp/tmpnccfn79c/report/  (report.md)\n'),
        'temporary path ': stream('wrote tmp592co7_x/erm\n'),
        'numpy repr': display(**{'text/plain': "{'acc': np.float64(0.8502)}"}),
        'numpy repr ': stream('array([0.118, 0.105], dtype=float32)\n'),
        'unrounded float': stream('ratio 0.9339999999999999\n'),
    }
    for why, o in bad.items():
        got = cs.output_repr_findings([code('f()', [o])], 'p.html')
        assert checks(got) == ['output-repr'] and why.strip() in got[0].msg, (why, got)


def test_output_repr_passes_clean_and_hidden_outputs():
    clean = [stream('ratio 0.934, loss 1.5e-07, 12,345 images, version 2.4.14\n'),
             display(**{'text/html': '<table><tr><td>0.9339999999999999</td></tr></table>'.replace('0.9339999999999999', '0.934')}),
             display(**{'image/png': 'iVBOR', 'text/plain': '<Figure size 640x480 with 0.9339999999999999 Axes>'}),
             stream('the temporary folder is removed\n')]
    assert cs.output_repr_findings([code('f()', clean)], 'p.html') == []
    assert cs.output_repr_findings([code('#| hide\nf()', [stream('/tmp/x\n')])], 'p.html') == []


# ---------------------------------------------------------------- printed-table
def test_printed_table():
    tab = '| method | overall |\n|---|---|\n| ce | 63.9 ± 0.2 |\n'
    for o in (stream('suite:\n' + tab), {'output_type': 'execute_result', 'execution_count': 1, 'metadata': {}, 'data': {'text/plain': tab}}):
        assert checks(cs.printed_table_findings([code('f()', [o])], 'p.html')) == ['printed-table']
    clean = [display(**{'text/markdown': tab, 'text/plain': 'x'}), stream('a | b\n---\n'), stream('| just one row |\n'),
             display(**{'text/html': '<table></table>', 'text/plain': tab})]
    assert cs.printed_table_findings([code('f()', clean)], 'p.html') == []


def test_local_mathjax_build_is_served():
    "A MATHJAX=local build points at file:///usr/share/...; the check's server swaps it for its own copy like the CDN one."
    local = '<script src="file:///usr/share/javascript/mathjax/MathJax.js?config=TeX-AMS_CHTML-full" type="text/javascript"></script>'
    cdn = '<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml-full.js" type="text/javascript"></script>'
    assert cs.CDN_MATHJAX_RE.fullmatch(local) and cs.CDN_MATHJAX_RE.fullmatch(cdn)


# ---------------------------------------------------------------- 10. harness-words
HARNESS_BAD = [
    'In smoke mode the chapter trains one epoch.', 'Under `nbdev_test` every chapter runs on tiny data.',
    'The hidden checks below assert it.', 'The slow cell below times it.', 'A `#| slow` cell repeats it.',
    'measured on a 2-core CPU (load average ≈ 10)', 'An earlier version of this chapter said 4.8e-7.',
    'The constant is not derived in the seed.', 'the paper (no proof in the seed)', 'MR² (seed paper 001) argues',
    '**MR² Table 1a (seed poster)**', 'The seed states Theorem 1 without proof.',
]
HARNESS_OK = [
    'Three seeds, seeds 0–2, per seed, with a random seed.', 'the training seed and the subsample seed',
    'under subsample seed 0', 'mean over the seeds', 'the same seed for both methods', 'one seed of three passes alone',
    'from seed to seed', 'averaged over its seeds', 'The seed of the generator is fixed.', '`smoke=True` in a code span',
    '```\nMARGIN_NOTES_SMOKE=1 make test\n```', 'varies with the seed 0 or 1', 'a fake slow-down, smokeless',
]

def test_harness_words_fire():
    for s in HARNESS_BAD:
        got = cs.harness_findings([md(s)], 'p.html')
        assert checks(got) == ['harness-words'], (s, got)
    out = code('show()', [display(**{'text/markdown': 'A smoke run: 2 epochs', 'text/plain': 'x'})])
    assert checks(cs.harness_findings([out], 'p.html')) == ['harness-words']


def test_harness_words_pass_random_seeds_and_contributing():
    for s in HARNESS_OK: assert cs.harness_findings([md(s)], 'p.html') == [], s
    assert cs.harness_findings([md(s) for s in HARNESS_BAD], 'contributing.html') == []


# ---------------------------------------------------------------- 11. title
def _book(tmp_path, sidebar, titles, index=None):
    for stem, t in titles.items():
        (tmp_path / f'{stem}.ipynb').write_text(json.dumps({'cells': [md(f'# {t}\n\n> d')]}))
    if index: (tmp_path / 'index.ipynb').write_text(json.dumps({'cells': [md('# Book\n\n> d'), md(index, 'ix')]}))
    cfg = {'website': {'sidebar': {'contents': [{'section': 'P', 'contents': [
        {'href': f'{s}.ipynb', 'text': t} for s, t in sidebar.items()]}]}}}
    return cs.title_findings(cfg, nbs=tmp_path)

def test_title_agreement_rules():
    assert cs.titles_agree('Core', 'Core: settings, checks and small utilities')
    assert cs.titles_agree('Does the margin rule hold?', "Does the margin rule hold? MR²'s premise")
    assert cs.titles_agree('Method registry', 'The method registry')
    assert cs.titles_agree('MR² on CIFAR-100 (plan)', 'MR² on CIFAR-100')
    assert not cs.titles_agree('The trainer', 'The training engine')
    assert not cs.titles_agree('The margin bound', 'The margin bound behind MR²')

def test_title_fires(tmp_path):
    got = _book(tmp_path, {'09_engine': '09 · The trainer', '30_x': '30 · MR² on CIFAR-100'},
                {'09_engine': 'The training engine', '30_x': 'MR² on CIFAR-100 (plan)'},
                index='| method | chapter |\n|---|---|\n| MR² | [10](10_mr2.ipynb) |\n\n'
                      'See [chapter 09 · The engine room](09_engine.ipynb).')
    assert checks(got) == ['title'] * 3, got
    assert {f.page for f in got} == {'engine.html', 'x.html', 'index.html'}
    assert any('sidebar' in f.msg and 'marked (plan)' in f.msg for f in got)

def test_title_passes(tmp_path):
    assert _book(tmp_path, {'00_core': '00 · Core', '30_x': '30 · MR² on CIFAR-100 (plan)'},
                 {'00_core': 'Core: settings and utilities', '30_x': 'MR² on CIFAR-100 (plan)'},
                 index='[10](10_mr2.ipynb), [chapter 00](00_core.ipynb), [Core](00_core.ipynb)') == []


# ---------------------------------------------------------------- 12. library-default
DEFAULT_BAD = [
    "* `variant='paper'` (default): $p=2$, $T=1$, scale 1, batch mean, margin $2\\bar s$;",
    'the row `mr2` is the library default (λ = 0.1, paper-faithful term). Chapter 21 has the full sweep.',
    "LWR = BS + R, MR² with the library defaults: $\\bar c=1$, λ = 0.1, paper-faithful term)",
    "The library's default is the paper's form of MR².",
    "- `DBMLoss(class_counts, scale=32, margin=0.1, tau=1, base='bs'|'ce')` (default DBM-BS, measured in chapter 23)",
    'DBM defaults to the CE base.',
    'By default DBM uses $s=32$.',
]
DEFAULT_OK = [
    "The library's default is therefore `variant='released'` at λ = 0.1, with `variant='paper'` named for the paper.",
    "- The default is `variant='released'` (measured above not to hurt); `variant='paper'` is the paper-literal term.",
    "`DBMLoss` defaults to $s=8$ rather than the papers' 32.",
    "every candidate default of MR² and DBM's two bases at the papers' scale $s=32$, each spelled out.",
    "ERM's level — the base the library's `DBMLoss` used to default to (the CE base).",
    "MR² with the paper-faithful term, the library's default form when this grid was run.",
    'Re-run against the defaults table: DBMLoss(counts, base="ce", scale=32) 71.2.',
    "The papers' default for DBM is $s=32$ with the CE base.",
    "The paper-literal term (`variant='paper'`) costs 16 points; see chapter 23.",
    "| 1 | default `p=5`; `variant='paper'`: `p=2` | the default — measured in (a), (b) |",
    "| 4 | default `temperature='10d'`; `variant='paper'`: `1, 1` | the default |",
    "The method registry follows the same split: its `mr2` entry is `MR2Loss` with these defaults, and `mr2-paper` is the paper's form.",
    # an ordering of table rows: the row labels 'MR², library default' and 'MR², paper form' are two rows, not one claim
    "Order of the finished rows on seed 0: MARC (on CE) 69.8 % > MR², library default 66.6 % ≈ DBM, papers’ form 66.2 % ≈ CE 65.9 % ≈ MR², paper form 65.3 %.",
    "MR², library default 66.6 % > MR², paper form 65.3 %.",
]

def _default_findings(sentences, defaults=None):
    return cs.library_default_findings([md(s, id=f'm{i}') for i, s in enumerate(sentences)], 'p.html', defaults)

def test_library_defaults_read_from_the_library():
    import inspect
    from margin_notes.mr2 import MR2Loss
    from margin_notes.dbm import DBMLoss
    d = cs.library_defaults()
    assert d['mr2_variant'] == inspect.signature(MR2Loss).parameters['variant'].default
    assert d['dbm_base'] == inspect.signature(DBMLoss).parameters['base'].default
    s = inspect.signature(DBMLoss).parameters['scale'].default
    if s == 'auto':     # dbm_default_scale(K): 8 for ten classes, a little more for thousands, never the papers' 32
        from margin_notes.dbm import dbm_default_scale
        assert d['dbm_scale'][0] <= dbm_default_scale(10) <= d['dbm_scale'][1] < 30
    else: assert d['dbm_scale'] == float(s)

def test_library_default_auto_scale():
    "With scale='auto' every value the rule gives for some K is a true default; the papers' 32 is not."
    d = {'mr2_variant': 'released', 'dbm_base': 'bs', 'dbm_scale': (8.0, 14.46)}
    assert _default_findings(['By default DBM uses $s=8$.', 'On ImageNet the default DBMLoss scale is 9.9.'], d) == []
    assert checks(_default_findings(['By default DBM uses $s=32$.'], d)) == ['library-default']
    assert checks(_default_findings(['By default DBM uses $s=32$.'], cs.library_defaults())) == ['library-default']

def test_library_default_fires():
    d = {'mr2_variant': 'released', 'dbm_base': 'bs', 'dbm_scale': 8.0}
    for s in DEFAULT_BAD: assert checks(_default_findings([s], d)) == ['library-default'], s

def test_library_default_passes():
    d = {'mr2_variant': 'released', 'dbm_base': 'bs', 'dbm_scale': 8.0}
    for s in DEFAULT_OK: assert _default_findings([s], d) == [], s

def test_library_default_follows_the_library():
    "Had the library kept the paper's term and the CE base at s = 32, the opposite statements would be the wrong ones."
    d = {'mr2_variant': 'paper', 'dbm_base': 'ce', 'dbm_scale': 32.0}
    assert checks(_default_findings(["* `variant='released'` (default): p=5"], d)) == ['library-default']
    assert _default_findings(["* `variant='paper'` (default): p=2", 'By default DBM uses $s=32$.'], d) == []
    assert checks(_default_findings(['DBMLoss defaults to the BS base.'], d)) == ['library-default']


def test_prose_only_runs_without_a_build(capsys):
    rc = cs.main(['--prose-only', '--only', '07_style'])
    out = capsys.readouterr().out
    assert 'check-site --prose-only:' in out and 'style.html' in out and rc in (0, 1)


# ---------------------------------------------------------------- page-side: 3-8 in Chromium
def _have_browser():
    return bool(shutil.which('chromium') or shutil.which('chromium-browser') or shutil.which('google-chrome')) \
        and (cs.MATHJAX_DIR / 'MathJax.js').exists()

PAGE = """<!DOCTYPE html><html><head><script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml-full.js" type="text/javascript"></script>
<style>main {{ width: 600px; }} img {{ max-width: 100%; }} pre {{ white-space: pre-wrap; }}</style></head>
<body><main>{body}</main></body></html>"""
LONG_TEX = ' + '.join(f'\\frac{{a_{{{i}}}}}{{b_{{{i}}}}}' for i in range(40))
SRC = 'https://github.com/o/r/blob/main/pkg/mod.py'
CELL_SRC = {'bigfig': 'fig, ax = plt.subplots(figsize=(11, 3))',
            'tinyfont': "#| label: fig-tinyfont\nax.legend(fontsize=5)\nplt.show()"}

def _png(path, width_in, dpi=110):
    import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(width_in, 1.5), dpi=dpi); ax.plot([0, 1]); fig.savefig(path, dpi=dpi); plt.close(fig)

def _fig(src, cell, caption=True, alt='two lines rising'):
    img = f'<img src="{src}" class="img-fluid figure-img"' + (f' alt="{alt}"' if alt is not None else '') + '>'
    if not caption: return f'<div id="{cell}" class="cell"><div class="cell-output cell-output-display"><figure class="figure"><p>{img}</p></figure></div></div>'
    return (f'<div id="cell-fig-{cell}" class="cell"><div class="cell-output cell-output-display">'
            f'<div id="fig-{cell}" class="quarto-float quarto-figure"><figure class="quarto-float quarto-float-fig figure">'
            f'<div>{img}</div><figcaption>Figure&nbsp;1: A caption</figcaption></figure></div></div></div>')

def _table(cell, caption=True):
    t = '<table><thead><tr><th>method</th><th>overall</th></tr></thead><tbody><tr><td>ce</td><td>63.9</td></tr></tbody></table>'
    if not caption: return f'<div id="{cell}" class="cell"><div class="cell-output cell-output-display">{t}</div></div>'
    return (f'<div class="cell"><div id="tbl-{cell}" class="cell quarto-float"><figure class="quarto-float quarto-float-tbl figure">'
            f'<figcaption>Table&nbsp;2: Results</figcaption><div><div class="cell-output cell-output-display">{t}</div></div></figure></div></div>')

GOOD = (_fig('small.png', 'ok') + _table('ok') +
        '<p>As <a href="mr2.html">chapter 10</a> shows, and <code>chapter 10</code>, and this chapter 07 itself.</p>'
        '<h2>Chapter 10 in a heading</h2><p>Chapter 99 is not a chapter of the book.</p>'
        f'<p><a href="{SRC}#L12" style="float:right">source</a></p>'
        '<section id="f"><h3>f</h3><div class="sourceCode"><pre class="sourceCode"><code>def f(\n    x, # from <a href="load.html">load</a>\n)</code></pre></div></section>'
        r'<p><span class="math display">\[ x = \frac{1}{2} \]</span></p>')
BAD = ('<header id="title-block-header"><p class="subtitle">The probe of chapter 20, again.</p></header>'
       + _fig('big.png', 'bigfig', caption=False, alt=None) + _fig('small.png', 'tinyfont', alt='') + _table('rt', caption=False) +
       '<p>The margins of chapter 10 and Chapter 13_dbm, see chapters 21.</p>'
       f'<p><a href="{SRC}#LNone" style="float:right">source</a> <a href="{SRC}">source</a></p>'
       '<section id="g"><h3>g</h3><div class="sourceCode"><pre class="sourceCode"><code>def g(\n'
       '    data, # a DataBundle from [`load_data`](https://x.github.io/y/engine.html#load_data)\n)</code></pre></div></section>'
       f'<p><span class="math display">\\[ {LONG_TEX} \\]</span></p>')


@pytest.mark.skipif(not _have_browser(), reason='needs chromium and libjs-mathjax')
def test_page_checks_fire_and_pass(tmp_path):
    _png(tmp_path / 'big.png', 11)      # 1210 px drawn: shown at most 600 px wide (< 50 %)
    _png(tmp_path / 'small.png', 4)     # 440 px: shown at natural width
    for k, body in (('good', GOOD), ('bad', BAD)): (tmp_path / f'{k}.html').write_text(PAGE.format(body=body))
    srv, url = cs.serve(tmp_path)
    try:
        (good, e1), (bad, e2) = [cs.browse(f'{url}/{k}.html', 10000, 90) for k in ('good', 'bad')]
    finally: srv.shutdown()
    assert not e1 and not e2, (e1, e2)
    cells = [code(s, id=k) for k, s in CELL_SRC.items()]
    nums = {'07', '10', '13', '20', '21'}
    ok = cs.reader_findings(good, tmp_path / 'style.html', cells, nums)   # chapter 07's own page: its 'chapter 07' needs no link
    assert ok == [], '\n'.join(map(str, ok))
    got = cs.reader_findings(bad, tmp_path / 'p.html', cells, nums)
    by = {}
    for f in got: by.setdefault(f.check, []).append(f)
    msg = '\n'.join(map(str, got))
    assert set(by) == {'img-scale', 'img-font', 'caption', 'alt', 'chapter-link', 'source-line', 'sig-link', 'math-wide'}, msg
    assert [f.where for f in by['img-scale']] == ['cell bigfig'] and '1210 px drawn' in by['img-scale'][0].msg, msg
    assert int(by['img-scale'][0].msg.split('at ')[1].split('%')[0]) < 85
    # bigfig: 9 pt (the style's smallest) at 110 dpi, shown at < 50 %: < 6.9 px; tinyfont: 5 pt at full width: 7.6 px
    assert sorted(f.where for f in by['img-font']) == ['cell bigfig', 'cell cell-fig-tinyfont'], msg
    assert sorted(f.where for f in by['caption']) == ['cell bigfig', 'cell rt'], msg
    assert len(by['alt']) == 2, msg
    assert sorted(f.msg.split("'")[1] for f in by['chapter-link']) == ['Chapter 13_dbm', 'chapter 10', 'chapter 20', 'chapters 21'], msg
    assert [f.where for f in by['chapter-link'] if '20' in f.msg] == ['page description'], msg
    assert len(by['source-line']) == 2, msg
    assert 'load_data' in by['sig-link'][0].msg and by['sig-link'][0].where == '#g', msg
    assert len(by['math-wide']) == 1 and int(by['math-wide'][0].msg.split('math ')[1].split(' px')[0]) > 100, msg


def test_font_and_dpi_helpers(tmp_path):
    assert cs.book_min_font_pt() == 9.0 and cs.book_dpi() == 110.0      # margin_notes/style.py's BOOK_RC
    assert cs.cell_min_font_pt("ax.legend(fontsize=7); ax.text(0, 0, 's', size=6)", 9) == 6
    assert cs.cell_min_font_pt("ax.legend(fontsize='x-small')", 9) == pytest.approx(6.94)
    assert cs.cell_min_font_pt("fig, ax = plt.subplots(figsize=(3, 2)); ax.plot(x, ms=2, markersize=1)", 9) == 9
    # a size set inside a library function the cell calls counts too (margin_notes/diagnose.py annotates at 7 pt)
    lib = cs.library_font_sizes()
    assert lib.get('plot_diagnosis', 99) <= 7 or any(v <= 7 for v in lib.values()), lib
    name = min(lib, key=lib.get)
    assert cs.cell_min_font_pt(f'{name}(run)', 9) == lib[name] and cs.cell_min_font_pt('other(run)', 9, {name: 5}) == 9
    _png(tmp_path / 'a.png', 2, dpi=150)
    assert cs.image_dpi('a.png', tmp_path / 'p.html') == pytest.approx(150, abs=0.1)
    assert cs.image_dpi('missing.png', tmp_path / 'p.html') == 110.0
