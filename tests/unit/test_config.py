"""Settings: file, environment and overrides, their precedence, and every refusal."""

from __future__ import annotations

from pathlib import Path

import pytest

from alice_spool.config import Settings, load_settings
from alice_spool.errors import ConfigError
from alice_spool.masking import masked_url

REPO = Path(__file__).resolve().parents[2]


def load(tmp_path: Path, text: str | None = None, env: dict[str, str] | None = None, **kw):
    if text is None:
        (tmp_path / "config.toml").unlink(missing_ok=True)
    else:
        (tmp_path / "config.toml").write_text(text)
    return load_settings(env=env or {}, cwd=tmp_path, **kw)


def refused(tmp_path: Path, text: str | None = None, **kw) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, **kw)
    return info.value.message


def test_built_in_defaults(tmp_path: Path) -> None:
    settings = load(tmp_path)
    assert settings.config_file is None
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 8080)
    assert settings.paths.data_dir == str(tmp_path / "var")
    assert settings.database_url == f"sqlite:///{tmp_path / 'var' / 'alice.db'}"
    assert settings.paths.inbox == str(tmp_path / "var" / "inbox")
    assert settings.paths.outbox == str(tmp_path / "var" / "outbox")
    assert settings.paths.models == str(tmp_path / "var" / "models")
    assert settings.generation.default_scheduler == "dpm++_sde_karras"
    assert settings.runner.max_attempts == 3 and settings.inbox.after_accept == "move"


def test_shipped_config_toml_holds_every_key_with_its_default(tmp_path: Path) -> None:
    shipped = load_settings(REPO / "config.toml", env={}, cwd=tmp_path)
    defaults = load(tmp_path)
    assert shipped.to_dict() == defaults.to_dict()
    text = (REPO / "config.toml").read_text()
    for section, keys in Settings().to_dict().items():
        assert f"[{section}]" in text
        for key in keys:
            assert f"\n{key} = " in text or f"[{section}.{key}]" in text, f"{section}.{key}"


def test_file_env_and_override_precedence(tmp_path: Path) -> None:
    text = "[server]\nport = 9000\nhost = '0.0.0.0'\n[runner]\nmax_batch = 4\n"
    env = {"ALICE_SERVER_PORT": "9100", "ALICE_RUNNER_MAX_BATCH": "6"}
    settings = load(tmp_path, text, env=env, overrides={"server.port": "9200"})
    assert settings.server.port == 9200  # flag beats environment
    assert settings.runner.max_batch == 6  # environment beats file
    assert settings.server.host == "0.0.0.0"  # file beats default
    assert settings.config_file == str(tmp_path / "config.toml")


def test_config_file_from_environment_and_flag(tmp_path: Path) -> None:
    other = tmp_path / "other.toml"
    other.write_text("[server]\nport = 7000\n")
    assert load(tmp_path, env={"ALICE_CONFIG": str(other)}).server.port == 7000
    flag = tmp_path / "flag.toml"
    flag.write_text("[server]\nport = 7001\n")
    assert load(tmp_path, env={"ALICE_CONFIG": str(other)}, config_file=flag).server.port == 7001


def test_missing_explicit_config_file_is_an_error(tmp_path: Path) -> None:
    assert "does not exist" in refused(tmp_path, config_file=tmp_path / "nope.toml")


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    message = refused(tmp_path, "[server\nport = 1\n")
    assert "config.toml" in message and "not valid TOML" in message


def test_unknown_section_and_key_are_named(tmp_path: Path) -> None:
    assert "unknown section [sever]" in refused(tmp_path, "[sever]\nport = 1\n")
    message = refused(tmp_path, "[server]\nprot = 1\n")
    assert "'server.prot'" in message and "did you mean 'port'" in message
    message = refused(tmp_path, env={"ALICE_SERVER_PROT": "1"})
    assert "ALICE_SERVER_PROT" in message and "prot" in message
    message = refused(tmp_path, overrides={"runner.max_bach": "2"})
    assert "runner.max_bach" in message and "max_batch" in message
    assert "no section [nope]" in refused(tmp_path, overrides={"nope.x": "1"})


