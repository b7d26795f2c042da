"Tests for margin_notes.clip: templates and class names, local-only CLIP weights, zero-shot weights and head, make_model routing, WiSE-FT."
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

pytest.importorskip('open_clip')
import open_clip

from margin_notes.clip import (clip_templates, fill_template, clip_class_names, clip_weights_file, load_clip, clip_tokenizer,
                               save_tiny_clip_checkpoint, zero_shot_weights, ZeroShotHead, clip_classifier, wise_ft,
                               interpolated_model)
from margin_notes.models import make_model, input_spec, head_weight_norms
from margin_notes.clip import register_tiny_clip, CLIP_MEAN, CLIP_STD

TINY = register_tiny_clip()
NAMES = ['tench', 'goldfish', 'sea_lion']
TEMPS = ['a photo of a {}.', lambda c: f'a sketch of the {c}.']


@pytest.fixture(scope='module')
def ckpt(tmp_path_factory):
    return save_tiny_clip_checkpoint(tmp_path_factory.mktemp('clip') / 'tiny.pt', seed=3)


def _naive_weights(model, names, temps):
    "Float64, one prompt at a time, with the tokenizer open_clip returns for the model name."
    tok, m = open_clip.get_tokenizer(TINY), copy.deepcopy(model).double().eval()
    rows = []
    with torch.no_grad():
        for c in names:
            acc = 0
            for t in temps:
                e = m.encode_text(tok([t(c) if callable(t) else t.format(c)]))[0]
                acc = acc + e / torch.sqrt((e * e).sum())
            rows.append(acc / torch.sqrt((acc * acc).sum()))
    return torch.stack(rows)


def test_templates_and_class_names():
    assert len(clip_templates('openai')) == 80 and len(clip_templates('simple')) == 7
    assert fill_template(clip_templates()[1], 'dog') == 'a photo of many dog.'
    assert clip_class_names(['n01440764', 'n15075141', 'sea_lion']) == ['tench', 'toilet paper', 'sea lion']
    assert clip_class_names('imagenet')[281] == 'tabby cat'
    with pytest.raises(ValueError, match="'{}'"): clip_templates(['no slot'])
    with pytest.raises(ValueError, match='not one of'): clip_class_names(['n00000000'])


def test_weights_are_local_only(ckpt, tmp_path, monkeypatch):
    import urllib.request
    def no_net(*a, **k): raise AssertionError('a download was attempted')
    monkeypatch.setattr(urllib.request, 'urlopen', no_net)
    assert clip_weights_file(TINY, ckpt) == str(ckpt) and clip_weights_file(TINY, None) is None
    with pytest.raises(FileNotFoundError, match='not in the local cache'): clip_weights_file('RN50', 'openai', cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match='local file'): load_clip(TINY, pretrained=tmp_path / 'absent.pt')
    (tmp_path / 'RN50.pt').write_bytes(b'x')   # a tag whose file sits in open_clip's URL cache resolves to that file
    assert clip_weights_file('RN50', 'openai', cache_dir=tmp_path) == str(tmp_path / 'RN50.pt')
    a, b = load_clip(TINY, ckpt), load_clip(TINY, ckpt)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert all(torch.equal(v, a.state_dict()[k]) for k, v in torch.load(ckpt).items())
    with pytest.raises(ValueError, match='unknown open_clip model'): load_clip('RN-5O')


def test_zero_shot_weights_match_a_naive_loop(ckpt):
    model = load_clip(TINY, ckpt)
    W = zero_shot_weights(model, NAMES, TEMPS, batch_size=3)
    assert W.shape == (3, 32) and torch.allclose(W.norm(dim=1), torch.ones(3), atol=1e-6)
    assert torch.allclose(W.double(), _naive_weights(model, NAMES, TEMPS), atol=1e-5)
    # one template: the weight is that prompt's normalised embedding
    with torch.no_grad(): e = model.encode_text(clip_tokenizer(model)(['a photo of a goldfish.']))[0]
    assert torch.allclose(zero_shot_weights(model, ['goldfish'], ['a photo of a {}.'])[0], e / e.norm(), atol=1e-6)
    assert model.training   # the training flag is restored


def test_zero_shot_head_is_scaled_cosine():
    torch.manual_seed(0)
    W, z = torch.randn(5, 8), torch.randn(4, 8) * 3
    h = ZeroShotHead(W, 42.0)
    cos = torch.tensor([[float(torch.dot(zi, wk) / (zi.norm() * wk.norm())) for wk in W] for zi in z])
    assert torch.allclose(h(z), 42.0 * cos, atol=1e-4)
    assert torch.allclose(head_weight_norms(h), torch.full((5,), 42.0), atol=1e-4) and h.bias.abs().sum() == 0
    assert isinstance(h, nn.Linear) and not h.returns_cosines
    with pytest.raises(ValueError, match='positive'): ZeroShotHead(W, 0.0)


