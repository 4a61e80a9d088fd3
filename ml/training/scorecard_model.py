"""The fitted classes of the scorecard family (they are pickled with the model).

Kept apart from ml.training.scorecard because importing optbinning takes seconds: this
module imports it at the top, and only code that builds or unpickles a scorecard
imports this module.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from optbinning import Scorecard
from pandas.errors import Pandas4Warning
from sklearn.linear_model import LogisticRegression


class SignedLogisticRegression(LogisticRegression):
    """A logistic regression on WoE columns whose coefficients are all at most zero.

    optbinning's WoE is ln(share of goods / share of bads): a higher WoE is safer, so a
    coefficient above zero would turn a characteristic's evidence around (collinearity
    does that). Such columns are zeroed and the model refitted until none is left; a
    zeroed column's coefficient stays exactly 0 (its gradient is 0 from the zero start),
    which keeps the shapes that ``Scorecard`` reads, and drops the characteristic.
    """

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> "SignedLogisticRegression":
        """Fit, then drop wrong-signed columns and refit until every coefficient is <= 0."""
        frame = hasattr(X, "iloc")  # keep a frame's column names for sklearn's checks
        X = X.astype(np.float64) if frame else np.array(X, dtype=np.float64)
        while True:
            super().fit(X, y, sample_weight=sample_weight)
            wrong = np.flatnonzero(self.coef_[0] > 0)
            if not len(wrong):
                return self
            if frame:
                X.iloc[:, wrong] = 0.0
            else:
                X[:, wrong] = 0.0


class QuietScorecard(Scorecard):
    """optbinning's ``Scorecard``, fitted with its pandas 4 deprecation warnings silenced.

    optbinning 1.0 sets table cells in ways pandas 3 warns about (36 warnings a fit);
    they say nothing about the model, and the tests turn warnings into errors.
    """

    def fit(self, X: Any, y: Any, sample_weight: Any = None, **kwargs: Any) -> "QuietScorecard":
        """``Scorecard.fit`` without optbinning's pandas deprecation warnings."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=Pandas4Warning, module="optbinning")
            return super().fit(X, y, sample_weight=sample_weight, **kwargs)
