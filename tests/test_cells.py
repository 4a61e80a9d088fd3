"""The cell rules shared by training and batch scoring (ml.spec.cells)."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from ml.spec.cells import (FINE, INVALID, MISSING, MISSING_TOKENS, OUTSIDE, problem_text,
                           read_cell)
from ml.spec.schema import CATEGORICAL, NUMERIC, Category, Feature
from ml.training.data import convert_column

AMOUNT = Feature("amount", NUMERIC, "Amount", minimum=0, maximum=1000)
OPEN = Feature("score", NUMERIC, "Score")
HOME = Feature("home", CATEGORICAL, "Home", categories=(
    Category("own", "Own", "Own"), Category("own_2", "own", "own"),
    Category("rent", "for rent", "Rent")))
NULLABLE = Feature("home", CATEGORICAL, "Home", nullable=True,
                   categories=HOME.categories)


@pytest.mark.parametrize("feature, text, expected", [
    (AMOUNT, "12", (12.0, FINE)),
    (AMOUNT, "  12.5 ", (12.5, FINE)),
    (AMOUNT, "+3", (3.0, FINE)),
    (AMOUNT, ".5", (0.5, FINE)),
    (AMOUNT, "1e2", (100.0, FINE)),
    (AMOUNT, "1E+3", (1000.0, FINE)),
    (AMOUNT, "1001", (1001.0, OUTSIDE)),
    (AMOUNT, "-1", (-1.0, OUTSIDE)),
    (AMOUNT, "", (None, MISSING)),
    (AMOUNT, " NA ", (None, MISSING)),
    (AMOUNT, "NULL", (None, MISSING)),
    (AMOUNT, "?", (None, MISSING)),
    (AMOUNT, "nan", (None, MISSING)),
    (OPEN, "inf", (None, INVALID)),
    (OPEN, "-Infinity", (None, INVALID)),
    (OPEN, "1e400", (None, INVALID)),
    (OPEN, "1_000", (None, INVALID)),
    (OPEN, "0x10", (None, INVALID)),
    (OPEN, "١٢", (None, INVALID)),  # Arabic-Indic digits: Python's float takes them
    (OPEN, "1,5", (None, INVALID)),
    (OPEN, "lots", (None, INVALID)),
    (HOME, "Own", ("own", FINE)),
    (HOME, " own ", ("own_2", FINE)),  # a raw value wins over another category's code
    (HOME, "own_2", ("own_2", FINE)),
    (HOME, "rent", ("rent", FINE)),
    (HOME, "for rent", ("rent", FINE)),
    (HOME, "RENT", (None, INVALID)),
    (HOME, "n/a", (None, MISSING)),
    (NULLABLE, "", (None, FINE)),
])
def test_read_cell(feature, text, expected):
    assert read_cell(feature, text) == expected


def test_training_reads_every_cell_as_read_cell_does():
    cells = ["12", " 12.5 ", "1001", "", "NA", "inf", "١٢", "lots", "1e2"]
    converted, problem = convert_column(pd.Series(cells), AMOUNT)
    for cell, value in zip(cells, converted):
        expected = read_cell(AMOUNT, cell)[0]
        assert (math.isnan(value) and expected is None) or value == expected
    assert "3 rows are not numeric" in problem and "1 rows lie outside" in problem
    assert "2 rows are missing" in problem


def test_problem_texts_name_the_rule():
    assert problem_text(AMOUNT, OUTSIDE) == "is outside [0, 1000]"
    assert problem_text(OPEN, INVALID) == "is not a number"
    assert problem_text(HOME, INVALID) == "is not one of the allowed values"
    assert problem_text(HOME, MISSING).startswith("is missing")
    assert problem_text(HOME, FINE) == ""
    assert "" in MISSING_TOKENS
