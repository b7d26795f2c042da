"""Fill the EfficientNet-Lite0 feature cache for chapters 26 and 29 (balanced, CIFAR-10-LT IF 100 and IF 10, 64 px).

The test split's first 400 images per class are encoded: images 0-299 of each class are the scored test set,
images 300-399 the validation set (never scored). Run: `nice .venv/bin/python scripts/encode_cifar_probe.py`.
"""
import os, time
from margin_notes.probe import cifar10_probe_features, cifar10_probe_settings
from margin_notes.data import cifar10_jpeg_arrays

if __name__ == '__main__':
    t = time.time()
    cifar10_jpeg_arrays(verbose=True)
    print(f"decode: {time.time() - t:.0f} s", flush=True)
    f = cifar10_probe_features(cifar10_probe_settings(500, (100, 10)), size=64, test_per_class=400)
    print(f['info'], flush=True)
