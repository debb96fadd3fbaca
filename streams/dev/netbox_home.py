"""One NetBox instance's home: its secrets, its rendered configuration, its management commands.

`<home>/netbox/` (home is the `streams dev` home or a test session's) holds:

    secrets.json           0600: SECRET_KEY, the API token pepper and token, the OAuth client
                           secret, the admin password; generated once, so tokens survive restarts
    root/                  NETBOX_ROOT: conf/configuration.py (0600, rendered at every start),
                           media/, scripts/, reports/
    wsgi/streams_netbox_wsgi.py   NetBox's WSGI app behind Django's static-files handler
    valkey/ oauth/ gunicorn/      each process's state file and log (see netbox.py)

Secrets reach NetBox through the 0600 configuration file and the bootstrap script through its
environment; none is ever on a command line.
"""

from __future__ import annotations

import json
import os
import secrets
import string
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from streams.dev.netbox_install import Installation
from streams.errors import DevServiceError

ADMIN_USER = "admin"
CLIENT_ID = "streams"
SCOPE = "netbox:read netbox:write"
_ALPHANUMERIC = string.ascii_letters + string.digits


@dataclass(frozen=True)
class Secrets:
    secret_key: str = field(repr=False)
    token_pepper: str = field(repr=False)
    token_key: str            # v2 API token: `nbt_<key>.<token>`; the key is not secret
    token: str = field(repr=False)
    client_secret: str = field(repr=False)
    admin_password: str = field(repr=False)

    @property
    def api_token(self) -> str:
        return f"nbt_{self.token_key}.{self.token}"


def _random(length: int, alphabet: str = _ALPHANUMERIC) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


def write_private(path: Path, text: str) -> None:
    """Write `text` readable by the owner only, from the first byte on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    tmp.replace(path)


def load_secrets(netbox_home: Path) -> Secrets:
    """The home's secrets, generated on first use (NetBox wants >= 50 characters for the first two)."""
    path = netbox_home / "secrets.json"
    try:
        return Secrets(**json.loads(path.read_text()))
    except (FileNotFoundError, json.JSONDecodeError, TypeError):
        pass
    created = Secrets(
        secret_key=_random(64, _ALPHANUMERIC + "!@#$%^&*(-_=+)"),
        token_pepper=_random(64),
        token_key=_random(12),        # NetBox's TOKEN_KEY_LENGTH
        token=_random(40),            # NetBox's TOKEN_DEFAULT_LENGTH
        client_secret=secrets.token_urlsafe(32),
        admin_password=_random(20),
    )
    write_private(path, json.dumps({
        "secret_key": created.secret_key, "token_pepper": created.token_pepper, "token_key": created.token_key,
        "token": created.token, "client_secret": created.client_secret, "admin_password": created.admin_password,
    }, indent=2))
    return created


def netbox_root(netbox_home: Path) -> Path:
    return netbox_home / "root"


def wsgi_dir(netbox_home: Path) -> Path:
    return netbox_home / "wsgi"


# NetBox does not serve static files unless DEBUG is on; Django's own StaticFilesHandler (what
# runserver uses) serves them from the packages' static directories, so the UI renders without
# collectstatic or a web server in front. Fine for a loopback dev server, not for production.
_WSGI = '''\
"""Written by `streams dev netbox`: NetBox's WSGI app, with /static/ served by Django."""
from django.contrib.staticfiles.handlers import StaticFilesHandler
from netbox.wsgi import application as netbox_application

application = StaticFilesHandler(netbox_application)
'''


@dataclass(frozen=True)
class Database:
    """Where NetBox's database is, as Django wants it (the password, if any, only in the 0600 file)."""

    host: str
    port: int
    user: str
    password: str = field(repr=False)
    name: str
    options: dict[str, str] = field(default_factory=dict)


