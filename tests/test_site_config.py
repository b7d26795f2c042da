"""The book's site configuration: _quarto.yml, its symlink in nbs/, settings.ini, the chapter list, workflows."""
import configparser, json, re, shutil, sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'scripts'))
import check_site  # noqa: E402

PARTS = {
    'Part I · Theory': ['00_core', '01_bound', '02_optimal_margins', '03_class_stats'],
    'Part II · Toolkit': ['04_metrics', '05_data', '06_models', '07_style', '08_schedules', '09_report', '10_loop', '11_standins', '12_clip'],
    'Part III · Methods': ['13_mr2', '14_baselines', '15_marc', '16_dbm', '17_lwr', '18_registry'],
    'Part IV · Running experiments': ['19_config', '20_presets', '21_engine', '22_diagnose', '23_cli', '24_probe', '25_paper'],
    'Part V · Experiments': ['26_cpu_features', '27_fmnist_lt', '28_paper_vs_code', '29_premise', '30_cifar10lt_cpu', '31_own_data',
                             '32_mr2_cifar100', '33_marc_cifar_lt', '34_lwr_lt', '35_mr2_imagenet_clip', '36_gpu_check'],
}


@pytest.fixture(scope='module')
def cfg():
    return yaml.safe_load((ROOT / '_quarto.yml').read_text())


def _sections(cfg):
    return {s['section']: [Path(e['href'] if isinstance(e, dict) else e).stem for e in s['contents']]
            for s in cfg['website']['sidebar']['contents'] if isinstance(s, dict) and 'section' in s}


def test_symlink_resolves_to_top_level():
    link = ROOT / 'nbs' / '_quarto.yml'
    assert link.is_symlink(), 'nbs/_quarto.yml must be a symlink (nbdev reads nbs/, the repo keeps one config)'
    assert link.resolve() == (ROOT / '_quarto.yml').resolve()


def test_settings_ini():
    cp = configparser.ConfigParser(); cp.read(ROOT / 'settings.ini')
    d = cp['DEFAULT']
    # the docs build executes no chapter: nbdev's exec_show_docs is off, show_doc cells come from the library
    assert 'exec_show_docs' in [x.strip() for x in d['skip_procs'].split(',')]
    assert 'docs_procs:show_doc_outputs' in d['procs'].split()
    # notebooks are committed with their outputs: nbdev_clean must keep them
    assert d.getboolean('clear_all') is False
    assert d['tst_flags'].split() == ['notest', 'slow', 'gpu']
    assert d.getboolean('custom_sidebar') is True, 'the sidebar lives in _quarto.yml, nbdev must not write sidebar.yml'
    assert d['nbs_path'] == 'nbs' and d['doc_path'] == '_docs'


def test_website_and_formats(cfg):
    assert cfg['project']['type'] == 'website'
    html = cfg['format']['html']
    assert html['number-sections'] is True and int(html['number-depth']) >= 1
    assert html['html-math-method'] == 'mathjax'
    assert html['code-fold'] in (True, 'show', 'true')
    assert html['css'] == 'styles.css' and (ROOT / 'nbs' / 'styles.css').exists()
    assert 'nbdev.yml' in cfg['metadata-files']
    assert cfg['website']['page-navigation'] is True


def test_parts_in_order(cfg):
    secs = _sections(cfg)
    assert list(secs) == list(PARTS), 'five parts, in this order'
    for part, want in PARTS.items():
        got = secs[part]
        assert [n for n in got if n in want] == want, f'{part}: chapters {want} in this order, got {got}'
        # any extra chapter sits in the part whose number block it belongs to
        nums = {int(n[:2]) for n in got}
        assert all(n in nums for n in (int(w[:2]) for w in want))


def test_chapter_numbers_in_labels(cfg):
    for part, href, text in check_site.sidebar_entries(cfg):
        if part is None: continue
        num = Path(href).stem.split('_')[0]
        assert text and text.startswith(f'{num} · '), f'{href}: sidebar label must start with its chapter number'


def test_every_chapter_listed_and_present(cfg):
    assert check_site.chapter_list_problems(cfg) == []


def test_chapter_list_check_can_fail(cfg, tmp_path):
    (tmp_path / '00_core.ipynb').write_text('{}')
    (tmp_path / '99_unlisted.ipynb').write_text('{}')
    probs = check_site.chapter_list_problems(cfg, nbs=tmp_path)
    assert any('99_unlisted' in p for p in probs)
    missing = [n for n in check_site.listed_chapters(cfg) if n != '00_core' and n not in check_site.PLANNED]
    assert all(any(n in p for p in probs) for n in missing)
    bad = {'website': {'sidebar': {'contents': [{'section': 'x', 'contents': ['17_lwr.ipynb', '32_lwr.ipynb']}]}}}
    assert any('lwr.html' in p for p in check_site.chapter_list_problems(bad, nbs=tmp_path))


