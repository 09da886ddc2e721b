"""Pipeline files: parsing, every validation error path, overrides, fingerprints."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgflow.errors import ConfigError, ValidationFailed
from imgflow.config import Overrides, load_pipeline, parse_value

from tests.helpers import write_pipeline


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "in").mkdir()
    return tmp_path / "in", tmp_path / "out"


def problems_of(path: Path, overrides: Overrides | None = None) -> list[str]:
    with pytest.raises(ValidationFailed) as info:
        load_pipeline(path, overrides)
    return [str(p) for p in info.value.problems]


def test_valid_pipeline_resolves_relative_paths_against_the_file(tmp_path, test_plugin):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "imgs").mkdir()
    path = write_pipeline(tmp_path / "cfg" / "p.toml", input="../imgs", output="../out",
                          stages=[{"use": "invert"}, {"use": "tag", "id": "t1", "label": "a"}])
    pipe = load_pipeline(path)
    assert pipe.input_path == (tmp_path / "imgs").resolve()
    assert pipe.output_path == (tmp_path / "out").resolve()
    assert [s.id for s in pipe.stages] == ["invert", "t1"]
    assert pipe.stages[1].params.label == "a"
    assert pipe.output.format == "same" and pipe.run.batch_size == 8


def test_all_problems_are_reported_at_once(folders, tmp_path, test_plugin):
    inp, out = folders
    path = write_pipeline(tmp_path / "p.toml", input=inp, output=out,
                          stages=[{"use": "invret"}, {"use": "tag", "lable": "x"}],
                          run={"batch_size": 0, "device": "gpu"}, out={"format": "jpg", "qualty": 90})
    found = problems_of(path)
    text = "\n".join(found)
    assert len(found) >= 6, text
    assert "unknown stage 'invret' (did you mean 'invert'?)" in text
    assert "lable" in text and "did you mean 'label'" in text
    assert "[run] batch_size" in text and "got 0" in text
    assert "[run] device" in text and "'gpu'" in text
    assert "[output] format" in text and "'jpg'" in text
    assert "qualty" in text and "did you mean 'quality'" in text
    assert all(str(path) in line or "p.toml" in line for line in found)


def test_unknown_section_and_missing_sections(tmp_path, test_plugin):
    path = tmp_path / "p.toml"
    path.write_text('[inptu]\npath = "x"\n\n[[stages]]\nuse = "invert"\n')
    text = "\n".join(problems_of(path))
    assert "[inptu]: unknown section (did you mean 'input'?)" in text
    assert "[input]: section is missing" in text
    assert "[output]: section is missing" in text


def test_missing_stages_and_missing_use(folders, tmp_path, test_plugin):
    inp, out = folders
    path = write_pipeline(tmp_path / "p.toml", input=inp, output=out, stages=[])
    assert any("no stages" in p for p in problems_of(path))
    path = write_pipeline(tmp_path / "q.toml", input=inp, output=out, stages=[{"id": "x"}])
    assert any("use: required key is missing" in p for p in problems_of(path))


def test_toml_syntax_error_names_line(tmp_path, test_plugin):
    path = tmp_path / "p.toml"
    path.write_text('[input]\npath = "unterminated\n')
    text = "\n".join(problems_of(path))
    assert "invalid TOML" in text and "line 2" in text


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="pipeline file not found"):
        load_pipeline(tmp_path / "nope.toml")


def test_input_folder_must_exist_and_differ_from_output(tmp_path, test_plugin):
    path = write_pipeline(tmp_path / "p.toml", input=tmp_path / "missing", output=tmp_path / "o",
                          stages=[{"use": "invert"}])
    assert any("does not exist" in p for p in problems_of(path))
    (tmp_path / "same").mkdir()
    path = write_pipeline(tmp_path / "p.toml", input=tmp_path / "same", output=tmp_path / "same",
                          stages=[{"use": "invert"}])
    assert any("is the input folder itself" in p for p in problems_of(path))


def test_duplicate_ids_and_bad_ids(folders, tmp_path, test_plugin):
    inp, out = folders
    path = write_pipeline(tmp_path / "p.toml", input=inp, output=out,
                          stages=[{"use": "invert"}, {"use": "invert"}, {"use": "tag", "id": "Bad Id"}])
    text = "\n".join(problems_of(path))
    assert "duplicate stage id 'invert'" in text
    assert "expected lowercase letters" in text


def test_consuming_stage_must_be_last(folders, tmp_path, test_plugin):
    inp, out = folders
    path = write_pipeline(tmp_path / "p.toml", input=inp, output=out, stages=[{"use": "collect"}, {"use": "invert"}])
    assert any("must be the last stage" in p for p in problems_of(path))


def test_bad_naming_template_and_globs(folders, tmp_path, test_plugin):
    inp, out = folders
    path = write_pipeline(tmp_path / "p.toml", input=inp, output=out, stages=[{"use": "invert"}],
                          out={"naming": "../{stem}.{ext}"})
    assert any("[output] naming" in p for p in problems_of(path))
    path = write_pipeline(tmp_path / "q.toml", input=inp, output=out, stages=[{"use": "invert"}])
    text = path.read_text().replace('[output]', '[output]\n').replace('[input]\n', '[input]\ninclude = ["/abs/*.jpg"]\n')
    path.write_text(text)
    assert any("[input] include" in p for p in problems_of(path))


def test_overrides_apply_and_are_validated(folders, tmp_path, test_plugin, monkeypatch):
    inp, out = folders
    path = write_pipeline(tmp_path / "p.toml", input=inp, output=out, stages=[{"use": "tag"}])
    monkeypatch.chdir(tmp_path)
    other = tmp_path / "other_in"
    other.mkdir()
    ov = Overrides(input="other_in", output="o2", device="cpu", batch_size=3, workers=1,
                   params=["tag.label=\"hello\""])
    pipe = load_pipeline(path, ov)
    assert pipe.input_path == other and pipe.output_path == tmp_path / "o2"
    assert (pipe.run.device, pipe.run.batch_size, pipe.run.workers) == ("cpu", 3, 1)
    assert pipe.stages[0].params.label == "hello"
    bad = Overrides(batch_size=-1, params=["nope.x=1", "tag.colour=3", "garbage"])
    text = "\n".join(problems_of(path, bad))
    assert "batch_size" in text
    assert "stage 'nope' matches no stage" in text
    assert "colour" in text and "unknown key" in text
    assert "expected STAGE.KEY=VALUE" in text


def test_override_of_a_stage_whose_name_or_id_has_dots(folders, tmp_path, test_plugin):
    inp, out = folders
    path = write_pipeline(tmp_path / "p.toml", input=inp, output=out, stages=[{"use": "tag", "id": "tag.v2"}])
    pipe = load_pipeline(path, Overrides(params=["tag.v2.label=x2"]))
    assert pipe.stages[0].params.label == "x2"


def test_parse_value_reads_toml_literals():
    assert parse_value("512") == 512
    assert parse_value("0.5") == 0.5
    assert parse_value("true") is True
    assert parse_value("[200, 100]") == [200, 100]
    assert parse_value('"eccv16"') == "eccv16"
    assert parse_value("eccv16") == "eccv16"


def test_fingerprint_changes_with_params_but_not_batch_size(folders, tmp_path, test_plugin):
    inp, out = folders
    a = load_pipeline(write_pipeline(tmp_path / "a.toml", input=inp, output=out, stages=[{"use": "tag", "label": "a"}]))
    b = load_pipeline(write_pipeline(tmp_path / "b.toml", input=inp, output=out, stages=[{"use": "tag", "label": "b"}]))
    c = load_pipeline(write_pipeline(tmp_path / "c.toml", input=inp, output=out, stages=[{"use": "tag", "label": "a"}],
                                     run={"batch_size": 2, "workers": 1}))
    d = load_pipeline(write_pipeline(tmp_path / "d.toml", input=inp, output=out, stages=[{"use": "tag", "label": "a"}],
                                     run={"seed": 5}))
    assert a.fingerprint() != b.fingerprint()
    assert a.fingerprint() == c.fingerprint()
    assert a.fingerprint() != d.fingerprint()


def test_pipeline_seed_alias(folders, tmp_path, test_plugin):
    inp, out = folders
    path = write_pipeline(tmp_path / "p.toml", input=inp, output=out, stages=[{"use": "invert"}])
    path.write_text(path.read_text().replace("[pipeline]\n", "[pipeline]\nseed = 7\n"))
    assert load_pipeline(path).run.seed == 7


def test_a_stage_validator_message_is_shown_as_written(folders, tmp_path):
    inp, out = folders
    path = write_pipeline(tmp_path / "p.toml", input=inp, output=out,
                          stages=[{"use": "colorize", "model": "eccv16", "hints": "h"}])
    text = "\n".join(problems_of(path))
    assert "'hints' needs model" in text
    assert "Value error" not in text and "expected" not in text