def test_environment_outside_the_sections_is_not_configuration(tmp_path: Path) -> None:
    settings = load(tmp_path, env={"ALICE_SOMETHING": "after_claim", "ALICEX": "1"})
    assert settings.server.port == 8080


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[server]\nport = '8080'\n", "server.port"),
        ("[server]\nport = true\n", "server.port"),
        ("[runner]\ncompile = 'yes'\n", "runner.compile"),
        ("[generation]\ndefault_guidance_scale = 'high'\n", "generation.default_guidance_scale"),
        ("[server]\ncors_origins = 'x'\n", "server.cors_origins"),
        ("[server]\napi_keys = ['a']\n", "server.api_keys"),
        ("[server]\nhost = 1\n", "server.host"),
        ("server = 1\n", "server"),
    ],
)
def test_wrong_types_in_the_file(tmp_path: Path, text: str, key: str) -> None:
    assert key in refused(tmp_path, text)


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("ALICE_SERVER_PORT", "9001", ("server", "port", 9001)),
        ("ALICE_RUNNER_COMPILE", "yes", ("runner", "compile", True)),
        ("ALICE_RUNNER_COMPILE", "0", ("runner", "compile", False)),
        ("ALICE_RUNNER_LEASE_S", "12.5", ("runner", "lease_s", 12.5)),
        (
            "ALICE_SERVER_CORS_ORIGINS",
            "http://a, http://b",
            ("server", "cors_origins", ["http://a", "http://b"]),
        ),
        ("ALICE_SERVER_CORS_ORIGINS", '["http://c"]', ("server", "cors_origins", ["http://c"])),
        (
            "ALICE_SERVER_API_KEYS",
            "sam=k1,cron=k2",
            ("server", "api_keys", {"sam": "k1", "cron": "k2"}),
        ),
        ("ALICE_SERVER_API_KEYS", '{"sam": "k1"}', ("server", "api_keys", {"sam": "k1"})),
        ("ALICE_PATHS_DATA_DIR", "/srv/alice", ("paths", "data_dir", "/srv/alice")),
        ("ALICE_LOGGING_LEVEL", "debug", ("logging", "level", "DEBUG")),
    ],
)
def test_environment_values_are_parsed_by_type(
    tmp_path: Path, var: str, value: str, expected: tuple
) -> None:
    section, key, result = expected
    settings = load(tmp_path, env={var: value})
    assert getattr(getattr(settings, section), key) == result


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("ALICE_SERVER_PORT", "eighty"),
        ("ALICE_RUNNER_COMPILE", "maybe"),
        ("ALICE_RUNNER_LEASE_S", "soon"),
        ("ALICE_SERVER_API_KEYS", "sam"),
        ("ALICE_SERVER_API_KEYS", "{not json"),
    ],
)
def test_bad_environment_values_name_the_variable(tmp_path: Path, var: str, value: str) -> None:
    assert var in refused(tmp_path, env={var: value})


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[server]\nport = 70000\n", "server.port"),
        ("[server]\npublic_url = 'example.org'\n", "server.public_url"),
        ("[server]\nmax_body_bytes = 10\n", "server.max_body_bytes"),
        ("[server]\nrequest_timeout_s = 0\n", "server.request_timeout_s"),
        ("[server.api_keys]\nsam = ''\n", "server.api_keys.sam"),
        ("[paths]\ndata_dir = ''\n", "paths.data_dir"),
        ("[generation]\ndefault_steps = 151\n", "generation.default_steps"),
        ("[generation]\nmax_steps = 10\ndefault_steps = 25\n", "generation.default_steps"),
        ("[generation]\nmax_steps = 151\n", "generation.max_steps"),
        ("[generation]\ndefault_guidance_scale = 31\n", "generation.default_guidance_scale"),
        ("[generation]\ndefault_scheduler = 'fast'\n", "generation.default_scheduler"),
        ("[generation]\ndefault_model = '../x'\n", "generation.default_model"),
        ("[generation]\nmax_pixels = 100\n", "generation.max_pixels"),
        ("[generation]\nmax_n = 17\n", "generation.max_n"),
        ("[generation]\nmax_queue = 0\n", "generation.max_queue"),
        ("[runner]\ndevice = 'gpu'\n", "runner.device"),
        ("[runner]\nmax_batch = 0\n", "runner.max_batch"),
        ("[runner]\nlease_s = 0.5\n", "runner.lease_s"),
        ("[runner]\nmax_attempts = 0\n", "runner.max_attempts"),
        ("[runner]\njob_timeout_s = 0\n", "runner.job_timeout_s"),
        ("[runner]\nmemory = 'lots'\n", "runner.memory"),
        ("[inbox]\nafter_accept = 'copy'\n", "inbox.after_accept"),
        ("[inbox]\nrescan_interval_s = 0\n", "inbox.rescan_interval_s"),
        ("[inbox]\nmax_file_bytes = 0\n", "inbox.max_file_bytes"),
        ("[retention]\ndays = -1\n", "retention.days"),
        ("[retention]\nmax_storage_gb = -1\n", "retention.max_storage_gb"),
        ("[logging]\nlevel = 'LOUD'\n", "logging.level"),
        ("[logging]\nformat = 'xml'\n", "logging.format"),
    ],
)
def test_values_out_of_range_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    assert key in refused(tmp_path, text)


