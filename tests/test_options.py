"""Every option is declared once (options.py for the registry, settings.py for the server): the
`serve` flags, the `CKPTSERVE_<FIELD>` variables, the bounds and `--help` all follow from it."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
from pydantic import ValidationError as PydanticValidationError

from ckptserve import RegistryOptions
from ckptserve.cli import StartupError, build_settings, cli, main
from ckptserve.options import OPTIONS
from ckptserve.server.settings import RegistrySettings, Settings, flags

SERVE = cli.commands["serve"]
SETTABLE = [name for name, spec in OPTIONS.items() if spec.setting]
BOUNDED = [
    (name, bound, value)
    for name, spec in OPTIONS.items()
    for bound, value in (("ge", spec.ge), ("gt", spec.gt), ("le", spec.le))
    if value is not None
]


def test_every_serve_flag_sets_exactly_one_field() -> None:
    """Each `serve` option is `--<field>` of one settings field; every field but the env-only
    ones (secrets, the models argument, tuning knobs) has exactly one."""
    options = [p for p in SERVE.params if p.param_type_name == "option" and p.name != "help"]
    dests = [p.name for p in options]
    assert len(dests) == len(set(dests)), sorted(dests)
    server_fields = set(Settings.model_fields) - {"registry"} - Settings.NOT_FLAGS
    assert set(dests) == server_fields | set(SETTABLE)
    for param in options:
        assert param.opts == ["--" + str(param.name).replace("_", "-")], param.opts
    assert set(RegistrySettings.model_fields) == set(SETTABLE)


@pytest.mark.parametrize(
    "secret",
    ["--admin-token", "--signing-key", "--signing-keys", "--feedback-secret", "--feedback-token"],
)
def test_secrets_are_never_flags(secret: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Command lines are visible in `ps`: the admin token, the signing keys and the feedback
    secret and token come only from the environment."""
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "models/", secret, "x"])
    assert exit_info.value.code == 2
    assert "No such option" in capsys.readouterr().err


def test_help_shows_every_default(capsys: pytest.CaptureFixture[str]) -> None:
    """`serve --help` shows each flag's default, taken from its declaration."""
    main(["serve", "--help"])
    text = capsys.readouterr().out
    declared = flags()
    starts = []
    for flag in declared:
        found = re.search(rf"(?m)^ +{re.escape(flag.option)}(?![\w-])", text)
        assert found is not None, f"{flag.option} is not in --help"
        starts.append(found.start())
    assert starts == sorted(starts), "flags are shown in declaration order"
    for flag, start, end in zip(declared, starts, [*starts[1:], len(text)], strict=True):
        shown = "[default:" + "".join(flag.default_text.split()) + "]"
        entry = "".join(text[start:end].split())  # click wraps lines anywhere
        assert shown in entry, (flag.option, text[start:end])
    assert f"[default: {8 << 30}]" in text and "[default: sync]" in text


@pytest.mark.parametrize(("name", "bound", "limit"), BOUNDED, ids=lambda v: str(v))
def test_bounds_are_checked_by_the_options_and_the_settings(
    name: str, bound: str, limit: float
) -> None:
    """One declared bound refuses a value in RegistryOptions and in Settings (naming the field)."""
    value = limit - 1 if bound == "ge" else limit if bound == "gt" else limit + 1
    with pytest.raises(ValueError, match=name):
        RegistryOptions(**{name: value})
    if OPTIONS[name].setting:
        with pytest.raises(PydanticValidationError) as exc_info:
            Settings(**{name: value})
        assert exc_info.value.errors()[0]["loc"] == ("registry", name)


def test_a_bad_flag_value_names_the_flag() -> None:
    """A value the declaration refuses is one line naming the flag, not the nested field."""
    with pytest.raises(StartupError, match=r"invalid --max-checkpoint-bytes: .*greater than"):
        build_settings(["models/"], {"max_checkpoint_bytes": 0})