def test_title_cells():
    assert check_site.title_problems() == []


def test_title_cell_check_can_fail(tmp_path):
    def nb(src):
        f = tmp_path / 'x.ipynb'
        f.write_text(json.dumps({'cells': [{'cell_type': 'markdown', 'source': src}]}))
        return check_site.title_cell_problems(f)
    assert nb('# T\n\n> one line\n\nbody') == []
    assert any('one line' in p for p in nb('# T\n\n> first\n> second'))
    assert any('# Title' in p for p in nb('no title\n\n> d'))


def test_planned_are_listed(cfg):
    listed = set(check_site.listed_chapters(cfg))
    assert check_site.PLANNED <= listed | {'index'}, 'PLANNED names chapters of the sidebar only'


def test_navbar_targets(cfg):
    listed = set(check_site.listed_chapters(cfg))
    for item in cfg['website']['navbar'].get('left', []):
        assert Path(item['href']).stem in listed


def test_workflows_parse():
    wf = ROOT / '.github' / 'workflows'
    test = yaml.safe_load((wf / 'test.yaml').read_text())
    deploy = yaml.safe_load((wf / 'deploy.yaml').read_text())
    on = lambda d: d.get('on', d.get(True))  # YAML 1.1 reads a bare `on` key as True
    assert 'push' in on(test) and 'pull_request' in on(test)
    steps = [s.get('run', '') + s.get('uses', '') for j in test['jobs'].values() for s in j['steps']]
    assert any('make test' in s for s in steps) and any('setup-python' in s for s in steps)
    assert on(deploy)['push']['branches'] == ['main']
    steps = [s.get('run', '') + s.get('uses', '') for j in deploy['jobs'].values() for s in j['steps']]
    for want in ('quarto-dev/quarto-actions/setup', 'upload-pages-artifact', 'deploy-pages'):
        assert any(want in s for s in steps), want
    assert any(w in s for s in steps for w in ('make docs', 'build_docs.py', 'nbdev_docs'))
    assert deploy['permissions']['pages'] == 'write' and deploy['permissions']['id-token'] == 'write'


def test_style_module_used_by_figure_chapters():
    "Every chapter that draws with matplotlib applies the book's style (one style module for the book)."
    import json
    offenders = []
    for nb in sorted((ROOT / 'nbs').glob('*.ipynb')):
        src = '\n'.join(''.join(c['source']) for c in json.loads(nb.read_text())['cells'] if c['cell_type'] == 'code')
        draws = re.search(r'plt\.(subplots|figure|plot)\(|\.plot\(', src)
        if draws and nb.stem != '07_style' and 'use_book_style' not in src and 'plot_sorted_per_class' not in src:
            offenders.append(nb.name)
    assert offenders == [], f'chapters drawing figures without use_book_style(): {offenders}'


def test_fold_filter(cfg, tmp_path):
    "Long cells start folded: the Lua filter is configured, and (where pandoc exists) marks only long cells."
    import shutil, subprocess
    lua = ROOT / 'nbs' / 'fold_long_cells.lua'
    assert 'fold_long_cells.lua' in cfg['filters'] and lua.exists()
    if not shutil.which('pandoc'): pytest.skip('pandoc not installed')
    long = '\n'.join(f'x{i} = {i}' for i in range(int(cfg.get('fold-long-cells', 30)) + 5))
    md = (f'```{{.python .cell-code}}\n{long}\n```\n\n```{{.python .cell-code}}\ny = 1\n```\n\n'
          f'```{{.python .cell-code code-fold="false"}}\n{long}\n```\n\n```python\n{long}\n```\n')
    (tmp_path / 'a.md').write_text(md)
    out = subprocess.run(['pandoc', '--lua-filter', str(lua), '-t', 'json', str(tmp_path / 'a.md')],
                         capture_output=True, text=True, check=True).stdout
    import json
    folds = [dict(b['c'][0][2]).get('code-fold') for b in json.loads(out)['blocks'] if b['t'] == 'CodeBlock']
    assert folds == ['true', None, 'false', None]



# ---------------------------------------------------------------- the docs build and the output policy
import execute_book, docs_procs  # noqa: E402


def _nb(cells):
    import nbformat
    return nbformat.v4.new_notebook(cells=cells)


