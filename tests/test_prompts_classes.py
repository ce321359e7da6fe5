import json

import pytest

from promptmid_cli.errors import BadInput
from promptmid_cli.prompts import LandUseClass, default_classes, load_prompt_file


def test_default_classes_documented_list():
    cls = default_classes()
    ids = [c.id for c in cls]
    assert len(ids) == len(set(ids)) >= 10
    for want in ("dense_urban", "residential", "industrial", "farmland", "forest", "grassland",
                 "bare_soil", "water", "wetland", "mountain", "road_rail"):
        assert want in ids
    for c in cls:
        assert isinstance(c, LandUseClass) and c.name and c.templates
        assert all(isinstance(t, str) and t for t in c.templates)
    by = {c.id: c for c in cls}
    assert by["water"].featureless and by["bare_soil"].featureless and not by["forest"].featureless
    assert by["farmland"].prompt == "a remote sensing image of farmland"
    assert "a satellite image of farmland" in by["farmland"].templates


def test_load_yaml_and_json(tmp_path):
    y = tmp_path / "p.yaml"
    y.write_text("classes:\n  - id: crops\n    name: crop land\n    templates: ['a satellite image of {}']\n"
                 "  - id: sea\n    templates: a remote sensing image of the sea\n    featureless: true\n")
    cls = load_prompt_file(y)
    assert [c.id for c in cls] == ["crops", "sea"]
    assert cls[0].prompt == "a satellite image of crop land" and cls[1].featureless
    assert cls[1].name == "sea"
    j = tmp_path / "p.json"
    j.write_text(json.dumps([c.to_dict() for c in default_classes()]))
    assert load_prompt_file(j) == default_classes()


@pytest.mark.parametrize("name,text,msg", [
    ("bad.yaml", "classes: [id: x, templates: [a\n", "invalid YAML"),
    ("bad.json", "[{\"id\": \"x\",}]", "invalid JSON"),
    ("empty.yaml", "", "empty"),
    ("empty2.json", "[]", "empty"),
    ("scalar.yaml", "hello", "expected a list"),
    ("nodict.yaml", "- just a string", "expected a mapping"),
    ("noid.yaml", "- templates: [a]", "'id'"),
    ("badid.yaml", "- id: 'has space'\n  templates: [a]", "'id'"),
    ("notemp.yaml", "- id: x", "'templates'"),
    ("emptytemp.yaml", "- id: x\n  templates: []", "'templates'"),
    ("unknown.yaml", "- id: x\n  templates: [a]\n  templats: [b]", "unknown key"),
    ("dup.yaml", "- id: x\n  templates: [a]\n- id: x\n  templates: [b]", "duplicate class id 'x'"),
    ("flag.yaml", "- id: x\n  templates: [a]\n  featureless: maybe", "featureless"),
    ("extra.yaml", "classes: []\nother: 1", "only 'classes'"),
])
def test_bad_prompt_files(tmp_path, name, text, msg):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(BadInput) as e:
        load_prompt_file(p)
    assert msg in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_prompt_file(tmp_path):
    with pytest.raises(BadInput, match="not found"):
        load_prompt_file(tmp_path / "nope.yaml")


def test_prompts_command(tmp_path):
    import typer
    from typer.testing import CliRunner

    from promptmid_cli.prompts.cli import register_commands

    app = typer.Typer()
    register_commands(app)

    @app.command("noop")  # a second command so typer keeps "prompts" as a sub-command name
    def _noop():
        pass

    r = CliRunner().invoke(app, ["prompts"])
    assert r.exit_code == 0, r.output
    assert "farmland" in r.output and "a remote sensing image of farmland" in r.output
    r = CliRunner().invoke(app, ["prompts", "--json"])
    data = json.loads(r.output)
    assert data["source"] == "builtin" and len(data["classes"]) >= 10
    f = tmp_path / "mine.yaml"
    f.write_text("- id: crops\n  templates: [a satellite image of crops]\n")
    r = CliRunner().invoke(app, ["prompts", "--prompts", str(f), "--json"])
    assert [c["id"] for c in json.loads(r.output)["classes"]] == ["crops"]
    f.write_text("- id: crops\n")
    r = CliRunner().invoke(app, ["prompts", "--prompts", str(f)])
    assert r.exit_code == 2 and "templates" in r.output
