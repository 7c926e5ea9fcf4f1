"""First start (admin password printed once), idempotence, and the `lookout users|clients` commands."""

import io
import json
import logging
import re

import pytest
import yaml
from starlette.testclient import TestClient

from auth_fixtures import make_args
from cli import main
from gateway.app import create_app
from gateway.auth.bootstrap import bootstrap
from gateway.auth.store import AuthStore
from gateway.context import GatewayContext


def boot_logs(args, caplog) -> str:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lookout.auth"):
        bootstrap(args)
    return caplog.text


def test_first_start_prints_a_random_admin_password_once(redis_server, tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("LOOKOUT_ADMIN_PASSWORD", raising=False)
    args = make_args(redis_server.url, tmp_path)
    first = boot_logs(args, caplog)
    m = re.search(r"created admin user 'admin' with password (\S+)\s+\(shown only this once", first)
    assert m, first
    password = m.group(1)
    assert len(password) >= 20
    again = boot_logs(args, caplog)
    assert password not in again and "created admin" not in again  # idempotent: never printed again
    assert [u.username for u in AuthStore(tmp_path / "auth.sqlite3").list_users()] == ["admin"]
    # The printed password works on the real login page.
    client = TestClient(
        create_app(GatewayContext.from_args(args)),
        base_url="http://127.0.0.1:8000",
        client=("127.0.0.1", 50000),
        follow_redirects=False,
    )
    page = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    r = client.post("/login", data={"csrf": csrf, "next": "/", "username": "admin", "password": password})
    assert r.status_code == 303


def test_admin_password_from_env_or_config_is_never_logged(redis_server, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("LOOKOUT_ADMIN_PASSWORD", "from-the-environment")
    logs = boot_logs(make_args(redis_server.url, tmp_path / "env"), caplog)
    assert "with the configured password" in logs and "from-the-environment" not in logs
    assert AuthStore(tmp_path / "env" / "auth.sqlite3").authenticate("admin", "from-the-environment")
    monkeypatch.delenv("LOOKOUT_ADMIN_PASSWORD")
    (tmp_path / "cfg").mkdir()
    args = make_args(redis_server.url, tmp_path / "cfg", admin_password="from-the-config-file", admin_username="boss")
    logs = boot_logs(args, caplog)
    assert "'boss'" in logs and "from-the-config-file" not in logs
    assert AuthStore(tmp_path / "cfg" / "auth.sqlite3").authenticate("boss", "from-the-config-file")


def test_users_commands(tmp_path, monkeypatch, capsys):
    db = str(tmp_path / "auth.sqlite3")
    monkeypatch.setattr("sys.stdin", io.StringIO("bobs-password-123\n"))
    assert main(["users", "add", "bob", "--cameras", "door,yard", "--password-stdin", "--db", db]) == 0
    assert "added user bob (viewer): camera:door:view camera:yard:view detections:read" in capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # not a terminal, no --password-stdin: random, shown once
    assert main(["users", "add", "root", "--role", "admin", "--db", db]) == 0
    out = capsys.readouterr().out
    root_pw = re.search(r"password: (\S+)  \(shown only this once\)", out).group(1)
    assert AuthStore(db).authenticate("root", root_pw).role == "admin"
    assert main(["users", "list", "--json", "--db", db]) == 0
    users = {u["username"]: u for u in json.loads(capsys.readouterr().out)}
    assert users["bob"]["scopes"] == ["camera:door:view", "camera:yard:view", "detections:read"]
    assert users["root"]["role"] == "admin"
    monkeypatch.setattr("sys.stdin", io.StringIO("a-new-password-456\n"))
    assert main(["users", "passwd", "bob", "--password-stdin", "--db", db]) == 0
    assert AuthStore(db).authenticate("bob", "a-new-password-456")
    assert main(["users", "remove", "bob", "--db", db]) == 0
    assert main(["users", "remove", "bob", "--db", db]) == 2
    assert "lookout users: no user 'bob'" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["users", "add", "eve", "--password-stdin", "--db", db]) == 2
    assert "at least 10 characters" in capsys.readouterr().err
    assert main(["users", "add", "eve", "--cameras", "Bad Cam", "--db", db]) == 2
    assert "unknown scope 'camera:Bad Cam:view'" in capsys.readouterr().err


def test_clients_commands_and_the_secret_works(redis_server, tmp_path, monkeypatch, capsys):
    args = make_args(redis_server.url, tmp_path)
    ctx = GatewayContext.from_args(args)
    db = str(tmp_path / "auth.sqlite3")
    assert main(["clients", "add", "nvr", "--cameras", "a", "--db", db]) == 0
    out = capsys.readouterr().out
    client_id = re.search(r"client_id: (\S+)", out).group(1)
    secret = re.search(r"client_secret: (\S+)  \(shown only this once\)", out).group(1)
    assert "grants: client_credentials; scopes: camera:a:view detections:read" in out
    client = TestClient(create_app(ctx), base_url="http://127.0.0.1:8000", client=("127.0.0.1", 50000))
    tok = client.post("/oauth/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret)).json()
    assert tok["scope"] == "camera:a:view detections:read"
    assert (
        main(
            [
                "clients",
                "add",
                "app",
                "--public",
                "--redirect-uri",
                "https://app.example/cb",
                "--client-id",
                "my-app",
                "--db",
                db,
            ]
        )
        == 0
    )
    assert "client_secret" not in capsys.readouterr().out
    assert main(["clients", "list", "--json", "--db", db]) == 0
    listed = {c["client_id"]: c for c in json.loads(capsys.readouterr().out)}
    assert listed["my-app"]["public"] and listed["my-app"]["redirect_uris"] == ["https://app.example/cb"]
    assert not listed[client_id]["public"] and "lookout-web" in listed
    assert main(["clients", "add", "bad", "--public", "--redirect-uri", "http://evil.example/cb", "--db", db]) == 2
    assert "redirect URI must be an absolute https URL" in capsys.readouterr().err
    assert main(["clients", "remove", "lookout-web", "--db", db]) == 2
    assert main(["clients", "remove", client_id, "--db", db]) == 0
    r = client.post("/oauth/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret))
    assert r.status_code == 401


def test_cli_reads_the_db_path_from_the_config(tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "serve_config.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "applications": [
                    {
                        "import_path": "deployments.app:build_app",
                        "args": {
                            "cameras": [{"id": "a", "source": "a.avi"}],
                            "model": {"onnx": "m.onnx"},
                            "base_dir": str(tmp_path),
                            "gateway": {"auth": {"db_path": "state/users.db"}},
                        },
                    }
                ]
            }
        )
    )
    monkeypatch.setattr("sys.stdin", io.StringIO("carols-password-1\n"))
    assert main(["users", "add", "carol", "--password-stdin", "--config", str(cfg)]) == 0
    assert AuthStore(tmp_path / "state" / "users.db").get_user("carol") is not None


@pytest.mark.parametrize("argv", [["users"], ["clients"], ["users", "add"]])
def test_cli_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
