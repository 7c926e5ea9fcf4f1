import pytest
import yaml

from pipeline.config_file import load_app_args
from pipeline.config import ConfigError, parse_args

BASE = {"cameras": [{"id": "demo", "source": "clip.avi"}], "model": {"onnx": "m.onnx"}}


def with_(**over):
    d = {**BASE, **over}
    return d


def test_shipped_serve_config_is_valid():
    args = parse_args(load_app_args("serve_config.yaml"))
    assert args.cameras[0].id == "demo" and args.cameras[0].kind == "file"
    assert args.model.input_size_px == 416


def test_source_kind_is_inferred():
    args = parse_args(
        with_(
            cameras=[
                {"id": "a", "source": "rtsp://u:p@10.0.0.1/s"},
                {"id": "b", "source": "/dev/video0"},
                {"id": "c", "source": "csi://0"},
                {"id": "d", "source": "x.mp4"},
            ]
        )
    )
    assert [c.kind for c in args.cameras] == ["rtsp", "v4l2", "csi", "file"]


@pytest.mark.parametrize(
    "raw, field, value",
    [
        (with_(cameras=[{"id": "Bad Id!", "source": "x"}]), "cameras.0.id", "'Bad Id!'"),
        (with_(cameras=[{"id": "a", "source": "x", "fps": -3}]), "cameras.0.fps", "-3"),
        (with_(cameras=[{"id": "a", "source": "x", "colour": "red"}]), "cameras.0.colour", "'red'"),
        (with_(model={"onnx": "m.onnx", "input_size_px": 417}), "model.input_size_px", "417"),
        (with_(model={"onnx": "m.onnx", "conf_threshold": 1.5}), "model.conf_threshold", "1.5"),
        (with_(hls={"encoder": "vp9"}), "hls.encoder", "'vp9'"),
        (with_(detector={"max_batch_size": 0}), "detector.max_batch_size", "0"),
        (with_(record={"mode": "always"}), "record.mode", "'always'"),
        (with_(record={"retain_dayz": 3}), "record.retain_dayz", "3"),
        (
            with_(cameras=[{"id": "a", "source": "x", "record": {"retain_days": -2}}]),
            "cameras.0.record.retain_days",
            "-2",
        ),
        (
            with_(cameras=[{"id": "a", "source": "x", "motion": {"keepalive_s": -1}}]),
            "cameras.0.motion.keepalive_s",
            "-1",
        ),
    ],
)
def test_errors_name_field_and_value(raw, field, value):
    with pytest.raises(ConfigError) as info:
        parse_args(raw)
    msg = str(info.value)
    assert field in msg and f"got {value}" in msg


def test_record_section_applies_each_cameras_changes():
    args = parse_args(
        with_(
            record={"enabled": True, "retain_days": 7},
            cameras=[
                {"id": "a", "source": "x", "record": {"retain_days": 2, "mode": "motion"}},
                {"id": "b", "source": "y", "record": {"enabled": False}},
            ],
        )
    )
    a, b = (args.record.for_camera(c) for c in args.cameras)
    assert (a.enabled, a.mode, a.retain_days) == (True, "motion", 2.0)
    assert (b.enabled, b.mode, b.retain_days) == (False, "continuous", 7.0)
    assert args.for_group(["a"]).record == args.record  # the worker gets the section; overrides ride on cameras
    with pytest.raises(ConfigError, match=r"record: store is 's3' but s3 \(endpoint_url"):
        parse_args(with_(record={"enabled": True, "store": "s3"}))


def test_tracked_interval_reaches_the_camera_worker_with_the_tracker_settings():
    args = parse_args(
        with_(
            cameras=[{"id": "a", "source": "x", "motion": {"tracked_interval_s": 0.6}}],
            tracking={"min_hits": 2},
        )
    )
    group = args.for_group(["a"])
    assert group.cameras[0].motion.tracked_interval_s == 0.6 and group.tracking.min_hits == 2
    with pytest.raises(ConfigError) as info:
        parse_args(with_(cameras=[{"id": "a", "source": "x", "motion": {"tracked_interval_s": -1}}]))
    assert "cameras.0.motion.tracked_interval_s" in str(info.value) and "got -1" in str(info.value)


