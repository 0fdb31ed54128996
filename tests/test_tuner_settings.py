"""The tuner's settings have one home, and every preset states its noise and cost."""

import dataclasses

import pytest

from ridgeline.errors import TuneError
from ridgeline.hparams import HParams
from ridgeline.presets import PRESETS, Preset, get_preset
from ridgeline.tuner import settings, tune


def test_defaults_are_the_accelerating_search_and_half_the_noise():
    s = settings.default_settings(get_preset("cpu-mini"))
    assert s == settings.TunerSettings(line_search="accelerate", min_improvement=0.5 * 0.0033)
    assert settings.threshold_note(get_preset("cpu-mini")) is None


@pytest.mark.parametrize("name", ["tiny", "paper"])
def test_unknown_noise_means_threshold_zero_and_says_so(name):
    preset = get_preset(name)
    assert preset.noise_std is None
    assert settings.default_settings(preset).min_improvement == 0.0
    assert "states no noise_std" in settings.threshold_note(preset)


def test_the_engine_defaults_to_pages_search():
    assert (settings.PAPER.line_search, settings.PAPER.min_improvement) == ("double", 0.0)
    with pytest.raises(TuneError, match="line_search 'golden'"):
        settings.TunerSettings(line_search="golden")
    s = settings.PAPER.replace(line_search=None, min_improvement=0.01)
    assert s == settings.TunerSettings("double", 0.01)
    assert s.as_kwargs() == {"line_search": "double", "min_improvement": 0.01}


def test_tune_preset_passes_the_default_settings_and_the_overrides(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(tune, "tune", lambda *a, **kw: seen.append(kw))
    journal, fake = tmp_path / "t.journal", "tests.test_tune_cli:fake_objective"
    tune.tune_preset("cpu-mini", "bad", journal, "a", objective=fake)
    tune.tune_preset("cpu-mini", "bad", journal, "b", objective=fake, line_search="double")
    expected = settings.default_settings(get_preset("cpu-mini"))
    assert {k: seen[0][k] for k in ("line_search", "min_improvement")} == expected.as_kwargs()
    assert (seen[1]["line_search"], seen[1]["min_improvement"]) == (
        "double", expected.min_improvement)


def test_presets_state_noise_and_cost_explicitly():
    required = {f.name for f in dataclasses.fields(Preset)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    assert {"noise_std", "run_seconds"} <= required
    with pytest.raises(TypeError):
        Preset(name="x", hparams=HParams())  # no noise_std, no run_seconds
    for p in PRESETS.values():
        assert p.run_seconds > 0 and (p.noise_std is None or p.noise_std > 0)
