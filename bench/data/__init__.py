"""The data's path before any network: the registry (``datasets.toml``), sources, the index of
files, labels and patients, the decode-once image cache, splits and near-duplicate hashing.

Importing this package registers the source kinds that are not image folders (MedMNIST npz); the
source registry itself imports none of them.
"""

from bench.data import medmnist as _medmnist  # noqa: F401  (registers the "medmnist" source kind)
