"""Configuration (serving/config.py): one definition, flags > APRON_* variables > defaults."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from serving.config import ServingConfig, add_arguments, env_name


def parse(argv: list[str], environ: dict[str, str]) -> ServingConfig:
    parser = argparse.ArgumentParser()
    add_arguments(parser, environ)
    return ServingConfig.from_args(parser.parse_args(argv))


def test_precedence_flag_over_env_over_default() -> None:
    env = {"APRON_PORT": "6000", "APRON_BACKEND": "triton", "APRON_REDIS_AOF": "false", "APRON_MAX_BATCH_WAIT_MS": "0.5"}
    config = parse([], env)
    assert (config.port, config.backend, config.redis_aof, config.max_batch_wait_ms) == (6000, "triton", False, 0.5)
    config = parse(["--port", "7000", "--redis-aof", "--backend", "onnxruntime"], env)
    assert (config.port, config.backend, config.redis_aof) == (7000, "onnxruntime", True)
    assert parse([], {}) == ServingConfig()


def test_logs_are_plain_text_unless_json_is_asked_for() -> None:
    """A person at a terminal reads the banner (stdout) between log lines (stderr): both plain text;
    a log pipeline asks for json (deploy/ sets APRON_LOG_FORMAT=json)."""
    assert parse([], {}).log_format == "text"
    assert parse([], {"APRON_LOG_FORMAT": "json"}).log_format == "json"
    assert parse(["--log-format", "json"], {}).log_format == "json"


def test_every_field_has_flag_env_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="apron serve")
    add_arguments(parser, {})
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for field in dataclasses.fields(ServingConfig):
        assert "--" + field.name.replace("_", "-") in text
        assert env_name(field.name) in text
        assert field.metadata["help"].split()[0] in text


def test_bad_values_are_named() -> None:
    with pytest.raises(ValueError, match="APRON_PORT='http'"):
        ServingConfig.from_env({"APRON_PORT": "http"})
    with pytest.raises(ValueError, match="backend must be one of onnxruntime, triton"):
        ServingConfig.from_env({"APRON_BACKEND": "tensorflow"})
    with pytest.raises(ValueError, match="max_batch_size must be at least 1"):
        ServingConfig(max_batch_size=0)
    with pytest.raises(ValueError, match="inline_min_batch must be at least 1"):
        ServingConfig(inline_min_batch=0)
    assert ServingConfig.from_env({"APRON_INLINE_MIN_BATCH": "1"}).batching.inline_min_batch == 1  # the old policy
    for name in ("request_timeout_s", "redis_timeout_s"):  # 0 s: every call that awaits anything would time out
        with pytest.raises(ValueError, match=f"{name} must be above 0, got 0"):
            ServingConfig(**{name: 0.0})
    parser = argparse.ArgumentParser()
    with pytest.raises(SystemExit):
        add_arguments(parser, {"APRON_REDIS_AOF": "maybe"})


@pytest.mark.parametrize("variable", ["APRON_JWT_MAX_LIFETIME_S", "APRON_REQUEST_TIMEOUT_S", "APRON_SHUTDOWN_GRACE_S", "APRON_EDIT_RATE"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_setting_that_is_no_number_is_refused(variable: str, value: str) -> None:
    """NaN passes every range check (each comparison is False): `nan` would switch a limit off,
    e.g. the longest token lifetime the gateway accepts."""
    with pytest.raises(ValueError, match="must be a finite number"):
        ServingConfig.from_env({variable: value})


@pytest.mark.parametrize("ttl", ["nan", "inf", "0", "-5"])
def test_a_token_ttl_that_is_no_positive_number_is_refused(ttl: str, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    import cli

    secret = tmp_path / "secret"
    secret.write_text("x" * 64)
    assert cli.main(["token", "--sub", "someone", "--secret-file", str(secret), "--ttl", ttl]) == 2
    assert "--ttl must be a positive number of seconds" in capsys.readouterr().err


@pytest.mark.parametrize("sub", ["", "   "])
def test_a_token_for_no_one_is_refused(sub: str, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    import cli

    secret = tmp_path / "secret"
    secret.write_text("x" * 64)
    assert cli.main(["token", "--sub", sub, "--secret-file", str(secret)]) == 2
    assert "--sub must name the user" in capsys.readouterr().err


def test_batch_settings_that_cannot_hold_together_are_named() -> None:
    from types import SimpleNamespace

    from serving.server import batch_settings_warnings

    exported = SimpleNamespace(triton_max_batch_size=16)
    assert batch_settings_warnings(ServingConfig(max_batch_size=16), exported) == []
    assert batch_settings_warnings(ServingConfig(), SimpleNamespace(triton_max_batch_size=0)) == []  # unknown: nothing to say
    (line,) = batch_settings_warnings(ServingConfig(max_batch_size=32), exported)
    assert "--max-batch-size 32" in line and "export with --max-batch-size 32" in line
    lines = batch_settings_warnings(ServingConfig(max_batch_size=8, max_concurrent_rpcs=4, max_queue=4), exported)
    assert len(lines) == 2 and "--max-concurrent-rpcs 4" in lines[0] and "--max-queue 4" in lines[1]
    (line,) = batch_settings_warnings(ServingConfig(backend="triton", max_concurrent_rpcs=8, max_batch_size=8), exported)
    assert "Triton's max_batch_size 16" in line


def test_every_field_is_in_exactly_one_section_and_sections_read_the_config() -> None:
    import collections

    from serving.config import SECTIONS

    counts = collections.Counter(f.name for kind in SECTIONS.values() for f in dataclasses.fields(kind))
    fields = {f.name for f in dataclasses.fields(ServingConfig)}
    assert set(counts) == fields, f"in no section: {fields - set(counts)}; not a field: {set(counts) - fields}"
    assert [name for name, n in counts.items() if n > 1] == []
    config = ServingConfig(port=0, max_batch_size=7, jwt_issuer="corp", backend="torch", redis_dir="", model_version=3)
    assert (config.server.port, config.batching.max_batch_size, config.security.jwt_issuer) == (0, 7, "corp")
    assert (config.inference.backend, config.store.redis_dir, config.model.model_version) == ("torch", "", 3)
    assert dataclasses.replace(config, port=5).server.port == 5  # a replaced config has its own sections


def test_the_gc_threshold_must_be_at_least_one_and_at_most_a_million() -> None:
    assert ServingConfig().server.gc_gen0_threshold == 10_000  # Python's own is 700
    # 0 would turn the collector off (cycles never freed); 2**31 is past gc.set_threshold's C int
    for bad in (0, -5, 1_000_001, 2**31):
        with pytest.raises(ValueError, match=r"gc_gen0_threshold must be at least 1 and at most 1,000,000"):
            ServingConfig(gc_gen0_threshold=bad)


def test_the_gil_switch_interval_must_be_positive_and_at_most_a_second() -> None:
    assert ServingConfig().server.gil_switch_interval_ms == 5.0  # Python's own
    for bad in (0.0, -1.0, 1001.0):
        with pytest.raises(ValueError, match=r"gil_switch_interval_ms must be above 0 and at most 1000 \(Python's own is 5\)"):
            ServingConfig(gil_switch_interval_ms=bad)


def test_a_setting_the_backend_never_reads_is_named_at_startup(tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    from serving import runtime
    from serving.config import ignored_settings

    assert ignored_settings(parse([], {})) == []  # defaults say nothing
    assert ignored_settings(parse(["--backend", "triton", "--triton-url", "triton:8001", "--ort-device", "cuda"], {})) == [
        "--ort-device (APRON_ORT_DEVICE) is 'cuda', but --backend triton never reads it"
    ]
    assert ignored_settings(parse(["--backend", "triton", "--triton-fallback", "--ort-device", "cuda"], {})) == []
    config = parse(["--repository", str(tmp_path / "none"), "--device", "cuda"], {"APRON_TRITON_URL": "triton:8001"})
    with pytest.raises(ValueError, match="apron_metadata.json does not exist"), caplog.at_level("WARNING", logger="apron.gateway"):
        runtime.serve(config)  # no model there: what matters is what came before
    assert [r.getMessage() for r in caplog.records if r.name == "apron.gateway"] == [
        "--triton-url (APRON_TRITON_URL) is 'triton:8001', but --backend onnxruntime never reads it",
        "--device (APRON_DEVICE) is 'cuda', but --backend onnxruntime never reads it",
    ]
