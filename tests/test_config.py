"Tests of margin_notes.config: reading and writing a Config, overrides, what it resolves to (frozen, once), and validation."
import pytest

from margin_notes.config import Config, ConfigError, Resolved, apply_overrides, resolve, validate_config


@pytest.mark.parametrize('bad,msg', [
    (dict(epochs=0), 'epochs must be positive'), (dict(epochs='five'), 'epochs must be int'), (dict(epochs=True), 'epochs must be int'),
    (dict(batch_size=-1), 'batch_size must be positive'), (dict(lr=0.0), 'lr must be positive'),
    (dict(momentum=1.0), 'momentum must be < 1'), (dict(imbalance_factor=0.5), 'imbalance_factor must be >= 1'),
    (dict(dataset='cifar1000'), 'dataset must be one of'), (dict(device='gpu'), "device must be"),
    (dict(loss='mr2', loss_kwargs={'lamm': 0.2}), "did you mean 'lam'"), (dict(loss='mr2', loss_kwargs={'lam': 'x'}), 'expects float'),
    (dict(loss='marc', posthoc_kwargs={'gama': 1}), "did you mean 'gamma'"), (dict(loss='dbm', head='linear'), "head='cosine'"),
    (dict(loss='marc', head='cosine'), 'unscaled cosines'), (dict(milestones=['a']), 'milestones'),
    (dict(data_kwargs={'test_per_clas': 3}, dataset='synthetic-cifar10'), "did you mean 'test_per_class'"),
    (dict(report={'many': 10, 'few': 20}), 'few <= many'), (dict(report={'mid': 3}), 'unknown key'),
])
def test_validation_refuses_bad_configs(bad, msg):
    with pytest.raises(ConfigError, match=msg): validate_config(Config(**bad))


def test_config_resolves_once_to_a_frozen_record():
    r = resolve(Config(loss='ldam-drw', epochs=50))
    assert isinstance(r, Resolved) and resolve(r) is r
    assert (r.head, r.drw_start, r.milestones, r.posthoc) == ('cosine', 40, (40, 45), None)
    with pytest.raises(Exception, match='cannot assign'): r.head = 'linear'
    assert resolve(Config(loss='marc')).posthoc_kwargs == {'gamma': 1.2}


def test_fit_resolves_the_config_once(tmp_path, monkeypatch):
    "The trainer works the configuration out once per run and hands it down: no step resolves it again."
    import margin_notes.engine as E
    calls = []
    real = E.resolve
    monkeypatch.setattr(E, 'resolve', lambda c: calls.append(1) or real(c))
    cfg = Config(loss='ldam-drw', epochs=2, batch_size=64, data_kwargs={'test_per_class': 25}, dataset='digits', imbalance_factor=20.0,
                 arch='mlp', progress=False)
    E.fit(cfg, tmp_path / 'run', verbose=False)
    assert len(calls) == 1, len(calls)