def test_accepted_values_are_normalised(tmp_path: Path) -> None:
    text = (
        "[generation]\ndefault_model = 'tiny'\ndefault_scheduler = 'Euler a'\n"
        "[runner]\ndevice = 'cuda:1'\n[logging]\nlevel = 'warning'\n"
    )
    settings = load(tmp_path, text)
    assert settings.generation.default_model == "sd/tiny"
    assert settings.generation.default_scheduler == "euler_a"
    assert settings.runner.device == "cuda:1"
    assert settings.logging.level == "WARNING"


def test_paths_resolve_against_the_working_directory(tmp_path: Path) -> None:
    text = "[paths]\ndata_dir = 'state'\ninbox = '/srv/in'\ndatabase_url = 'postgresql+psycopg://h/db'\n"
    settings = load(tmp_path, text)
    assert settings.paths.data_dir == str(tmp_path / "state")
    assert settings.paths.inbox == "/srv/in"
    assert settings.paths.outbox == str(tmp_path / "state" / "outbox")
    assert settings.database_url == "postgresql+psycopg://h/db"


def test_api_keys_are_masked_when_shown(tmp_path: Path) -> None:
    settings = load(tmp_path, "[server.api_keys]\nsam = 'secret-123'\n")
    assert settings.server.api_keys == {"sam": "secret-123"}
    assert settings.to_dict()["server"]["api_keys"] == {"sam": "***"}
    assert "secret-123" not in repr(settings.to_dict())


def test_settings_are_frozen(tmp_path: Path) -> None:
    settings = load(tmp_path)
    with pytest.raises(AttributeError):
        settings.server.port = 1  # type: ignore[misc]


def test_source_tokens_are_masked_when_shown_and_endpoints_checked(tmp_path: Path) -> None:
    settings = load(tmp_path, "[models]\nhf_token = 'hf_abc'\ncivitai_token = 'cv_def'\n")
    assert (settings.models.hf_token, settings.models.civitai_token) == ("hf_abc", "cv_def")
    shown = settings.to_dict()["models"]
    assert (shown["hf_token"], shown["civitai_token"]) == ("***", "***")
    assert "hf_abc" not in repr(settings.to_dict()) and "cv_def" not in repr(settings.to_dict())
    assert load(tmp_path, "").to_dict()["models"]["hf_token"] == ""  # none set: nothing masked
    for bad in ("hf_endpoint = 'ftp://x'", "civitai_url = ''", "hf_variant = 'bf16'"):
        with pytest.raises(ConfigError, match=r"models\."):
            load(tmp_path, f"[models]\n{bad}\n")
    trailing = load(tmp_path, "[models]\ncivitai_url = 'https://civitai.red/'\n")
    assert trailing.models.civitai_url == "https://civitai.red"


