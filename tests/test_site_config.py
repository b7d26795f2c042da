"""The book's site configuration: _quarto.yml, its symlink in nbs/, settings.ini, the chapter list, workflows."""
import configparser, re, sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'scripts'))
import check_site  # noqa: E402

PARTS = {
    'Part I · Theory': ['01_bound', '02_optimal_margins'],
    'Part II · Methods': ['03_class_stats', '04_mr2', '05_baselines', '06_marc', '07_dbm', '08_lwr'],
    'Part III · Library': ['00_core', '10_data', '11_models', '12_metrics', '13_engine', '14_cli', '15_style'],
    'Part IV · Experiments': ['20_cpu_features', '21_fmnist_lt', '22_paper_vs_code', '30_mr2_cifar100',
                              '31_marc_cifar_lt', '33_mr2_imagenet_clip'],
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
    assert list(secs) == list(PARTS), 'four parts, in this order'
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
    bad = {'website': {'sidebar': {'contents': [{'section': 'x', 'contents': ['08_lwr.ipynb', '32_lwr.ipynb']}]}}}
    assert any('lwr.html' in p for p in check_site.chapter_list_problems(bad, nbs=tmp_path))


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
    for want in ('quarto-dev/quarto-actions/setup', 'nbdev_docs', 'upload-pages-artifact', 'deploy-pages'):
        assert any(want in s for s in steps), want
    assert deploy['permissions']['pages'] == 'write' and deploy['permissions']['id-token'] == 'write'


def test_style_module_used_by_figure_chapters():
    "Every chapter that draws with matplotlib applies the book's style (one style module for the book)."
    import json
    offenders = []
    for nb in sorted((ROOT / 'nbs').glob('*.ipynb')):
        src = '\n'.join(''.join(c['source']) for c in json.loads(nb.read_text())['cells'] if c['cell_type'] == 'code')
        draws = re.search(r'plt\.(subplots|figure|plot)\(|\.plot\(', src)
        if draws and nb.stem != '15_style' and 'use_book_style' not in src and 'plot_sorted_per_class' not in src:
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


def _have_browser():
    try: check_site.chromium(); check_site.mathjax_url(); return True
    except SystemExit: return False


@pytest.mark.skipif(not _have_browser(), reason='needs chromium and libjs-mathjax')
def test_render_check_catches_bad_pages(tmp_path):
    "check_site's assertions fire on a broken formula, an undecodable figure and an error output, not on a good page."
    import base64, io, nbformat
    from nbformat.v4 import new_notebook, new_markdown_cell, new_code_cell, new_output
    import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(2, 1)); ax.plot([0, 1]); buf = io.BytesIO(); fig.savefig(buf, format='png'); plt.close(fig)
    png = base64.b64encode(buf.getvalue()).decode()

    def page(md, outputs):
        nb = new_notebook(cells=[new_markdown_cell(md), new_code_cell('x', outputs=outputs)])
        p = tmp_path / f'nb{len(list(tmp_path.glob("*.ipynb")))}.ipynb'
        nbformat.write(nb, p)
        return p, check_site.to_html(p, p.with_suffix('.html'))

    pages = [
        page(r'Euler: $e^{i\pi}+1=0$ and $$\sum_{k=1}^K \frac{A_k}{\gamma_k^2}$$',
             [new_output('display_data', data={'image/png': png, 'text/plain': 'fig'})]),
        page(r'A broken formula: $\frac{1}{$ and an unknown macro $\nosuchmacro{x}$', []),
        page('no math', [new_output('display_data', data={'image/png': 'iVBORw0KGgoAAAAbroken' * 20})]),
        page('no math', [new_output('error', ename='ValueError', evalue='boom', traceback=['Traceback ...'])]),
    ]
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(4) as pool:  # one browser per page, side by side
        seen = list(pool.map(lambda pi: check_site.browse(pi[0].with_suffix('.html'), None, 10000, 90), pages))
    assert all(not err for _, err in seen), seen
    good, bad_math, bad_img, err = [check_site.problems(info, probe, 'executed')
                                    for (_, info), (probe, _) in zip(pages, seen)]
    assert good == []
    assert any('MathJax' in p for p in bad_math), bad_math
    assert any('image outputs' in p for p in bad_img), bad_img
    assert any('ValueError' in p for p in err), err
