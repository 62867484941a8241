"""The manifest: typed, validated in full before any work, every problem with file, line, key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gallery.cli import main
from gallery.pipeline.manifest import ManifestError, load_manifest, parse_manifest
from gallery.pipeline.options import InterfaceOptions

SHA = "ab" * 32
REPO = Path(__file__).resolve().parents[1]


def write(folder: Path, text: str, name: str = "checkpoints.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "a.jd").write_bytes(b"a")
    (tmp_path / "b.jd").write_bytes(b"b")
    return tmp_path


def problems(path: Path) -> list[tuple[int | None, str, str]]:
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    assert caught.value.exit_code == 2
    return [(p.line, p.key, p.message) for p in caught.value.problems]


def test_minimal_manifest_gets_the_method_defaults(folder):
    manifest = load_manifest(write(folder, """\
        models:
          - {id: a, title: A, checkpoint: a.jd}
    """))
    assert manifest.site.name == "Model zoo"
    assert manifest.settings("a") == InterfaceOptions()
    options = manifest.settings("a")
    assert (options.trajectories.num_envs, options.trajectories.num_steps) == (8, 512)
    assert (options.observations.num_envs, options.observations.num_obs,
            options.observations.obs_every) == (32, 128, 128)
    assert options.attribution.integrate_steps == 10 and not options.attribution.policy
    assert options.nmf.features == 8
    assert manifest.root == folder


def test_model_options_override_defaults_key_by_key(folder):
    manifest = load_manifest(write(folder, """\
        defaults:
          trajectories: {num_envs: 2, num_steps: 16}
          nmf: {features: 4}
        models:
          - id: a
            title: A
            checkpoint: a.jd
            options: {trajectories: {num_steps: 32}, attribution: {policy: true}}
            features: {2b: {0: coin, 3: buzzsaw}}
          - {id: b, title: B, checkpoint: b.jd, tags: [x, x, y]}
    """))
    a, b = manifest.settings("a"), manifest.settings("b")
    assert (a.trajectories.num_envs, a.trajectories.num_steps) == (2, 32)
    assert a.attribution.policy and a.nmf.features == 4
    assert (b.trajectories.num_envs, b.trajectories.num_steps) == (2, 16)
    assert not b.attribution.policy
    assert manifest.model("a").features == {"2b": {0: "coin", 3: "buzzsaw"}}
    assert manifest.model("b").tags == ["x", "y"]


def test_every_problem_is_listed_with_its_line_and_key(folder):
    path = write(folder, """\
        site:
          name: Zoo
          colour: red
        defaults:
          trajectories: {num_envs: 0}
        models:
          - id: Bad_Id
            title: A
            checkpoint: https://example.org/a.jd
          - id: b
            title: B
            checkpoint: missing.jd
            sha256: xyz
            env: {distribution_mode: easy, colour: red}
            options:
              nmf: {features: 0}
              atribution: {}
          - id: b
            title: B again
            checkpoint: b.jd
        comparisons:
          - id: c
            title: C
            models: [b, nope]
    """)
    found = problems(path)
    keys = [(line, key) for line, key, _ in found]
    assert keys == [
        (3, "site.colour"),
        (5, "defaults.trajectories.num_envs"),
        (7, "models[0].id"),
        (7, "models[0].sha256"),
        (12, "models[1].checkpoint"),
        (13, "models[1].sha256"),
        (14, "models[1].env.colour"),
        (16, "models[1].options.nmf.features"),
        (17, "models[1].options.atribution"),
        (18, "models[2].id"),
        (24, "comparisons[0].models[1]"),
    ]
    messages = dict(((line, key), message) for line, key, message in found)
    assert "unknown key" in messages[(3, "site.colour")]
    assert "lowercase letters, digits and '-'" in messages[(7, "models[0].id")]
    assert "required for an http(s) checkpoint" in messages[(7, "models[0].sha256")]
    assert "file not found" in messages[(12, "models[1].checkpoint")]
    assert "64 hexadecimal digits" in messages[(13, "models[1].sha256")]
    assert "already used by models[1]" in messages[(18, "models[2].id")]
    assert "no model has id 'nope'" in messages[(24, "comparisons[0].models[1]")]


def test_error_text_names_the_file_line_and_key(folder):
    path = write(folder, """\
        models:
          - {id: a, title: A, checkpoint: a.jd, colour: red}
    """)
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    assert f"{path}:2: models[0].colour: unknown key" in str(caught.value)
    assert "nothing was built" in str(caught.value)


def test_duplicate_yaml_keys_are_problems(folder):
    found = problems(write(folder, """\
        models:
          - id: a
            title: A
            title: A2
            checkpoint: a.jd
    """))
    assert found[0][:2] == (4, "models[0].title")
    assert "appears twice" in found[0][2]


def test_yaml_syntax_error_has_a_line(folder):
    found = problems(write(folder, "models:\n  - id: a\n    title: [unclosed\n"))
    assert found[0][0] is not None and found[0][0] >= 3
    assert "not valid YAML" in found[0][2]


def test_missing_models_and_wrong_shapes(folder):
    assert problems(write(folder, "site: {name: Zoo}\n"))[0][1:] == (
        "models", "required key is missing; add it")
    assert "a manifest is a mapping" in problems(write(folder, "- a\n- b\n"))[0][2]


def test_comparisons_need_two_models_and_valid_ids(folder):
    found = problems(write(folder, """\
        models:
          - {id: a, title: A, checkpoint: a.jd}
        comparisons:
          - {id: Nope!, title: C, models: [a]}
    """))
    assert [(line, key) for line, key, _ in found] == [(4, "comparisons[0].id"),
                                                       (4, "comparisons[0].models")]


def test_file_urls_and_absolute_paths(folder):
    manifest = load_manifest(write(folder, f"""\
        models:
          - {{id: a, title: A, checkpoint: "file://{folder / 'a.jd'}"}}
          - {{id: b, title: B, checkpoint: "{folder / 'b.jd'}"}}
    """))
    assert [m.is_remote for m in manifest.models] == [False, False]
    found = problems(write(folder, """\
        models:
          - {id: a, title: A, checkpoint: "ftp://example.org/a.jd"}
    """))
    assert "unsupported URL scheme 'ftp'" in found[0][2]


def test_remote_checkpoint_with_sha256_needs_no_file(folder):
    manifest = parse_manifest(f"""
