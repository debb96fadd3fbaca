"""The pure parts of `streams dev netbox`: secrets, the rendered configuration, URL parsing,
the cache key and Python discovery's refusals. No NetBox runs here."""

from __future__ import annotations

import runpy
import stat
from pathlib import Path

import pytest

from streams.dev import netbox_db, netbox_home, netbox_install
from streams.errors import DevServiceError


def test_secrets_are_generated_once_and_private(tmp_path: Path) -> None:
    first = netbox_home.load_secrets(tmp_path)
    assert netbox_home.load_secrets(tmp_path) == first
    assert stat.S_IMODE((tmp_path / "secrets.json").stat().st_mode) == 0o600
    assert len(first.secret_key) >= 50 and len(first.token_pepper) >= 50
    assert first.api_token == f"nbt_{first.token_key}.{first.token}"
    assert len(first.token_key) == 12 and len(first.token) == 40
    assert first.token not in repr(first) and first.client_secret not in repr(first)


def test_configuration_renders_what_netbox_requires(tmp_path: Path) -> None:
    database = netbox_db.database("postgresql://nb:pa%40ss@db.example:6543/streams?sslmode=require", "netbox")
    root = netbox_home.render_configuration(tmp_path, database=database, redis_port=7001, oauth_port=8081)
    path = root / "conf" / "configuration.py"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    config = runpy.run_path(str(path))
    assert config["ALLOWED_HOSTS"] == ["*"]
    assert config["DATABASE"] | {"OPTIONS": None} == {
        "NAME": "netbox", "USER": "nb", "PASSWORD": "pa@ss", "HOST": "db.example", "PORT": "6543",
        "CONN_MAX_AGE": 300, "OPTIONS": None}
    assert config["DATABASE"]["OPTIONS"] == {"sslmode": "require"}
    assert config["REDIS"]["tasks"]["PORT"] == config["REDIS"]["caching"]["PORT"] == 7001
    assert config["REDIS"]["tasks"]["DATABASE"] != config["REDIS"]["caching"]["DATABASE"]
    secrets = netbox_home.load_secrets(tmp_path)
    assert config["SECRET_KEY"] == secrets.secret_key
    assert config["API_TOKEN_PEPPERS"] == {1: secrets.token_pepper}
    assert config["PLUGINS"] == ["netbox_diode_plugin"]
    # The plugin derives http://127.0.0.1:8081/diode/auth/introspect from this.
    assert config["PLUGINS_CONFIG"]["netbox_diode_plugin"]["diode_target"] == "grpc://127.0.0.1:8081/diode"
    assert (tmp_path / "wsgi" / "streams_netbox_wsgi.py").exists()


def test_netbox_processes_do_not_inherit_streams_or_python_settings(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    monkeypatch.setenv("STREAMS_DATABASE_URL", "postgresql://secret@x/y")
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "other.settings")
    env = netbox_home.netbox_env(tmp_path)
    assert "PYTHONPATH" not in env and "STREAMS_DATABASE_URL" not in env
    assert env["DJANGO_SETTINGS_MODULE"] == "netbox.settings"
    assert env["NETBOX_ROOT"] == str(tmp_path / "root")


def test_database_defaults() -> None:
    database = netbox_db.database("postgresql://postgres@127.0.0.1:5433/streams", "nb")
    assert (database.host, database.port, database.user, database.password, database.name) == (
        "127.0.0.1", 5433, "postgres", "", "nb")
    assert database.options == {}


def test_cache_key_follows_the_python_minor_version() -> None:
    assert netbox_install.cache_key("3.12.1") == netbox_install.cache_key("3.12.9")
    assert netbox_install.cache_key("3.12.1") != netbox_install.cache_key("3.13.0")
    assert netbox_install.cache_key("3.13.0").startswith("py3.13-")


def test_a_configured_python_that_is_too_old_or_missing_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DevServiceError, match="STREAMS_NETBOX_PYTHON") as missing:
        netbox_install.find_python(tmp_path / "no-such-python")
    assert "\n" not in str(missing.value)
    old = tmp_path / "python"
    old.write_text("#!/bin/sh\necho 3.11.7; echo /usr/bin/python3.11\n")
    old.chmod(0o755)
    with pytest.raises(DevServiceError, match=r">= 3\.12"):
        netbox_install.find_python(old)


def test_pyenv_versions_are_tried_newest_first() -> None:
    paths = ["/p/versions/3.12.1/bin/python3", "/p/versions/3.13.0/bin/python3", "/p/versions/3.12.10/bin/python3"]
    assert sorted(paths, key=netbox_install.version_key, reverse=True) == [
        "/p/versions/3.13.0/bin/python3", "/p/versions/3.12.10/bin/python3", "/p/versions/3.12.1/bin/python3"]
