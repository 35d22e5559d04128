"""Training: prepare a dataset's images and splits, cross-validate a configuration, train one
fold (``FoldTrainer``) on images or on cached frozen features, two-phase fine-tuning, learning-rate
schedules and augmentation. Knows nothing of Optuna: the search calls it, never the other way."""
