"""The docs build's text processing (scripts/docs_procs.py): chapter links, signature links, source line numbers,
the download link, and the sidebar labels (scripts/build_docs.py)."""
import json, re, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'scripts'))
import docs_procs as D  # noqa: E402
import build_docs  # noqa: E402

CH = {'23': ('premise.html', '23 · Does the margin rule hold?'), '23_premise': ('premise.html', '23 · Does the margin rule hold?'),
      '10': ('mr2.html', '10 · MR²'), '10_mr2': ('mr2.html', '10 · MR²'), '14': ('lwr.html', '14 · LWR'),
      '11': ('baselines.html', '11 · Baselines'), '12': ('marc.html', '12 · MARC'), '13': ('dbm.html', '13 · DBM'),
      '26_clip': ('clip.html', '26 · CLIP'), '26': ('clip.html', '26 · CLIP')}


def links(md):
    "(text, href) of every Markdown link in md"
    return re.findall(r'\[([^\]]+)\]\(([^ )]+)(?: "[^"]*")?\)', md)


# ---------------------------------------------------------------- chapter links
def test_single_mentions_become_links():
    md, n = D.link_chapters('See chapter 23, Chapter 10 and (chapter 26_clip); chapter 10_mr2 too.', CH)
    assert n == 4
    assert links(md) == [('chapter 23', 'premise.html'), ('Chapter 10', 'mr2.html'), ('chapter 26_clip', 'clip.html'),
                         ('chapter 10_mr2', 'mr2.html')]
    assert md.startswith('See [chapter 23](premise.html "23 · Does the margin rule hold?"), ')


def test_lists_and_ranges_link_each_number():
    md, n = D.link_chapters('chapters 10–14 and chapters 11 and 13, chapters 10, 12 and 23; chapters 10-14.', CH)
    assert n == 9, md
    assert [h for _, h in links(md)] == ['mr2.html', 'lwr.html', 'baselines.html', 'dbm.html', 'mr2.html', 'marc.html',
                                         'premise.html', 'mr2.html', 'lwr.html']
    assert md.startswith('chapters [10](mr2.html "10 · MR²")–[14](lwr.html "14 · LWR") and chapters [11]')


@pytest.mark.parametrize('text', [
    '`chapter 23`', '```python\nx = 1  # chapter 23\n```', '[chapter 23](x.html)', '## As chapter 23 shows',
    '$\\text{chapter 23}$', '<a href="x">chapter 23</a>', '<!-- chapter 23 -->',
    'chapter 99', 'chapter 2', 'chapter 10.5', 'chapter 10_foo', 'chapter 230', 'subchapter 23', 'the chapter-23 report'])
def test_not_linked(text):
    "Code, links, headings, math, HTML, numbers that are not chapters and names that are not that chapter's."
    assert D.link_chapters(text, CH) == (text, 0)


def test_no_link_to_the_page_itself():
    md, n = D.link_chapters('chapters 10–14 (chapter 14)', CH, here='lwr.html')
    assert n == 1 and [h for _, h in links(md)] == ['mr2.html']


def test_chapter_table_from_notebooks(tmp_path):
    for stem, title in (('23_premise', 'Does it hold?'), ('10_mr2', 'MR²: `margins`')):
        (tmp_path / f'{stem}.ipynb').write_text(json.dumps({'cells': [{'cell_type': 'markdown', 'source': [f'# {title}\n', '\n> d']}]}))
    (tmp_path / 'index.ipynb').write_text('{}')
    t = D.chapter_table(tmp_path)
    assert t['23'] == t['23_premise'] == ('premise.html', '23 · Does it hold?')
    assert t['10'] == ('mr2.html', '10 · MR²: margins') and 'index' not in t and '02' not in t
    # the book's own chapters: every notebook number, and the page names check_site uses
    import check_site
    book = D.chapter_table()
    for nb in (ROOT / 'nbs').glob('[0-9][0-9]_*.ipynb'):
        assert book[nb.stem[:2]][0] == check_site.page_name(nb.stem) + '.html'


# ---------------------------------------------------------------- raw links in signatures
SIG = '''---

### margin_bound

```python
def margin_bound(
    empirical_risk, # empirical risk
    constant:str='paper', # see [`complexity_term`](https://margin-notes.github.io/margin_notes/bound.html#complexity_term)
    model, # a [`ClipModel`](https://x/clip.html#clipmodel) or [`nn.Module`]( https://y )
)->float:
```

*Theorem 1 with [`complexity_term`](https://margin-notes.github.io/margin_notes/bound.html#complexity_term).*'''


def test_signature_links_removed_docstring_links_kept():
    md, n = D.strip_code_links(SIG)
    assert n == 2
    sig = md.split('```python')[1].split('```')[0]
    assert '](' not in sig.replace('[`nn.Module`]( https://y )', '')
    assert "constant:str='paper', # see `complexity_term`\n" in sig
    assert '*Theorem 1 with [`complexity_term`](https://margin-notes.github.io' in md   # prose keeps its link
    assert D.strip_code_links('no code [`x`](u)') == ('no code [`x`](u)', 0)