def test_duplicate_camera_ids_and_missing_model():
    with pytest.raises(ConfigError, match="camera id 'a' appears more than once"):
        parse_args(with_(cameras=[{"id": "a", "source": "x"}, {"id": "a", "source": "y"}]))
    with pytest.raises(ConfigError, match="model needs `onnx`, or both `cfg` and `weights`"):
        parse_args(with_(model={"cfg": "x.cfg"}))


def test_check_command_reports_bad_config(tmp_path, capsys):
    from cli import main

    cfg = tmp_path / "serve_config.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {"applications": [{"import_path": "deployments.app:build_app", "args": with_(hls={"segment_s": 99})}]}
        )
    )
    assert main(["check", str(cfg)]) == 2
    assert "hls.segment_s" in capsys.readouterr().err


# -- readable errors (issue 13, item 16) ------------------------------------------------------------
def write_config(path, args=None, **app):
    path.write_text(
        yaml.safe_dump(
            {
                "applications": [
                    {"import_path": "deployments.app:build_app", **({"args": args} if args is not None else {}), **app}
                ]
            }
        )
    )
    return path


def test_yaml_syntax_error_is_one_line_with_file_line_and_column(tmp_path, capsys):
    from cli import main

    cfg = tmp_path / "serve_config.yaml"
    cfg.write_text(
        "applications:\n  - import_path: deployments.app:build_app\n    args:\n"
        "      cameras: [{id: a, source: x.avi}\n      model: {onnx: m.onnx}\n"
    )
    assert main(["check", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith(f"{cfg}:5:") and "YAML syntax error" in err


def test_misspelled_serve_key_is_named_unknown_with_the_nearest_name(tmp_path, capsys):
    from cli import main

    cfg = write_config(tmp_path / "serve_config.yaml", argz=BASE)
    assert main(["check", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "applications.0.argz: unknown field; did you mean 'args'?" in err
    assert "required" not in err  # not the follow-on "cameras: missing" of an app without args


def test_unknown_field_suggests_the_nearest_name_and_shows_the_value_once():
    with pytest.raises(ConfigError) as info:
        parse_args(with_(model={"onnx": "m.onnx", "conf_treshold": 0.2}))
    assert "model.conf_treshold: unknown field (got 0.2); did you mean 'conf_threshold'?" in str(info.value)
    with pytest.raises(ConfigError) as info:  # inside a tagged union (rules) too
        parse_args(with_(rules=[{"kind": "count_above", "id": "r", "label": "person", "count": 1, "fro_s": 2}]))
    assert "did you mean 'for_s'?" in str(info.value)


def test_errors_show_the_received_value_once_and_never_a_whole_section():
    with pytest.raises(ConfigError) as info:
        parse_args(with_(cameras=[{"id": "Bad Id!", "source": "x"}]))
    assert str(info.value).count("'Bad Id!'") == 1
    with pytest.raises(ConfigError) as info:  # a model-level check: its section is not dumped
        parse_args(with_(model={"cfg": "x.cfg", "name": "a-model-name-long-enough-to-be-cut"}))
    msg = str(info.value)
    assert "model: model needs `onnx`" in msg and "{" not in msg and "a-model-name" not in msg
    with pytest.raises(ConfigError) as info:
        parse_args({"cameras": [{"id": "a", "source": "x"}]})
    assert "model: required field is missing" in str(info.value) and "(got" not in str(info.value)


# -- file cameras: `serve run` refuses what `lookout check` refuses (issue 13, item 10) ----------------
def test_build_app_refuses_a_missing_file_camera_with_the_check_message(tmp_path, capsys):
    from cli import main
    from deployments.app import build_app

    args = with_(cameras=[{"id": "demo", "source": "nope.avi"}])
    cfg = write_config(tmp_path / "serve_config.yaml", args)
    assert main(["check", str(cfg)]) == 2
    expected = f"cameras[demo].source: file not found: {tmp_path / 'nope.avi'}"
    assert expected in capsys.readouterr().err
    with pytest.raises(ConfigError) as info:
        build_app(load_app_args(str(cfg)))
    assert expected in str(info.value)
    (tmp_path / "nope.avi").write_bytes(b"")
    assert main(["check", str(cfg)]) == 0
    build_app(load_app_args(str(cfg)))


# -- relative paths (issue 13, item 17) -------------------------------------------------------------
def test_relative_paths_resolve_against_the_config_files_folder(tmp_path, monkeypatch, capsys):
    from cli import main

    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "clips").mkdir()
    (folder / "clips" / "door.avi").write_bytes(b"")
    cfg = write_config(folder / "serve_config.yaml", with_(cameras=[{"id": "door", "source": "clips/door.avi"}]))
    monkeypatch.chdir(tmp_path)  # not the config's folder
    assert main(["check", str(cfg.relative_to(tmp_path))]) == 0, capsys.readouterr().err
    args = parse_args(load_app_args(str(cfg.relative_to(tmp_path))))
    assert args.resolve_path("data/x.sqlite3") == str(folder / "data" / "x.sqlite3")
    cfg = write_config(folder / "serve_config.yaml", {**BASE, "base_dir": "sub"})  # relative base_dir: from there
    assert parse_args(load_app_args(str(cfg))).resolve_path("m.onnx") == str(folder / "sub" / "m.onnx")


# -- each stage is bound only what it needs (issue 13, item 8) ----------------------------------------
def test_build_app_binds_each_stage_only_its_config_and_no_secret(tmp_path):
    from ray import cloudpickle
    from ray.serve._private.build_app import build_app as serve_build

    from deployments.app import build_app

    for name in ("a.avi", "b.avi"):
        (tmp_path / name).write_bytes(b"")
    admin_pw, oidc_secret = "admin-pw-4f9c2e", "oidc-secret-8d1a7b"
    args = {
        "cameras": [{"id": "a", "source": "a.avi"}, {"id": "b", "source": "rtsp://u:cam-b-pass@10.0.0.2/s"}],
        "model": {"onnx": "m.onnx"},
        "base_dir": str(tmp_path),
        "hls": {"boxes": "burned"},  # worker groups:
        # tests/test_camera_groups.py
        "gateway": {
            "public_url": "https://lookout.example",
            "auth": {
                "admin_password": admin_pw,
                "oidc": {"issuer": "https://idp.example", "client_id": "lookout", "client_secret": oidc_secret},
            },
        },
    }
    built = serve_build(build_app(args), name="lookout")
    bound = {d.name: d for d in built.deployments}

    def pickled(name: str) -> bytes:
        return cloudpickle.dumps(bound[name].init_args)

    assert admin_pw.encode() in pickled("gateway") and oidc_secret.encode() in pickled("gateway")
    for name in ("detector", "events", "ingest-a", "encoder-a", "ingest-b", "encoder-b"):
        data = pickled(name)
        assert admin_pw.encode() not in data and oidc_secret.encode() not in data, name
        env = bound[name].ray_actor_options["runtime_env"]["env_vars"]
        assert env["LOOKOUT_ADMIN_PASSWORD"] == "" and env["LOOKOUT_OIDC_CLIENT_SECRET"] == "", name
    for cam, other in (("a", b"cam-b-pass"), ("b", b"a.avi")):
        for stage in ("ingest", "encoder"):
            stage_args = bound[f"{stage}-{cam}"].init_args[0]
            assert stage_args.camera.id == cam and not hasattr(stage_args, "gateway")
            assert other not in pickled(f"{stage}-{cam}")
    assert "runtime_env" not in (bound["gateway"].ray_actor_options or {})


# -- 422 bodies of the query API (issue 13, item 16) -------------------------------------------------
def query_error(query: bytes) -> dict:
    import json

    from starlette.requests import Request

    from gateway.api.query import BadParam, parse_query
    from pipeline.history import CountsQuery

    request = Request({"type": "http", "method": "GET", "path": "/", "headers": [], "query_string": query})
    with pytest.raises(BadParam) as info:
        parse_query(CountsQuery, request, fixed={"camera_id": "demo"})
    response = info.value.response()
    assert response.status_code == 422
    return json.loads(response.body)


def test_422_names_the_missing_field_without_a_dict_repr():
    body = query_error(b"until_s=1700000000&label=person-with-a-rather-long-label")
    assert body == {"error": "invalid parameter", "field": "since_s", "detail": "is required"}
    body = query_error(b"since_s=1700000000&until_s=1700000100&intervall=hour")
    assert body == {
        "error": "invalid parameter",
        "field": "intervall",
        "detail": "unknown parameter; did you mean 'interval'?",
    }
    body = query_error(b"since_s=1700000000&until_s=1700000100&interval=" + b"week" * 40)
    assert body["field"] == "interval" and body["value"].endswith("…") and len(body["value"]) == 100