def test_clip_classifier_and_make_model(ckpt):
    full = load_clip(TINY, ckpt).eval()
    clf = clip_classifier(TINY, NAMES, pretrained=ckpt, templates=TEMPS).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        img = full.encode_image(x)
        assert torch.allclose(clf.backbone(x), img, atol=1e-6)   # features: the un-normalised image embedding
        words = ['tench', 'goldfish', 'sea lion']   # clip_classifier turns '_' into spaces
        ref = full.logit_scale.exp() * F.normalize(img, dim=-1) @ _naive_weights(full, words, TEMPS).float().T
        assert torch.allclose(clf(x), ref, atol=1e-3)
    m = make_model('clip:' + TINY, 3, weights=ckpt, class_names=NAMES, templates=TEMPS)
    assert torch.equal(m.head.weight, clf.head.weight)
    m2 = make_model('clip:' + TINY, 3, zero_shot=True, templates=TEMPS, pretrained=str(ckpt), class_names=NAMES)  # the engine's form
    assert torch.equal(m2.head.weight, clf.head.weight)
    assert type(make_model('clip:' + TINY, 3, weights=ckpt).head).__name__ == 'LinearHead'
    with pytest.raises(ValueError, match='class names for'): make_model('clip:' + TINY, 4, class_names=NAMES)
    with pytest.raises(ValueError, match='class_names'): make_model('clip:' + TINY, 3, zero_shot=True)
    with pytest.raises(ValueError, match='twice'): make_model('clip:' + TINY, 3, weights=ckpt, pretrained='other.pt', class_names=NAMES)
    assert input_spec('clip:' + TINY)['size'] == 64 and input_spec('clip:RN50')['size'] == 224
    assert (CLIP_MEAN, CLIP_STD) == (open_clip.constants.OPENAI_DATASET_MEAN, open_clip.constants.OPENAI_DATASET_STD)


def test_fine_tuning_with_mr2_moves_tower_and_head(ckpt):
    from margin_notes.mr2 import MR2Loss
    torch.manual_seed(0)
    clf = clip_classifier(TINY, NAMES, pretrained=ckpt, templates=TEMPS)
    zs = copy.deepcopy(clf)
    loss_fn = MR2Loss(3, p=5, momentum=0.999, variant='released')
    opt = torch.optim.AdamW(clf.parameters(), lr=1e-3, weight_decay=0.1)
    x, y = torch.randn(6, 3, 64, 64), torch.arange(6) % 3
    for _ in range(2):
        feats = clf.backbone(x)
        loss = loss_fn(clf.head(feats), y, features=feats)
        opt.zero_grad(); loss.backward(); opt.step()
    assert torch.isfinite(loss)
    assert not torch.equal(clf.head.weight, zs.head.weight) and not torch.equal(clf.head.bias, zs.head.bias)
    assert not torch.equal(clf.backbone.attnpool.c_proj.weight, zs.backbone.attnpool.c_proj.weight)
    clf.eval(); zs.eval()
    with torch.no_grad():
        assert torch.equal(interpolated_model(zs, clf, 0.0)(x), zs(x))
        assert torch.equal(interpolated_model(zs, clf, 1.0)(x), clf(x))


def test_wise_ft_state_dicts():
    torch.manual_seed(0)
    net0 = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    net1 = copy.deepcopy(net0)
    with torch.no_grad():
        for p in net1.parameters(): p.add_(torch.randn_like(p))
    net1.train()(torch.randn(16, 4))
    s0, s1 = net0.state_dict(), net1.state_dict()
    for a in (0.0, 0.25, 0.6, 1.0):
        w = wise_ft(s0, s1, a)
        for k in s0:
            if s1[k].is_floating_point(): assert torch.allclose(w[k], (1 - a) * s0[k] + a * s1[k], atol=1e-6), (a, k)
            else: assert torch.equal(w[k], s1[k])
    assert all(torch.equal(wise_ft(s0, s1, 0.0)[k], s0[k]) for k in s0 if s0[k].is_floating_point())
    assert all(torch.equal(wise_ft(s0, s1, 1.0)[k], s1[k]) for k in s0)
    half = wise_ft({k: v.half() if v.is_floating_point() else v for k, v in s0.items()},
                   {k: v.half() if v.is_floating_point() else v for k, v in s1.items()}, 0.5)
    assert half['0.weight'].dtype == torch.float16
    with pytest.raises(ValueError, match=r'\[0, 1\]'): wise_ft(s0, s1, -0.1)
    with pytest.raises(ValueError, match='different keys'): wise_ft(s0, {k: v for k, v in s1.items() if k != '2.bias'})
    with pytest.raises(ValueError, match='shapes'): wise_ft(s0, {**s1, '2.bias': torch.zeros(4)})
    m = interpolated_model(net0, net1, 0.6)
    assert m is not net1 and torch.allclose(m[2].weight, 0.4 * net0[2].weight + 0.6 * net1[2].weight, atol=1e-6)