def test_runner_devices_none_a_list_or_all_and_every_refusal(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from alice_spool.daemon.supervisor import runner_slots

    assert load(tmp_path).runner.devices == []
    assert load(tmp_path, '[runner]\ndevices = "all"\n').runner.devices == ["all"]
    listed = load(tmp_path, '[runner]\nname = "box"\ndevices = ["cuda:1", "cuda:0", "cpu"]\n')
    assert runner_slots(SimpleNamespace(settings=listed)) == [
        ("box-gpu1", "cuda:1"),
        ("box-gpu0", "cuda:0"),
        ("box-cpu2", "cpu"),
    ]
    assert runner_slots(SimpleNamespace(settings=load(tmp_path))) == [(None, None)]
    env = {"ALICE_RUNNER_DEVICES": "cuda:0,cuda:3"}
    assert load(tmp_path, env=env).runner.devices == ["cuda:0", "cuda:3"]
    for text, why in [
        ('devices = "some"', "must be a list of strings"),
        ('devices = ["cuda"]', "a list of cuda:N, mps or cpu"),
        ('devices = ["all", "cuda:0"]', "a list of cuda:N, mps or cpu"),
        ('devices = ["cuda:0", "cuda:0"]', "names a GPU twice"),
        ("devices = [0, 1]", "must be a list of strings"),
    ]:
        assert why in refused(tmp_path, f"[runner]\n{text}\n"), text


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql+psycopg://spool:pa55@db.local:5432/spool",
            "postgresql+psycopg://spool:***@db.local:5432/spool",
        ),
        (
            "postgresql://spool@db.local/spool?sslmode=require&password=pa55",
            "postgresql://***@db.local/spool?sslmode=require&password=***",
        ),
        # SQLAlchemy reads a password up to the `@`: `#`, `/` and `?` in it included.
        ("postgresql://spool:pa#55@db.local/spool", "postgresql://spool:***@db.local/spool"),
        ("postgresql://spool:pa/55@db.local/spool", "postgresql://spool:***@db.local/spool"),
        ("postgresql://spool:p?a:5@db.local:5/s", "postgresql://spool:***@db.local:5/s"),
        ("https://mirror.example:8080/x@y", "https://mirror.example:8080/x@y"),
        ("https://user:hf_tok@hub.example/mirror", "https://user:***@hub.example/mirror"),
        ("https://ghp_tok@hub.example", "https://***@hub.example"),
        (
            "https://civitai.example/api?page=2&token=t1;apiKey=t2&X-Amz-Signature=t3&sig=",
            "https://civitai.example/api?page=2&token=***;apiKey=***&X-Amz-Signature=***&sig=",
        ),
        (
            "https://h.example/cb#access_token=t4&state=1",
            "https://h.example/cb#access_token=***&state=1",
        ),
        ("http://[::1/broken?token=t5", "http://***"),
        ("sqlite:////var/lib/alice/alice.db", "sqlite:////var/lib/alice/alice.db"),
        ("https://civitai.com", "https://civitai.com"),
    ],
)
def test_every_credential_in_a_url_is_masked(url: str, shown: str) -> None:
    assert masked_url(url) == shown


def test_urls_are_masked_in_every_setting_and_list_when_shown(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        "[server]\ncors_origins = ['https://u:pw-1@app.example']\n"
        "[models]\nhf_endpoint = 'https://u:pw-2@hub.example'\n"
        "civitai_url = 'https://civitai.example?token=pw-3'\n"
        "[paths]\ndatabase_url = 'postgresql://u@db.example/x?password=pw-4'\n",
    )
    shown = repr(settings.to_dict())
    assert all(f"pw-{i}" not in shown for i in range(1, 5)), shown
    assert "app.example" in shown and "hub.example" in shown and "db.example" in shown
