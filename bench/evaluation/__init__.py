"""Evaluation of a search's winners: the held-out refit (``bench final``), calibration and
operating points on out-of-fold evidence, TTA and fold ensembles, external validation, rescoring,
and the grouping of trials into leaderboard entries."""