def render_configuration(netbox_home: Path, *, database: Database, redis_port: int, oauth_port: int) -> Path:
    """Write NETBOX_ROOT/conf/configuration.py (and the WSGI module); returns NETBOX_ROOT."""
    found = load_secrets(netbox_home)
    root = netbox_root(netbox_home)
    for sub in ("media", "scripts", "reports"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    redis = {"HOST": "127.0.0.1", "PORT": redis_port, "USERNAME": "", "PASSWORD": "", "SSL": False}
    config = {
        "ALLOWED_HOSTS": ["*"],
        "DATABASE": {
            "NAME": database.name, "USER": database.user, "PASSWORD": database.password,
            "HOST": database.host, "PORT": str(database.port), "CONN_MAX_AGE": 300,
            "OPTIONS": database.options,
        },
        # Distinct databases: the task queues must not see the cache's keys and vice versa.
        "REDIS": {"tasks": {**redis, "DATABASE": 0}, "caching": {**redis, "DATABASE": 1}},
        "SECRET_KEY": found.secret_key,
        "API_TOKEN_PEPPERS": {1: found.token_pepper},
        "PLUGINS": ["netbox_diode_plugin"],
        # The plugin introspects tokens at http://<host:port><path>/auth/introspect of this target.
        "PLUGINS_CONFIG": {"netbox_diode_plugin": {"diode_target": f"grpc://127.0.0.1:{oauth_port}/diode"}},
        # No internet here, and a dev instance must not phone home.
        "CENSUS_REPORTING_ENABLED": False,
        "ISOLATED_DEPLOYMENT": True,
        "RELEASE_CHECK_URL": None,
        "TIME_ZONE": "UTC",
        "LOGGING": {
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {"console": {"class": "logging.StreamHandler"}},
            "root": {"handlers": ["console"], "level": "WARNING"},
            # Every refused token would log a "Forbidden" warning line.
            "loggers": {"django.request": {"handlers": ["console"], "level": "ERROR", "propagate": False}},
        },
    }
    lines = ["# Rendered by `streams dev netbox` (streams/dev/netbox_home.py) at every start.", ""]
    lines += [f"{name} = {value!r}" for name, value in config.items()]
    write_private(root / "conf" / "configuration.py", "\n".join(lines) + "\n")
    wsgi = wsgi_dir(netbox_home)
    wsgi.mkdir(parents=True, exist_ok=True)
    (wsgi / "streams_netbox_wsgi.py").write_text(_WSGI)
    return root


def netbox_env(netbox_home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of NetBox processes: ours, minus anything that would point them elsewhere."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PYTHON", "NETBOX_", "DJANGO_", "STREAMS_")) and key != "VIRTUAL_ENV"}
    env.update({"NETBOX_ROOT": str(netbox_root(netbox_home)), "DJANGO_SETTINGS_MODULE": "netbox.settings",
                "PYTHONUNBUFFERED": "1"})
    env.update(extra or {})
    return env


def manage(installation: Installation, netbox_home: Path, args: list[str], *, what: str, timeout: float,
           extra_env: dict[str, str] | None = None) -> str:
    """Run `netbox ARGS` (Django's manage.py) in the NetBox virtualenv; one-line error with the tail."""
    return run_python(installation, netbox_home, ["-m", "netbox", *args], what=what, timeout=timeout,
                      extra_env=extra_env)


def run_python(installation: Installation, netbox_home: Path, args: list[str], *, what: str, timeout: float,
               extra_env: dict[str, str] | None = None) -> str:
    try:
        result = subprocess.run(
            [str(installation.python), *args], capture_output=True, text=True, timeout=timeout, check=False,
            env=netbox_env(netbox_home, extra_env), cwd=netbox_home,
        )
    except subprocess.TimeoutExpired as exc:
        raise DevServiceError(f"{what} did not finish within {timeout:.0f}s") from exc
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-12:]
        raise DevServiceError(f"{what} failed:\n" + "\n".join(tail))
    return result.stdout
