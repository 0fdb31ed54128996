"""The tuner's settings have one home, and every preset states its noise and cost."""

import dataclasses

import pytest

from ridgeline.errors import TuneError
from ridgeline.hparams import HParams
from ridgeline.presets import PRESETS, Preset
from ridgeline.tuner import settings, tune
from ridgeline.tuner.sampler import FlatDirectionSampler


def test_the_sampler_and_ridgeline_tune_default_to_the_same_robust_settings():
    s = settings.DEFAULT
    assert (s.line_search, s.min_improvement, s.max_level, s.recheck, s.wide) == (
        "accelerate", 0.0, settings.MAX_LEVEL, "best", True)
    import inspect
    params = inspect.signature(FlatDirectionSampler).parameters
    assert {k: params[k].default for k in s.as_kwargs()} == s.as_kwargs()


def test_pages_search_and_bad_settings():
    assert (settings.PAPER.line_search, settings.PAPER.max_level) == ("double", 1)
    with pytest.raises(TuneError, match="line_search 'golden'"):
        settings.TunerSettings(line_search="golden")
    with pytest.raises(TuneError, match="recheck 'some'"):
        settings.TunerSettings(recheck="some")
    s = settings.PAPER.replace(line_search=None, min_improvement=0.01)
    assert s == dataclasses.replace(settings.PAPER, min_improvement=0.01)


def test_tune_preset_passes_the_default_settings_and_the_overrides(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(tune, "tune", lambda *a, **kw: seen.append(kw))
    journal, fake = tmp_path / "t.journal", "tests.test_tune_cli:fake_objective"
    tune.tune_preset("cpu-mini", "bad", journal, "a", objective=fake)
    tune.tune_preset("cpu-mini", "bad", journal, "b", objective=fake, line_search="double")
    assert seen[0]["settings"] == settings.DEFAULT
    assert seen[1]["settings"] == settings.DEFAULT.replace(line_search="double")
    assert seen[0]["pruner"] is None  # not the training objective: nothing reports epochs


def test_presets_state_noise_and_cost_explicitly():
    required = {f.name for f in dataclasses.fields(Preset)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    assert {"noise_std", "run_seconds"} <= required
    with pytest.raises(TypeError):
        Preset(name="x", hparams=HParams())  # no noise_std, no run_seconds
    for p in PRESETS.values():
        assert p.run_seconds > 0 and (p.noise_std is None or p.noise_std > 0)
