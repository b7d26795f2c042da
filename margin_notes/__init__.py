__version__ = "0.1.0"
# The public face: a short, explicit list of what a user's training code needs, each name reachable as
# `margin_notes.<name>` but imported only when first used (PEP 562), so that `import margin_notes` loads nothing and
# `from margin_notes import MR2Loss` loads the loss module alone. Everything else stays in its module
# (`margin_notes.data.load_dataset`, `margin_notes.diagnose.diagnose`); each module's `__all__` (written by nbdev from its #| export cells) is
# its own reference. nbdev_export only rewrites the `__version__` line of this file; tests/test_package.py checks
# that every name below exists in its module's `__all__`.

_PUBLIC = {
    # losses and post-hoc steps (Part III)
    'mr2': ('MR2Loss',),
    'baselines': ('CELoss', 'BalancedSoftmaxLoss', 'LogitAdjustedLoss', 'LDAMLoss', 'FocalLoss', 'logit_adjust_posthoc', 'drw_weights'),
    'dbm': ('DBMLoss',),
    'lwr': ('LWRLoss', 'with_lwr'),
    'marc': ('MARC', 'MARCLoss', 'fit_marc', 'marc_logits'),
    # theory (Part I)
    'margins': ('optimal_margins',),
    'bound': ('margin_bound',),
    'stats': ('ClassStats',),
    # toolkit (Part II)
    'data': ('load_dataset', 'cifar_lt_counts', 'lt_indices'),
    'models': ('make_model', 'CosineClassifier'),
    'metrics': ('per_class_accuracy', 'accuracy_report', 'paired_tests', 'holm_adjust', 'mcnemar_test'),
    'report': ('summary_table', 'collect_results'),
    'loop': ('train_epochs', 'collect_outputs'),
    # running experiments (Part IV)
    'registry': ('get_method', 'method_names', 'build_method_loss', 'register_method', 'method_color'),
    'config': ('Config',),
    'presets': ('PRESETS', 'get_config'),
    'engine': ('fit', 'run_config', 'load_run', 'evaluate_run', 'calibrate_run'),
}
_NAMES = {n: m for m, names in _PUBLIC.items() for n in names}
__all__ = sorted(_NAMES)

def __getattr__(name: str):
    mod = _NAMES.get(name)
    if mod is None: raise AttributeError(f"module 'margin_notes' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(f'{__name__}.{mod}'), name)
    globals()[name] = value
    return value

def __dir__():
    return sorted(set(globals()) | set(_NAMES))
