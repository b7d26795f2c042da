"""Write README.md from nbs/index.ipynb without Quarto (nbdev_readme needs Quarto).

The preface's links to chapters (`[chapter 29](29_premise.ipynb)`) point at the notebooks in nbs/, and its
citations (`[@zhu2026mr2]`) become author-year text with a reference list at the end, read from
nbs/references.bib (on the site Quarto's citeproc does the same).

Usage: python scripts/make_readme.py [--check]   (--check exits 1 if README.md is out of date)
"""
import json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADER = "<!-- Generated from nbs/index.ipynb by scripts/make_readme.py: edit the notebook, not this file. -->\n\n"
CITE_RE = re.compile(r'\[(@[\w:-]+(?:\s*;\s*@[\w:-]+)*)\]')


def bib_entries(path=ROOT / 'nbs' / 'references.bib') -> dict:
    "{key: {field: value}} of a BibTeX file (enough for author, title, venue, year; braces stripped)."
    out = {}
    text = Path(path).read_text()
    for m in re.finditer(r'@\w+\s*\{\s*([^,\s]+)\s*,(.*?)\n\}', text, re.S):
        fields = {k.lower(): re.sub(r'[{}]', '', v).strip()
                  for k, v in re.findall(r'(\w+)\s*=\s*(\{(?:[^{}]|\{[^{}]*\})*\}|"[^"]*"|\d+)', m.group(2))}
        out[m.group(1)] = {k: v.strip('"') for k, v in fields.items()}
    return out


def _surname(author: str) -> str:
    return author.split(',')[0].strip() if ',' in author else author.split()[-1]


def cite_text(e: dict) -> str:
    "Author-year text of one entry: 'Zhu et al. 2026', 'Tan and Le 2019', or the title when there is no author."
    year = e.get('year', 'n.d.')
    if 'author' not in e: return f"*{e.get('title', '?')}*, {year}"
    names = [_surname(a) for a in e['author'].split(' and ')]
    who = names[0] if len(names) == 1 else f"{names[0]} and {names[1]}" if len(names) == 2 else f"{names[0]} et al."
    return f"{who} {year}"


ACCENTS = {"\\'a": 'á', "\\'e": 'é', '\\"o': 'ö', '\\"u': 'ü', '\\"a': 'ä', "\\'o": 'ó', "\\'i": 'í'}


def _tex(s: str) -> str:
    for k, v in ACCENTS.items(): s = s.replace(k, v)
    return s


def reference_line(e: dict) -> str:
    "One entry of the README's reference list: 'Authors (year). *Title*. Venue. Note.'"
    year, title = e.get('year', 'n.d.'), e.get('title', '?')
    if 'author' in e: line = _tex('; '.join(a.strip() for a in e['author'].split(' and '))) + f" ({year}). *{title}*."
    else: line = f"*{title}* ({year})."
    venue = e.get('booktitle') or e.get('journal') or e.get('howpublished') or e.get('institution')
    if venue: line += f" {venue}."
    if e.get('note'): line += f" {e['note'].rstrip('.')}."
    return line


def render(nb_path=ROOT / 'nbs' / 'index.ipynb') -> str:
    nb = json.loads(Path(nb_path).read_text())
    parts = []
    for cell in nb['cells']:
        src = ''.join(cell['source']).strip()
        if not src or src.startswith('#|'): continue
        if cell['cell_type'] == 'markdown': parts.append(src)
        elif cell['cell_type'] == 'code': parts.append('```python\n' + src + '\n```')
    text = '\n\n'.join(parts)
    # links to chapters point at the notebooks (on the site Quarto turns them into the chapter pages)
    text = re.sub(r'\]\(([\w-]+\.ipynb(?:#[\w-]+)?)\)', r'](nbs/\1)', text)
    bib, cited = bib_entries(), []
    def cite(m):
        keys = [k.strip().lstrip('@') for k in m.group(1).split(';')]
        for k in keys:
            if k not in bib: raise SystemExit(f'make_readme: [@{k}] is not in nbs/references.bib')
            if k not in cited: cited.append(k)
        return '(' + '; '.join(cite_text(bib[k]) for k in keys) + ')'
    text = CITE_RE.sub(cite, text)
    if cited:
        text += '\n\n## References\n\n' + '\n'.join(f'- {reference_line(bib[k])}' for k in cited)
    return HEADER + text + '\n'


if __name__ == '__main__':
    out = render()
    readme = ROOT / 'README.md'
    if '--check' in sys.argv:
        ok = readme.exists() and readme.read_text() == out
        print('README.md is ' + ('in sync with' if ok else 'OUT OF DATE against') + ' nbs/index.ipynb')
        sys.exit(0 if ok else 1)
    readme.write_text(out); print(f'wrote {readme}')
