"""podium.tables.render_table: both styles pinned to the byte, so that every table podium prints
(`podium runs`, write-ups, `podium submissions`, `podium leaderboard`) can share the one renderer.
The plain style must equal podium.kaggle.format_table, row for row."""

from __future__ import annotations

import random

import pytest

from podium import kaggle
from podium.tables import numeric_columns, render_table

SUBMISSION_COLUMNS = ["ref", "status", "public_score", "private_score", "description"]
SUBMISSIONS = [
    {
        "ref": 101,
        "status": "complete",
        "public_score": 0.812345678,
        "private_score": None,
        "description": "first\ntry",
    },
    {"ref": 7, "status": "pending", "public_score": None, "private_score": None},
    {"ref": 12345, "status": "error", "public_score": 1.0, "private_score": 0.5, "description": ""},
]


def as_rows(records: list[dict], columns: list[str]) -> list[list]:
    """kaggle.format_table's dict rows as render_table's lists (a missing key is None)."""
    return [[record.get(c) for c in columns] for record in records]


def test_markdown_style_pads_escapes_and_aligns() -> None:
    rows = [
        ["a/0_f0", 0, "0.4269", "x|y"],
        ["b", 12, "—", "two\nlines"],
        ["c", None, 0.5, 1.25],  # markdown shows str(value): callers format their numbers
    ]
    assert render_table(["Run", "Fold", "CV", "Note"], rows, right=[1]).splitlines() == [
        "| Run    | Fold | CV     | Note      |",
        "|--------|-----:|--------|-----------|",
        "| a/0_f0 |    0 | 0.4269 | x\\|y      |",
        "| b      |   12 | —      | two lines |",
        "| c      | None | 0.5    | 1.25      |",
    ]
    assert render_table(["Key", "A"], [], right=()) == "| Key | A |\n|-----|---|"
    # By default the numeric columns are right-aligned, as in the plain style.
    assert render_table(["n", "name"], [[1, "x"], [None, "yz"]]).splitlines() == [
        "|    n | name |",
        "|-----:|------|",
        "|    1 | x    |",
        "| None | yz   |",
    ]


def test_plain_style_is_kaggle_format_table() -> None:
    expected = [
        "  ref  status    public_score  private_score  description",
        "-----  --------  ------------  -------------  -----------",
        "  101  complete      0.812346                 first try",
        "    7  pending",
        "12345  error                1            0.5",
    ]
    rows = as_rows(SUBMISSIONS, SUBMISSION_COLUMNS)
    assert render_table(SUBMISSION_COLUMNS, rows, style="plain").splitlines() == expected
    assert kaggle.format_table(SUBMISSIONS, SUBMISSION_COLUMNS).splitlines() == expected
    # The leaderboard's case (tests/test_kaggle.py) and an empty table.
    board = [
        {"rank": 1, "team_name": "Bob", "score": 0.9},
        {"rank": 12, "team_name": "Alice Team", "score": None},
    ]
    columns = ["rank", "team_name", "score"]
    assert render_table(columns, as_rows(board, columns), style="plain").splitlines() == [
        "rank  team_name   score",
        "----  ----------  -----",
        "   1  Bob           0.9",
        "  12  Alice Team",
    ]
    assert render_table(["a"], [], style="plain") == "a\n-"


def test_plain_style_matches_format_table_on_random_rows() -> None:
    values = [None, 0, 7, -3, 12345, 0.1, 2 / 3, 1e-9, 123456789.123, True, "", "x y", "a\nb"]
    values += ["pipe|kept", " padded ", "ünï", 7.0, float("nan")]
    rng = random.Random(0)
    for _ in range(500):
        columns = [f"{rng.choice(['rank', 'team name', 'x' * rng.randint(1, 12)])}{i}"
                   for i in range(rng.randint(1, 5))]  # fmt: skip
        records = [
            {c: rng.choice(values) for c in columns if rng.random() > 0.1}
            for _ in range(rng.randint(0, 5))
        ]
        rows = as_rows(records, columns)
        assert render_table(columns, rows, style="plain") == kaggle.format_table(records, columns)


def test_numeric_columns_and_bad_style() -> None:
    rows = [[1, "a", None, 2.5], [None, 3, None, 1]]
    assert numeric_columns(rows, 4) == [0, 3]  # all None is not numeric
    assert numeric_columns([], 2) == []
    with pytest.raises(ValueError, match="table style 'html'"):
        render_table(["a"], [[1]], style="html")  # type: ignore[arg-type]
