"""engine.config: the one certification config of the CLI, the API and the worker."""

from __future__ import annotations

import pytest
import typer
from pydantic import ValidationError

from engine.cli import app
from engine.config import SEED_LIMIT, CertifyConfig, explain, with_ceilings
from engine.schedule import ISSSchedule, SequentialSchedule


@pytest.mark.parametrize(("fields", "problem"), [
    ({"method": "dsrs", "q_sigma": 0.2, "iss_delta": 0.1}, "iss_delta (input-specific sampling) works with method np"),
    ({"method": "dsrs", "q_sigma": 0.2, "sequential_delta": 0.1}, "sequential_delta (sequential sampling) works"),
    ({"iss_delta": 0.1, "sequential_delta": 0.1}, "choose one of iss_delta and sequential_delta"),
    ({"iss_delta": 1.5, "iss_mode": "relative"}, "a relative iss_delta is a fraction"),
    ({"pack": 2, "method": "dsrs", "q_sigma": 0.2}, "pack (inputs certified together) works with method np"),
    ({"pack": 2, "sequential_delta": 0.1}, "not sequential_delta"),
    ({"method": "dsrs"}, "exactly one of q_sigma and q_threshold"),
    ({"method": "dsrs", "q_sigma": 0.2, "q_threshold": 0.5}, "exactly one of q_sigma and q_threshold"),
    ({"method": "dsrs", "q_sigma": 0.25}, "q_sigma must be below sigma"),
    ({"freeze": True, "compile": True}, "choose one"),
    ({"k": 2}, "k is for general_gaussian noise"),
    ({"noise": "general_gaussian"}, "general_gaussian needs k >= 1"),
    ({"alpha": 1.0}, "less than 1"),
    ({"seed": SEED_LIMIT}, "less than 18446744073709551616"),
    ({"q_threshold": "x", "method": "dsrs"}, "'auto'"),
])
def test_each_rule_is_refused_in_words(fields, problem):
    with pytest.raises(ValidationError) as caught:
        CertifyConfig(**fields)
    assert problem in explain(caught.value)


def test_what_the_rules_allow():
    assert CertifyConfig(method="dsrs", q_threshold="auto").q_threshold == "auto"
    assert CertifyConfig(method="dsrs", q_threshold="0.3").q_threshold == 0.3  # the CLI passes its text
    assert CertifyConfig(pack=4, iss_delta=0.05).pack == 4
    assert CertifyConfig(noise="general_gaussian", k=3).make_noise(64).k == 3


def test_noise_schedule_and_seeds_are_built_from_the_config():
    assert CertifyConfig().make_schedule() is None
    iss = CertifyConfig(n=5000, batch_size=100, iss_delta=0.05).make_schedule()
    assert iss == ISSSchedule(0.25, 5000, 0.001, delta=0.05, batch_size=100)
    sequential = CertifyConfig(n=5000, batch_size=100, sequential_delta=0.1).make_schedule()
    assert sequential == SequentialSchedule(0.25, 5000, 0.001, delta=0.1, first=100, batch_size=100)
    assert CertifyConfig(sigma=0.5).make_noise(64).sigma == 0.5
    with pytest.raises(ValueError, match="d even"):
        CertifyConfig(noise="general_gaussian", k=40).make_noise(64)


def test_the_one_seed_rule():
    assert CertifyConfig().input_seed(5) is None
    assert CertifyConfig(seed=7).input_seed(5) == 12
    assert CertifyConfig(seed=SEED_LIMIT - 3).input_seed(2) == SEED_LIMIT - 1
    with pytest.raises(ValueError, match="2\\^64"):
        CertifyConfig(seed=SEED_LIMIT - 3).input_seed(3)
    assert list(CertifyConfig(pack=3).groups([4, 5, 6, 7, 8])) == [[4, 5, 6], [7, 8]]
    assert list(CertifyConfig().groups([4, 5])) == [[4], [5]]


def test_ceilings_narrow_a_field_and_keep_its_default_description_and_the_rules():
    Bounded = with_ceilings(CertifyConfig, "Bounded", {"n": (1000, "MAX_N"), "pack": (8, "MAX_PACK")})
    assert Bounded.model_fields["n"].default == 100_000
    schema = Bounded.model_json_schema()["properties"]
    assert schema["n"]["maximum"] == 1000 and schema["n"]["minimum"] == 1 and "at most MAX_N" in schema["n"]["description"]
    assert schema["pack"]["maximum"] == 8
    with pytest.raises(ValidationError, match="less than or equal to 8"):
        Bounded(n=10, pack=9)
    with pytest.raises(ValidationError, match="choose one"):
        Bounded(n=10, freeze=True, compile=True)
    assert "maximum" not in CertifyConfig.model_json_schema()["properties"]["n"]  # the engine's own: no ceiling


def test_the_cli_options_default_to_the_config():
    params = {p.name: p.default for p in typer.main.get_command(app).commands["certify"].params}
    defaults = CertifyConfig()
    for field in ("sigma", "k", "n0", "n", "alpha", "batch_size", "pack", "iss_mode", "seed", "iss_delta",
                  "sequential_delta", "q_sigma", "q_threshold", "compile", "freeze", "bf16"):
        assert params[field] == getattr(defaults, field), field
    assert params["method"] == defaults.method.value and params["noise"] == defaults.noise.value
