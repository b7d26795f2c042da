__version__ = "0.1.0"
# The public API: every module's exported names (nbdev writes each module's `__all__` from its #| export cells),
# reachable as `margin_notes.<name>` but imported only when first used (PEP 562), so that `import margin_notes.mr2`
# loads no plotting, trainer or back-end code. nbdev_export only rewrites the `__version__` line of this file.
# The name -> module map is read from the modules' `__all__` lists without importing them (tests/test_package.py
# checks it against the imported modules).
import ast as _ast
from pathlib import Path as _Path

# teaching order; where two modules export the same name, the first one here wins (the canonical definition)
_ORDER = ('core', 'registry', 'schedules', 'style', 'bound', 'margins', 'stats', 'mr2', 'baselines', 'marc', 'dbm',
          'lwr', 'data', 'models', 'metrics', 'report', 'config', 'engine', 'probe', 'paper')
_NOT_TOP_LEVEL = ('cli',)   # the console entry point stays `margin_notes.cli.main`
_NAMES = None

def _exports(path) -> list:
    "The `__all__` list of a module's source, read without importing it."
    for node in _ast.parse(path.read_text(encoding='utf-8')).body:
        if isinstance(node, _ast.Assign) and any(getattr(t, 'id', None) == '__all__' for t in node.targets):
            return list(_ast.literal_eval(node.value))
    return []

def _name_map() -> dict:
    "name -> module for every public name of the package."
    global _NAMES
    if _NAMES is None:
        here = _Path(__file__).parent
        mods = [m for m in _ORDER if (here / f'{m}.py').exists()]
        mods += sorted(p.stem for p in here.glob('*.py') if not p.stem.startswith('_') and p.stem not in mods + list(_NOT_TOP_LEVEL))
        names = {}
        for m in mods:
            for n in _exports(here / f'{m}.py'):
                if n != 'main': names.setdefault(n, m)
        _NAMES = names
    return _NAMES

def __getattr__(name: str):
    if name == '__all__': return sorted(_name_map())   # `from margin_notes import *`
    mod = _name_map().get(name)
    if mod is None: raise AttributeError(f"module 'margin_notes' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(f'{__name__}.{mod}'), name)
    globals()[name] = value
    return value

def __dir__():
    return sorted(set(globals()) | set(_name_map()))
