"""Reporting: statistics and figures that compare models across folds and datasets."""
