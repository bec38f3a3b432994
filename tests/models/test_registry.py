"""The registry: three doors (decorator, entry point, dotted path), one place to ask."""

from __future__ import annotations

import pytest
import torch

from models import registry
from models.mixer import Backend, SequenceMixer, always
from models.registry import UnknownMixerError, get_entry, get_mixer, list_mixers, mixer_defaults, register_mixer

IDENTITY_MIXER = '''
import torch
from torch import nn

class {name}(nn.Module):
    """A do-nothing mixer a third party might ship."""
    def __init__(self, d_model, layer_idx=0, scale=1.0):
        super().__init__()
        self.scale = scale
    def forward(self, x, state=None):
        return x * self.scale, state
'''


@pytest.fixture
def clean_registry(monkeypatch):
    """Each test sees the real built-ins but leaves no registrations behind."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_entry_points_loaded", False)


def test_builtin_attention_is_registered_with_its_backends():
    entry = get_entry("attention")
    assert entry.origin == "builtin" and entry.available
    assert [b.name for b in entry.backends] == ["flash-attn", "sdpa"]
    flash = entry.backends[0]
    if not torch.cuda.is_available():
        assert flash.unavailable_reason(None) is not None  # listed, marked unavailable, with a reason


def test_decorator_registers_and_rejects_a_second_class_under_one_name(clean_registry):
    @register_mixer("unit_test_mixer")
    class Mine(SequenceMixer):
        def __init__(self, d_model: int, layer_idx: int = 0, width: int = 3) -> None:
            super().__init__()

    assert get_mixer("unit_test_mixer") is Mine
    assert mixer_defaults(Mine) == {"width": 3}
    with pytest.raises(ValueError, match="already registered"):

        @register_mixer("unit_test_mixer")
        class Other(SequenceMixer):
            pass


def test_dotted_path_from_a_suite_file(clean_registry, tmp_path, monkeypatch):
    (tmp_path / "third_party_mixers.py").write_text(IDENTITY_MIXER.format(name="Scaled"))
    monkeypatch.syspath_prepend(str(tmp_path))
    cls = get_mixer("third_party_mixers:Scaled")
    assert cls.__name__ == "Scaled"
    assert get_entry("third_party_mixers:Scaled").origin == "path"
    assert mixer_defaults(cls) == {"scale": 1.0}
    with pytest.raises(UnknownMixerError, match="has no attribute 'Nope'"):
        get_mixer("third_party_mixers:Nope")
    with pytest.raises(UnknownMixerError, match="cannot import module"):
        get_mixer("no_such_module_anywhere:Mixer")


def _install_fake_distribution(root, dist: str, entry_points: dict[str, str]) -> None:
    info = root / f"{dist}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[mixbench.mixers]\n{lines}\n")


def test_entry_point_group_and_a_broken_plugin_that_still_lists(clean_registry, tmp_path, monkeypatch):
    (tmp_path / "plugin_pkg_ok.py").write_text(IDENTITY_MIXER.format(name="Plugged"))
    (tmp_path / "plugin_pkg_broken.py").write_text("raise ImportError('needs libfoo, which is not installed')\n")
    _install_fake_distribution(
        tmp_path, "fake_plugin", {"plugged": "plugin_pkg_ok:Plugged", "broken": "plugin_pkg_broken:Broken"}
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    names = {e.name: e for e in list_mixers()}
    assert names["plugged"].origin.startswith("entry-point") and names["plugged"].available
    assert get_mixer("plugged").__name__ == "Plugged"
    broken = names["broken"]
    assert not broken.available and "needs libfoo" in broken.unavailable_reason()
    with pytest.raises(UnknownMixerError, match="unavailable: import failed"):
        get_mixer("broken")


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(UnknownMixerError) as err:
        get_mixer("atention")
    assert "unknown mixer 'atention'" in str(err.value) and "attention" in str(err.value)


def test_mixer_with_no_runnable_backend_lists_unavailable_with_reason(clean_registry):
    @register_mixer("gpu_only_mixer")
    class GpuOnly(SequenceMixer):
        backends = (Backend("cuda-kernel", lambda device: "needs the cuda-kernel package"),)

    entry = get_entry("gpu_only_mixer")
    assert not entry.available
    assert "cuda-kernel: needs the cuda-kernel package" in entry.unavailable_reason()


def test_backend_choice_and_bad_backend_names():
    class TwoBackends(SequenceMixer):
        backends = (Backend("fast", lambda device: "not here"), Backend("torch", always))

    assert TwoBackends().select_backend(torch.device("cpu")) == "torch"
    with pytest.raises(RuntimeError, match="backend 'fast' cannot run: not here"):
        TwoBackends(backend="fast").select_backend(torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown backend 'fastest'"):
        TwoBackends(backend="fastest")


def test_build_mixer_refuses_unknown_settings():
    with pytest.raises(TypeError, match="has no setting"):
        registry.build_mixer("attention", {"d_model": 16, "n_heads": 2}, {"n_kv_heads": 1})