def test_show_doc_processor_writes_no_link_into_a_signature():
    "The real processor on a real symbol whose parameter comment names another symbol (bound.margin_bound)."
    from execnb.nbio import dict2nb
    import nbformat
    from nbformat.v4 import new_code_cell
    nb = dict2nb(json.loads(json.dumps(nbformat.v4.new_notebook(cells=[
        new_code_cell('#| default_exp bound'), new_code_cell('show_doc(margin_bound)')]))))
    proc = D.show_doc_outputs(nb)
    proc.begin(); proc(nb.cells[1])
    md = ''.join(nb.cells[1].outputs[0]['data']['text/markdown'])
    sig = md.split('```python')[1].split('```')[0]
    assert '`complexity_term`' in sig and '](' not in sig, sig
    # and the source link carries the definition's line in margin_notes/bound.py
    m = re.search(r'blob/[^)#]+/margin_notes/bound\.py#L(\d+)\)', md)
    assert m and '#LNone' not in md, md[:300]
    line = (ROOT / 'margin_notes' / 'bound.py').read_text().splitlines()[int(m.group(1)) - 1]
    assert line.startswith('def margin_bound('), line


# ---------------------------------------------------------------- source line numbers
def test_source_line_numbers():
    import margin_notes.mr2 as mr2, margin_notes.core as core
    src = (ROOT / 'margin_notes' / 'mr2.py').read_text().splitlines()
    for sym, name in ((mr2.MR2Loss, 'margin_notes.mr2.MR2Loss'), (mr2.MR2Loss.forward, 'margin_notes.mr2.MR2Loss.forward')):
        line = D.source_line(sym, name)
        assert line and re.match(rf'\s*(class|def) {name.rsplit(".", 1)[1]}\b', src[line - 1]), (name, line)
    assert D.source_line(core.find_data, 'margin_notes.core.find_data') > 1
    url = '[source](https://github.com/o/r/blob/main/margin_notes/mr2.py#LNone){target="_blank"}'
    assert D.fix_source_link(url, 93) == (url.replace('#LNone', '#L93'), 1)
    assert D.fix_source_link(url, None) == (url.replace('#LNone', ''), 0)


# ---------------------------------------------------------------- download link and sidebar
def test_download_link_in_frontmatter():
    from execnb.nbio import dict2nb
    nb = dict2nb({'cells': [{'cell_type': 'raw', 'source': '---\ntitle: T\noutput-file: premise.html\n---\n\n', 'metadata': {}},
                            {'cell_type': 'markdown', 'source': 'x', 'metadata': {}}], 'metadata': {}})
    nb.path_ = '/x/nbs/23_premise.ipynb'
    D.download_link(nb).end()
    import yaml
    fm = yaml.safe_load(nb.cells[0].source.split('---')[1])
    assert fm['title'] == 'T' and fm['output-file'] == 'premise.html'
    assert fm['code-links'][0]['href'] == 'notebooks/23_premise.ipynb'


def test_sidebar_labels_are_the_notebook_titles(tmp_path):
    text = (ROOT / '_quarto.yml').read_text()
    _, changes = build_docs.sync_sidebar(text)
    assert changes == [], f'run `python scripts/build_docs.py --sync-sidebar`: {changes}'
    (tmp_path / '10_mr2.ipynb').write_text(json.dumps({'cells': [{'cell_type': 'markdown', 'source': '# New title\n\n> d'}]}))
    new, ch = build_docs.sync_sidebar('  - href: 10_mr2.ipynb\n    text: "10 · Old"\n', nbs=tmp_path)
    assert ch and new == '  - href: 10_mr2.ipynb\n    text: "10 · New title"\n'


def test_settings_run_the_processors_in_order():
    import configparser
    cp = configparser.ConfigParser(); cp.read(ROOT / 'settings.ini')
    procs = cp['DEFAULT']['procs'].split()
    assert procs == ['docs_procs:show_doc_outputs', 'docs_procs:chapter_links', 'docs_procs:download_link']


def test_captions_and_description_get_links():
    "Chapter mentions in `#| tbl-cap:` lines (links without a tooltip: the caption is a quoted YAML string) and in the page description."
    from execnb.nbio import dict2nb
    import yaml
    nb = dict2nb({'cells': [
        {'cell_type': 'raw', 'metadata': {}, 'source': '---\ndescription: The probe of chapter 26 and the CNN of chapter 27.\ntitle: T\n---\n\n'},
        {'cell_type': 'code', 'metadata': {}, 'outputs': [], 'execution_count': None,
         'source': '#| label: tbl-x\n#| tbl-cap: "Rerun under chapter 26\'s protocol"\nx = 1  # chapter 26'}], 'metadata': {}})
    nb.path_ = str(ROOT / 'nbs' / '29_premise.ipynb')
    p = D.chapter_links(nb); p.begin()
    for c in nb.cells: p(c)
    p.end()
    src = nb.cells[1].source
    assert '#| tbl-cap: "Rerun under [chapter 26](cpu_features.html)\'s protocol"' in src, src
    assert src.endswith('x = 1  # chapter 26')                     # code itself untouched
    yaml.safe_load(src.splitlines()[1][3:])                        # the option line is still valid YAML
    fm = yaml.safe_load(nb.cells[0].source.split('---')[1])
    assert fm['description'].startswith('The probe of [chapter 26](cpu_features.html "26 · ') and 'fmnist_lt.html' in fm['description']