models:
  - id: a
    title: A
    checkpoint: https://example.org/a.jd
    sha256: "{SHA.upper()}"
""", folder / "m.yaml")
    assert manifest.models[0].sha256 == SHA and manifest.models[0].is_remote


def test_shipped_manifests_are_valid():
    example = load_manifest(REPO / "examples" / "openai-zoo.yaml")
    assert [m.id for m in example.models] == ["coinrun-openai", "coinrun-openai-easy"]
    assert example.models[0].sha256 == (
        "18818904a32842cc177dd3c666b0229a657d0e96b9a7f2be197d6c7f4431a1ac")
    shipped = load_manifest(REPO / "checkpoints.yaml")  # every demo model is in the repository
    assert [(c.id, c.kind) for c in shipped.comparisons] == [("training", "training"),
                                                             ("architectures", "models")]
    assert [m.id for m in shipped.models] == ["coinrun-untrained", "coinrun-early",
                                              "coinrun-final", "coinrun-sb3"]
    for model in shipped.models:  # at most 5 MB each
        assert (REPO / model.checkpoint).stat().st_size <= 5_000_000, model.checkpoint


def test_cli_exits_2_with_every_problem_before_any_work(folder, tmp_path, capsys,
                                                        monkeypatch):
    path = write(folder, """\
        models:
          - {id: A, title: A, checkpoint: a.jd}
          - {id: b, title: B, checkpoint: gone.jd}
    """)
    monkeypatch.setenv("GALLERY_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "site"
    assert main(["build", "-m", str(path), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:2: models[0].id" in err and f"{path}:3: models[1].checkpoint" in err
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_models_name_an_adapter_and_their_environment(folder):
    manifest = load_manifest(write(folder, """\
        models:
          - {id: a, title: A, checkpoint: a.jd,
             adapter: "examples.adapters.cleanrl_atari:make",
             env: {env_kind: atari, env_id: BreakoutNoFrameskip-v4}}
          - {id: b, title: B, checkpoint: b.jd, env: {env_kind: atari, env_id: ALE/Pong-v5}}
          - {id: c, title: C, checkpoint: b.jd, env: {env_kind: procgen, env_name: maze}}
        """))
    assert manifest.models[0].adapter == "examples.adapters.cleanrl_atari:make"
    assert manifest.models[1].adapter is None
    assert manifest.models[1].env == {"env_kind": "atari", "env_id": "ALE/Pong-v5"}


def test_bad_adapters_and_games_are_problems(folder):
    found = problems(write(folder, """\
        models:
          - {id: a, title: A, checkpoint: a.jd, adapter: "not an adapter"}
          - {id: b, title: B, checkpoint: b.jd, env: {env_kind: atari, env_id: Breakin-v4}}
          - {id: c, title: C, checkpoint: b.jd, env: {env_kind: procgen, env_name: mase}}
          - {id: d, title: D, checkpoint: b.jd, env: {env_kind: gym}}
        """))
    keys = {key: message for _, key, message in found}
    assert "module.path:function" in keys["models[0].adapter"]
    assert "'Breakin-v4' is not one of the supported Atari games" in keys[
        "models[1].env.env_id"]
    assert "BreakoutNoFrameskip-v4" in keys["models[1].env.env_id"]
    assert "'mase' is not a Procgen game" in keys["models[2].env.env_name"]
    assert "use procgen or atari" in keys["models[3].env.env_kind"]
    assert [line for line, _, _ in found] == [2, 3, 4, 5]