def test_show_doc_processor_executes_nothing(tmp_path):
    "Docs processing renders show_doc from the library and runs no other cell (nbdev's exec_show_docs would)."
    from nbformat.v4 import new_code_cell, new_markdown_cell
    from execnb.nbio import dict2nb
    from nbdev.processors import FilterDefaults
    nb = _nb([new_markdown_cell('# T\n\n> s'), new_code_cell('#| default_exp core'),
              new_code_cell('#| export\ndef is_smoke(): pass'),
              new_code_cell("import os\nraise RuntimeError('a docs build ran a chapter cell')"),
              new_code_cell('show_doc(find_data)')])
    names = [p.__name__ if hasattr(p, '__name__') else type(p).__name__ for p in FilterDefaults().procs()]
    assert 'exec_show_docs' not in names and 'show_doc_outputs' in names
    nb = dict2nb(json.loads(json.dumps(nb)))
    nb.path_ = str(tmp_path / 'x.ipynb')
    FilterDefaults()(nb)
    md = {c.idx_: ''.join(o['data']['text/markdown']) for c in nb.cells for o in c.get('outputs', [])}
    assert any('is_smoke' in m for m in md.values()), md      # the show_doc nbdev inserted, from margin_notes.core
    assert any('find_data' in m for m in md.values()), md     # the author's show_doc
    raising = [c for c in nb.cells if 'RuntimeError' in c.source]
    assert raising and not raising[0].get('outputs'), 'the docs build executed a chapter cell'


def test_show_doc_processor_refuses_code(tmp_path):
    from execnb.nbio import dict2nb
    from nbformat.v4 import new_code_cell
    nb = dict2nb(json.loads(json.dumps(_nb([new_code_cell('#| default_exp core'), new_code_cell('x = 1\nshow_doc(is_smoke)')]))))
    proc = docs_procs.show_doc_outputs(nb)
    proc.begin()
    with pytest.raises(ValueError, match='other code'): proc(nb.cells[1])


def _out(kind, **kw):
    from nbformat.v4 import new_output
    return new_output(kind, **kw)


def test_execute_book_refusals(monkeypatch):
    "The output policy: errors, tracebacks, stderr, smoke markers, machine paths and slow-cell outputs are refused."
    from nbformat.v4 import new_code_cell
    monkeypatch.setenv('MARGIN_NOTES_DATA', '/some/data/root')
    good = _nb([new_code_cell('print(1)', outputs=[_out('stream', name='stdout', text='acc 0.982\n')]),
                new_code_cell('#| slow\ntrain()')])
    assert execute_book.problems('good', good) == []
    cases = {
        'error output': _out('error', ename='ValueError', evalue='boom', traceback=['x']),
        'traceback': _out('stream', name='stdout', text='Traceback (most recent call last):\n  File "x", line 1\n'),
        'stderr stream': _out('stream', name='stderr', text='something odd\n'),
        'smoke-run marker': _out('display_data', data={'text/markdown': '**smoke run**: 2 epochs'}),
        'machine path': _out('stream', name='stdout', text='reading /some/data/root/cifar\n'),
        'memory address': _out('execute_result', data={'text/plain': '<Foo at 0x7f3a2b1c9d00>'}, execution_count=1),
        'machine-dependent message': _out('stream', name='stdout', text='class_counts/ not under the data root: skipping\n'),
    }
    for why, o in cases.items():
        probs = execute_book.problems('ch', _nb([new_code_cell('f()', outputs=[o])]))
        assert any(why in p for p in probs) and all('ch cell 0' in p for p in probs), (why, probs)
    slow = _nb([new_code_cell('#| gpu\ntrain()', outputs=[_out('stream', name='stdout', text='x')])])
    assert any('slow/#| gpu' in p for p in execute_book.problems('ch', slow))


def test_execute_book_strips_only_noise():
    from nbformat.v4 import new_code_cell
    nb = _nb([new_code_cell('f()', outputs=[
        _out('stream', name='stderr', text='/x/y.py:3: UserWarning: deprecated\n  warnings.warn(msg)\n'),
        _out('stream', name='stderr', text='100%|██████| 10/10 [00:01<00:00, 9.1 it/s]\r'),
        _out('stream', name='stderr', text='ERROR: data not found\n'),
        _out('stream', name='stdout', text='ok\n')])])
    log = execute_book.strip_noise('ch', nb)
    assert len(log) == 2
    kept = [o.get('text') for o in nb.cells[0].outputs]
    assert kept == ['ERROR: data not found\n', 'ok\n']
    assert any('stderr' in p for p in execute_book.problems('ch', nb))


def test_execute_book_skips_slow_and_gpu():
    from nbformat.v4 import new_code_cell
    assert execute_book.skipped(new_code_cell('#| slow\nx'))
    assert execute_book.skipped(new_code_cell('#| gpu\nx'))
    assert execute_book.skipped(new_code_cell('#| eval: false\nx'))
    assert not execute_book.skipped(new_code_cell('#| export\nx'))
    assert not execute_book.skipped(new_code_cell('x  # slow'))


