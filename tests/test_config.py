from __future__ import annotations

import pytest

from embedlab.config import TrainConfig, parse_assignments
from embedlab.errors import EmbedlabError


def test_types_are_converted_and_checked():
    cfg = TrainConfig.from_dict({"epochs": "5", "lr": "0.1", "milestones": "3,4", "download": "true"})
    assert cfg.epochs == 5 and cfg.lr == 0.1 and cfg.milestones == (3, 4) and cfg.download is True
    with pytest.raises(EmbedlabError, match="option epochs: expected int, got 'five'"):
        TrainConfig.from_dict({"epochs": "five"})
    with pytest.raises(EmbedlabError, match="expected an integer, got 2.5"):
        TrainConfig.from_dict({"epochs": 2.5})


def test_unknown_keys_are_errors():
    with pytest.raises(EmbedlabError, match=r"unknown option\(s\) epoch; known: dataset"):
        TrainConfig.from_dict({"epoch": 3})


def test_ranges():
    for bad, msg in (({"epochs": 0}, "epochs must be >= 1"), ({"optimizer": "lbfgs"}, "optimizer must be"),
                     ({"device": "tpu"}, "device must be"), ({"lr": -1.0}, "lr must be > 0")):
        with pytest.raises(EmbedlabError, match=msg):
            TrainConfig.from_dict(bad).validate()


def test_assignments():
    assert parse_assignments(["n=5", " alpha = 0.5"], "x") == {"n": "5", "alpha": "0.5"}
    with pytest.raises(EmbedlabError, match="expected key=value, got 'n'"):
        parse_assignments(["n"], "x")
