"""Suite files: validation errors name the file and the field; the grid and run keys are stable."""

from __future__ import annotations

import pytest

from harness.config.suite import SuiteError, load_suite


def test_grid_expands_models_sizes_and_seq_lens(write_suite):
    path = write_suite(models=["attention@transformer", "attention@mamba"], sizes=["micro", "tiny"], seq_lens=[16, 32])
    cells = load_suite(path).cells()
    assert len(cells) == 8
    assert {(c.arch, c.size, c.seq_len) for c in cells} == {
        (a, s, t) for a in ("attention@transformer", "attention@mamba") for s in ("micro", "tiny") for t in (16, 32)
    }
    assert all(c.data.seq_len == c.seq_len for c in cells)
    assert len({c.run_key for c in cells}) == 8


def test_run_key_is_stable_and_sensitive_to_what_matters(write_suite):
    key = load_suite(write_suite()).cells()[0].run_key
    assert load_suite(write_suite()).cells()[0].run_key == key
    changed_lr = write_suite(train={"tokens": 2048, "batch_tokens": 256, "lr": 1e-3, "log_every": 2, "device": "cpu"})
    assert load_suite(changed_lr).cells()[0].run_key != key
    override = write_suite(overrides={"attention": {"rope_base": 500.0}})
    cell = load_suite(override).cells()[0]
    assert cell.mixer_settings["rope_base"] == 500.0 and cell.run_key != key


def test_mixer_defaults_are_filled_into_the_canonical_config(write_suite):
    cell = load_suite(write_suite()).cells()[0]
    assert cell.config["model"]["mixer_settings"] == {"rope_base": 10000.0, "backend": "auto"}


def test_per_size_learning_rates(write_suite):
    path = write_suite(
        sizes=["micro", "tiny"], train={"tokens": 2048, "batch_tokens": 256, "lr": {"micro": 1e-2, "tiny": 5e-3}}
    )
    assert {c.size: c.train.lr for c in load_suite(path).cells()} == {"micro": 1e-2, "tiny": 5e-3}


def test_seeds_are_a_grid_axis_in_the_run_key_and_seed_0_keeps_the_unseeded_key(write_suite):
    plain = load_suite(write_suite(train={"tokens": 2048, "batch_tokens": 256, "lr": [1e-3, 3e-3]})).cells()
    seeded = load_suite(
        write_suite(seeds=[0, 1, 2], train={"tokens": 2048, "batch_tokens": 256, "lr": [1e-3, 3e-3]})
    ).cells()
    assert [(c.train.seed, c.train.lr) for c in seeded] == [(s, lr) for s in (0, 1, 2) for lr in (1e-3, 3e-3)]
    assert len({c.run_key for c in seeded}) == 6
    # seed 0 is the default: a suite that adds seeds reuses the runs it already has
    assert [c.run_key for c in seeded[:2]] == [c.run_key for c in plain]
    assert all(c.config["selection"]["seeds"] == [0, 1, 2] for c in seeded)
    # the seed list is how runs are compared, not what one computes: a wider list keeps every key
    wider = load_suite(write_suite(seeds=[0, 1, 2, 3], train={"tokens": 2048, "batch_tokens": 256, "lr": [1e-3, 3e-3]}))
    assert [c.run_key for c in wider.cells()[:6]] == [c.run_key for c in seeded]
    assert load_suite(write_suite(train={"tokens": 2048, "batch_tokens": 256, "seed": 1})).cells()[0].run_key not in {
        c.run_key for c in plain
    }


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"models": ["atention@transformer"]}, "models.0: unknown mixer 'atention'; known mixers:"),
        ({"models": ["attention@rnn"]}, "models.0: 'attention@rnn': unknown backbone 'rnn'"),
        ({"models": ["attention"]}, "must be written 'mixer@backbone'"),
        ({"sizes": ["7b"]}, "sizes: unknown size(s) ['7b']"),
        ({"trian": {}}, "trian: unknown field"),
        ({"train": {"tokens": -5}}, "train.tokens"),
        ({"train": {"lr": {"tiny": 1e-3}}}, "train.lr has no learning rate for size(s) ['micro']"),
        ({"overrides": {"attention": {"heads": 3}}}, "overrides.attention: unknown setting(s) ['heads']"),
        ({"overrides": {"mamba": {"d_state": 8}}}, "overrides.mamba: no model in this suite uses mixer 'mamba'"),
        ({"data": {"seq_len": 0}}, "data.seq_len"),
        ({"seeds": []}, "seeds: must list distinct seeds, got []"),
        ({"seeds": [0, 1, 0]}, "seeds: must list distinct seeds, got [0, 1, 0]"),
        ({"seeds": [-1]}, "seeds.0: Input should be greater than or equal to 0"),
        ({"seeds": [0, 1], "train": {"seed": 3}}, "train.seed and seeds are both set"),
    ],
)
def test_bad_suites_name_the_file_and_the_field(write_suite, fields, message):
    path = write_suite(**fields)
    with pytest.raises(SuiteError) as err:
        load_suite(path)
    text = str(err.value)
    assert text.startswith(str(path)) and message in text and "\n" not in text


def test_malformed_yaml_names_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: broken\nmodels: [attention@transformer\nsizes: [micro]\n")
    with pytest.raises(SuiteError, match=r"broken.yaml: line \d+, column \d+: malformed YAML"):
        load_suite(path)


def test_missing_and_non_mapping_suites(tmp_path):
    with pytest.raises(SuiteError, match="suite file not found"):
        load_suite(tmp_path / "nope.yaml")
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(SuiteError, match="must be a YAML mapping"):
        load_suite(path)