def test_expectations_count_outputs_and_orphan_prose():
    from nbformat.v4 import new_code_cell, new_markdown_cell
    png = _out('display_data', data={'image/png': 'iVBOR', 'text/plain': 'fig'})
    tab = _out('execute_result', data={'text/html': '<table><tr><td>1</td></tr></table>'}, execution_count=1)
    mdt = _out('display_data', data={'text/markdown': '| a | b |\n|---|---|\n| 1 | 2 |\n'})
    nb = _nb([new_markdown_cell('The table below compares them.'), new_code_cell('t', outputs=[tab, mdt]),
              new_markdown_cell('The figure shows the curves.'), new_code_cell('f', outputs=[png]),
              new_markdown_cell('The following table lists the runs.'), new_code_cell('#| slow\nrun()'),
              new_code_cell('for t in tabs:\n    display(t)'), new_code_cell('if missing:\n    print(1)')])
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / 'x.ipynb'; p.write_text(json.dumps(nb))
        e = check_site.expectations(p)
    assert (e['images'], e['tables']) == (1, 2)
    assert len(e['orphans']) == 2 and 'following table' in e['orphans'][0]
    assert 'cells 6' in e['orphans'][1] and 'no committed output' in e['orphans'][1]   # the unexecuted display cell


def test_link_problems(tmp_path):
    (tmp_path / 'a.html').write_text('<main><h2 id="sec">x</h2></main>')
    (tmp_path / 'b.html').write_text('<main></main>')
    base = check_site.site_url()
    links = ['a.html#sec', 'b.html', '#', 'https://example.org/x', f'{base}a.html#sec',
             'c.html', 'a.html#nope', f'{base}b.html#_project_against']
    probs = check_site.link_problems(tmp_path / 'b.html', links, tmp_path, {})
    assert len(probs) == 3, probs
    assert any("'c.html'" in p for p in probs) and any("'nope'" in p for p in probs)
    assert any('_project_against' in p for p in probs)


def _have_browser():
    return bool(shutil.which('chromium') or shutil.which('chromium-browser') or shutil.which('google-chrome')) \
        and (check_site.MATHJAX_DIR / 'MathJax.js').exists()


PAGE = """<!DOCTYPE html><html><head><script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml-full.js" type="text/javascript"></script>
<style>main {{ width: 600px; }} pre {{ overflow: auto; }}</style></head>
<body><main>{body}</main></body></html>"""


@pytest.mark.skipif(not _have_browser(), reason='needs chromium and libjs-mathjax')
def test_browser_checks_fire(tmp_path):
    "The probe in Chromium catches raw TeX, undecodable figures, wide outputs, stderr; a good page passes."
    import base64, io
    import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(2, 1)); ax.plot([0, 1]); buf = io.BytesIO(); fig.savefig(buf, format='png'); plt.close(fig)
    png = base64.b64encode(buf.getvalue()).decode()
    pages = {
        'good': r'<p>Euler <span class="math inline">\(e^{i\pi}+1=0\)</span></p>'
                f'<div class="cell-output-display"><img src="data:image/png;base64,{png}"></div>'
                '<div class="cell-output-display"><table><tr><td>1</td></tr></table></div>',
        'bad': r'<p>broken <span class="math inline">\(\frac{1}{\)</span> and <span class="math inline">\(\nosuchmacro{x}\)</span></p>'
               '<div class="cell-output-display"><img src="data:image/png;base64,iVBORw0KGgoAAAAbroken"></div>'
               '<div class="cell-output cell-output-stdout"><pre>' + 'x' * 400 + '</pre></div>'
               '<div class="cell-output-display"><table style="width:900px"><tr><td>wide</td></tr></table></div>'
               '<div class="cell-output cell-output-stderr"><pre>UserWarning: smoke run</pre></div>',
    }
    for k, body in pages.items(): (tmp_path / f'{k}.html').write_text(PAGE.format(body=body))
    srv, url = check_site.serve(tmp_path)
    try:
        (good, e1), (bad, e2) = [check_site.browse(f'{url}/{k}.html', 10000, 90) for k in pages]
    finally: srv.shutdown()
    assert not e1 and not e2, (e1, e2)
    exp = {'images': 1, 'tables': 1, 'orphans': []}
    assert check_site.page_problems(exp, good) == [], good
    probs = '\n'.join(check_site.page_problems(exp, bad))
    for want in ('did not decode', 'wider than the text column', 'stderr', 'smoke-run marker', 'MathJax errors'):
        assert want in probs, (want, probs)
