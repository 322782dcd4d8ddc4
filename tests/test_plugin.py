"""methods/plugin.py: the score-method and strategy objects, their cache keys, and what strategies
get (Candidates, Budget) and return (Picked helpers)."""

import hashlib

import numpy as np
import polars as pl
import pytest
from pydantic import Field, ValidationError

from curation_assets.methods.plugin import Budget, Candidates, Column, ScoreMethod, Settings, Strategy, empty_gain, unpicked, version_hash


class ToySettings(Settings):
    toy_scale: float = Field(1.0, description="Multiplier.")


def toy_method(version="1", extra_key=None):
    return ScoreMethod(name="toy", description="toy", settings=ToySettings, version=version,
                       columns={"toy": Column(pl.Float64, "A toy score.")}, compute=lambda rows, s, m: rows, extra_key=extra_key)


def test_version_hash_is_stable_and_ignores_key_order():
    a = version_hash("m", {"x": 1, "y": [1, 2]}, None)
    assert a == version_hash("m", {"y": [1, 2], "x": 1}, None) and len(a) == 16 and int(a, 16) >= 0
    assert a != version_hash("m", {"x": 2, "y": [1, 2]}, None) and a != version_hash("m", {"x": 1, "y": [2, 1]}, None)
    assert version_hash(np.int64(3)) == version_hash(3)
    # Pinned: the same parts hash the same in every process and release (cached results depend on it).
    assert version_hash("ifd", "1", {"max_length": 1024}) == hashlib.sha256(b'["ifd","1",{"max_length":1024}]').hexdigest()[:16]


def test_settings_forbid_unknown_keys():
    with pytest.raises(ValidationError, match="toy_scael"):
        ToySettings(toy_scael=2.0)


def test_cache_keys_follow_version_settings_extra_key_and_model():
    m = toy_method()
    key = m.settings_key(ToySettings())
    assert key == toy_method().settings_key(ToySettings())
    assert key != toy_method(version="2").settings_key(ToySettings()) != m.settings_key(ToySettings(toy_scale=2.0))
    assert key != toy_method(extra_key=lambda s: "template text").settings_key(ToySettings())
    cache = m.cache_version(ToySettings(), {"model": "a"})
    assert cache.startswith("v1-") and cache != m.cache_version(ToySettings(), {"model": "b"})
    assert m.schema() == {"row_id": pl.String, "toy": pl.Float64} and m.empty().columns == ["row_id", "toy"]
    s = Strategy(name="s", description="", settings=ToySettings, version="1", pick=lambda c, b, s: None)
    assert s.needed_assets(ToySettings()) == frozenset() and s.settings_key(ToySettings()) != s.settings_key(ToySettings(toy_scale=3))


def test_budget_fraction_and_candidates_views():
    assert Budget(5, 0.5, 10).fraction == 0.5 and Budget(5, 5, 10).fraction is None
    rows = pl.DataFrame({"row_id": ["a", "b"], "instruction": ["Q1", "Q2"], "input": ["ctx", ""], "response": ["R1", "R2"], "ifd": [0.5, None]})
    calls = []
    c = Candidates(rows, embed=lambda texts: calls.append(texts) or np.eye(len(texts)))
    assert c.n == 2 and c.texts() == ["Q1\nctx\nR1", "Q2\nR2"]
    np.testing.assert_array_equal(c.column("ifd"), [0.5, np.nan])
    with pytest.raises(ValueError, match=r"'deita' is not available; computed scores: \['ifd'\]"):
        c.column("deita")
    assert c.embeddings() is c.embeddings() and len(calls) == 1  # computed once
    with pytest.raises(ValueError, match="no embedder"):
        Candidates(rows).embeddings()


def test_unpicked_and_empty_gain():
    assert unpicked(5, [3, 0]) == [1, 2, 4] and unpicked(2, []) == [0, 1]
    assert np.isnan(empty_gain(3)).all() and empty_gain(3).shape == (3,)
