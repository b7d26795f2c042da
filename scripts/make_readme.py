"""Write README.md from nbs/index.ipynb without Quarto (nbdev_readme needs Quarto).

Usage: python scripts/make_readme.py [--check]   (--check exits 1 if README.md is out of date)
"""
import json, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADER = "<!-- Generated from nbs/index.ipynb by scripts/make_readme.py: edit the notebook, not this file. -->\n\n"

def render(nb_path=ROOT / 'nbs' / 'index.ipynb') -> str:
    nb = json.loads(Path(nb_path).read_text())
    parts = []
    for cell in nb['cells']:
        src = ''.join(cell['source']).strip()
        if not src or src.startswith('#|'): continue
        if cell['cell_type'] == 'markdown': parts.append(src)
        elif cell['cell_type'] == 'code': parts.append('```python\n' + src + '\n```')
    text = '\n\n'.join(parts)
    # nbdev renders the '> summary' line under the title; keep links to chapters pointing at the notebooks
    return HEADER + text.replace('](0', '](nbs/0').replace('](1', '](nbs/1') + '\n'

if __name__ == '__main__':
    out = render()
    readme = ROOT / 'README.md'
    if '--check' in sys.argv:
        ok = readme.exists() and readme.read_text() == out
        print('README.md is ' + ('in sync with' if ok else 'OUT OF DATE against') + ' nbs/index.ipynb')
        sys.exit(0 if ok else 1)
    readme.write_text(out); print(f'wrote {readme}')