def test_flat_variables_and_keywords_reach_the_nested_options(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`CKPTSERVE_<FIELD>` and `Settings(<field>=...)` stay flat; a keyword wins over a variable."""
    monkeypatch.setenv("CKPTSERVE_CHECK_INTERVAL", "2.5")
    monkeypatch.setenv("CKPTSERVE_SWAP", "background")
    monkeypatch.setenv("CKPTSERVE_OBS_LOW", "-5")
    monkeypatch.setenv("CKPTSERVE_ACTION_HIGH", "[1, 2]")
    monkeypatch.setenv("CKPTSERVE_ALLOW_FORMATS", '["export", "safetensors"]')
    monkeypatch.setenv("CKPTSERVE_MAX_CHECKPOINT_BYTES", "4096")
    monkeypatch.setenv("CKPTSERVE_STATE_DIR", "/var/lib/ckptserve")
    settings = Settings(swap="sync", require_signature=False)
    registry = settings.registry
    assert isinstance(registry, RegistryOptions)
    assert registry.check_interval == 2.5 and registry.swap == "sync"
    assert registry.obs_low == -5 and list(registry.action_high or ()) == [1, 2]
    assert registry.allow_formats == ("export", "safetensors")
    assert registry.max_checkpoint_bytes == 4096 and registry.state_dir == "/var/lib/ckptserve"


def test_environment_only_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The signing keys and prometheus-client's directory are read in settings, from the
    environment, and reach the registry options; the settings' repr never shows a key."""
    monkeypatch.setenv("CKPTSERVE_SIGNING_KEY", "s3cret")
    monkeypatch.setenv("CKPTSERVE_SIGNING_KEYS", "old:k1,new:k2")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    settings = Settings()
    assert settings.prometheus_multiproc_dir == str(tmp_path)
    options = settings.registry_options()
    assert options.signing_key == "s3cret" and options.signing_keys == "old:k1,new:k2"
    assert "s3cret" not in repr(settings) and "k1" not in repr(settings)


def test_worker_settings_round_trip_without_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """`to_env()` carries every option to worker processes but no secret; a worker reads those
    from its environment."""
    monkeypatch.setenv("CKPTSERVE_SIGNING_KEY", "s3cret")
    monkeypatch.setenv("CKPTSERVE_ADMIN_TOKEN", "t0ken")
    monkeypatch.setenv("CKPTSERVE_FEEDBACK_SECRET", "f33dback")
    monkeypatch.setenv("CKPTSERVE_FEEDBACK_TOKEN", "r3ward")
    settings = Settings(swap="background", obs_low=[-1.0, -2.0], allow_formats=("export",), port=1)
    assert settings.feedback_secret is not None and settings.feedback_token is not None
    raw = settings.to_env()
    for secret in ("s3cret", "t0ken", "signing", "f33dback", "r3ward", "feedback"):
        assert secret not in raw, (secret, raw)
    worker = Settings(**json.loads(raw))
    assert worker.registry == settings.registry and worker.port == 1
    assert worker.registry_options().signing_key == "s3cret"


def test_registry_options_are_built_once(tmp_path: Path) -> None:
    """The registry options (and the factory's loader) are built once per settings object."""
    settings = Settings(factory="policies:make_actor", obs_dim=4)
    first = settings.registry_options()
    assert settings.registry_options() is first
    assert first.obs_dim == 4 and first.loader != "auto"
    assert dataclasses.replace(first, loader="auto") == dataclasses.replace(
        settings.registry, loader="auto"
    )


def test_an_unknown_format_is_refused_in_both_places() -> None:
    with pytest.raises(ValueError, match="unknown formats: pickle"):
        RegistryOptions(allow_formats=["pickle"])
    with pytest.raises(StartupError, match="invalid --allow-formats: unknown formats: pickle"):
        build_settings(["models/"], {"allow_formats": ("pickle",)})


def test_the_documented_flags_and_variables_are_the_declared_ones() -> None:
    """Every `--flag` and `CKPTSERVE_<FIELD>` that docs/server.md names sets one declared field."""
    docs = (Path(__file__).parents[1] / "docs" / "server.md").read_text()
    options = docs[docs.index("## Options") : docs.index("\n## ", docs.index("## Options") + 1)]
    documented = set(re.findall(r"(?<![\w-])--([a-z][a-z-]+)", options))
    served = {str(p.name).replace("_", "-") for p in SERVE.params if p.name != "help"}
    assert documented - {"help"} <= served, sorted(documented - served)
    fields = (set(Settings.model_fields) - {"registry"}) | set(SETTABLE)
    variables = {v.lower() for v in re.findall(r"CKPTSERVE_([A-Z_]+[A-Z])", docs)}
    assert variables <= fields, sorted(variables - fields)


def test_preflight_checks_paths_without_building_a_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Start-up checks read each path and the options directly: no throwaway ModelRegistry."""
    import ckptserve.registry
    from ckptserve.cli import _preflight

    def no_registry(*args: object, **kwargs: object) -> None:
        raise AssertionError("_preflight built a ModelRegistry")

    monkeypatch.setattr(ckptserve.registry.ModelRegistry, "__init__", no_registry)
    (tmp_path / "actor_latest.pt").write_bytes(b"not loaded by the checks")
    settings = build_settings([str(tmp_path), f"new={tmp_path / 'new'}"], {})
    _preflight(settings)
    assert not (tmp_path / "new").exists()  # created by the server, not by the checks
    monkeypatch.setenv("CKPTSERVE_SIGNING_KEY", "k")
    with pytest.raises(StartupError, match="a signature is required"):
        _preflight(build_settings([str(tmp_path / "actor_latest.pt")], {"require_signature": True}))


def test_the_rollout_options_are_declared_with_their_defaults_and_bounds() -> None:
    """keep_versions, shadow_states, the guard's limits, the canary and the follow rule are
    registry options like the others: defaults as docs/rollout.md says, bounds refused."""
    options = RegistryOptions()
    assert (options.keep_versions, options.shadow_states, options.sign_dead_band) == (2, 256, 0.05)
    assert options.max_divergence is None and options.max_sign_flips is None
    assert (options.canary_fraction, options.canary_seconds) == (0.0, 60.0)
    assert (options.canary_metric, options.follow) == ("none", "latest")
    for bad in ({"keep_versions": 0}, {"shadow_states": -1}, {"max_sign_flips": 1.5},
                {"canary_fraction": -0.1}, {"canary_seconds": 0}, {"sign_dead_band": float("inf")},
                {"max_divergence": float("nan")}):  # fmt: skip
        with pytest.raises(ValueError, match=next(iter(bad))):
            RegistryOptions(**bad)


@pytest.mark.parametrize("rule", ["latest", "max:eval_return", "min:loss"])
def test_a_follow_rule_is_accepted_as_written(rule: str) -> None:
    assert RegistryOptions(follow=rule).follow == rule
    assert build_settings(["models/"], {"follow": rule}).registry.follow == rule


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [("follow", "best", "--follow is 'latest', 'max:<metadata key>'"),
     ("follow", "max:", "--follow is"), ("canary_metric", "latency", "'none' or 'reward'")],
)  # fmt: skip
def test_a_bad_follow_rule_or_canary_metric_is_refused_where_it_is_written(
    field: str, value: str, says: str
) -> None:
    """RegistryOptions refuses it when built, and `serve` says which flag is wrong."""
    with pytest.raises(ValueError, match=re.escape(says)):
        RegistryOptions(**{field: value})
    flag = "--" + field.replace("_", "-")
    with pytest.raises(StartupError, match=f"invalid {flag}"):
        build_settings(["models/"], {field: value})
