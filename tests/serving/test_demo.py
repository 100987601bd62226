"""The demo path of `apron serve` (export/demo.py, built by serving/cli.py): with no model in the repository, train a small
APRON on synthetic data, export it, and serve it."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from export.demo import lastfm_copy
from serving.proto_gen.apron.v1 import recommender_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]


def apron_executable() -> list[str]:
    """The installed `apron` script beside this interpreter (what `make serve` runs), else cli.py."""
    script = Path(sys.executable).parent / "apron"
    return [str(script)] if script.is_file() else [sys.executable, str(ROOT / "cli.py")]


def item_ids(listing: str) -> list[str]:
    return re.findall(r"^\s+\d+\. (\S+) ", listing, flags=re.MULTILINE)


def profile_shares(listing: str) -> dict[str, float]:
    rows = re.findall(r"^  (.+?)\s+([\d.]+)%  \(", listing, flags=re.MULTILINE)
    return {name.strip(): float(share) for name, share in rows}


def test_readme_first_command_on_an_empty_directory(tmp_path: Path) -> None:
    """`apron serve` with nothing there (the README's `make serve`): builds the demo model (from
    Last.fm 2K when ../shared/data has it, else synthetic), starts its own Redis, and prints try-it
    lines; each `apron client` line runs exactly as printed, and the edit changes the next list."""
    apron = apron_executable()
    process = subprocess.Popen(
        [*apron, "serve", "--port", "0", "--metrics-port", "0"],
        cwd=tmp_path, env={**os.environ, "APRON_LOG_FORMAT": "text"},
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        output, deadline = "", time.monotonic() + 540
        while "stop with Ctrl-C" not in output and time.monotonic() < deadline and process.poll() is None:
            output += process.stdout.readline()
        assert re.search(r"APRON gateway on 127\.0\.0\.1:\d+ \(model version 1", output), output
        assert (tmp_path / "model_repository" / "apron_metadata.json").is_file()
        metadata = json.loads((tmp_path / "model_repository" / "apron_metadata.json").read_text())
        if lastfm_copy() is not None:  # auto picks the real data when it is on the machine
            assert metadata["dataset_name"] == "lastfm-2k" and "jazz" in metadata["tag_names"]
            assert "Radiohead" in metadata["item_names"]

        lines = [line.strip() for line in output.split("try it:\n", 1)[1].splitlines() if line.startswith("  ")]
        client_lines = [line for line in lines if line.startswith(shlex.join(apron[-1:]) + " client") or line.startswith("apron client")]
        assert len(client_lines) == 4, lines
        results = []
        for line in client_lines:
            argv = shlex.split(line)
            argv = [*apron, *argv[1:]] if argv[0] == "apron" else argv  # started as cli.py: `apron` is the script
            result = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120)
            assert result.returncode == 0, f"{line}\n{result.stderr}"
            results.append(result.stdout)
        prototypes, before, edit, after = results
        tag = re.search(r"--scale (.+)=0$", client_lines[2]).group(1)
        tag = shlex.split(tag)[0]
        assert tag in metadata["tag_names"] and f"  {tag} " in prototypes
        assert len(item_ids(before)) == 10 and len(item_ids(after)) == 10
        assert profile_shares(before)[tag] > 0 and profile_shares(after).get(tag, 0.0) == 0.0  # the edit removed it ...
        assert item_ids(after) != item_ids(before)  # ... and the very next list changed
        assert f"stored edits: {tag}: scale 0" in edit

        (grpcurl_line,) = [line for line in lines if line.startswith("grpcurl")]
        check_grpcurl_line(grpcurl_line, client_lines[0].split("--target ")[1].split()[0], tmp_path)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def check_grpcurl_line(line: str, address: str, cwd: Path) -> None:
    """The printed grpcurl call carries a bearer token the gateway accepts: run by grpcurl when it
    is installed, else the same call with the same header from Python."""
    match = re.fullmatch(
        r"grpcurl -plaintext -H \"authorization: Bearer ([\w.-]+)\" -d '(\{.*\})' (\S+) apron\.v1\.Recommender/Recommend", line
    )
    assert match, line
    token, body, target = match.groups()
    assert target == address and json.loads(body) == {"user_id": "alice", "k": 5}
    if shutil.which("grpcurl"):
        result = subprocess.run(shlex.split(line), cwd=cwd, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert len(json.loads(result.stdout)["items"]) == 5
        return
    import grpc

    from serving.proto_gen.apron.v1 import recommender_pb2_grpc as pb_grpc

    with grpc.insecure_channel(target) as channel:
        response = pb_grpc.RecommenderStub(channel).Recommend(
            pb.RecommendRequest(user_id="alice", k=5), metadata=(("authorization", f"Bearer {token}"),), timeout=30
        )
    assert len(response.items) == 5


def test_try_it_lines_without_a_development_token_or_auth() -> None:
    from serving.cli import try_it_lines

    tags, items = ["female vocalists", "80s", "jazz"], ["1", "2", "3"]
    with_key = try_it_lines("10.0.0.5:50051", tags, items, None, auth=True)
    assert with_key[2] == "apron client --target 10.0.0.5:50051 edit --user alice --scale 'female vocalists'=0"
    assert shlex.split(with_key[2])[-1] == "female vocalists=0"  # one shell word, as the client parses it
    assert '-H "authorization: Bearer $APRON_TOKEN"' in with_key[4]  # the client reads APRON_TOKEN itself
    assert "authorization" not in try_it_lines("h:1", tags, items, None, auth=False)[4]



def test_try_it_lines_speak_tls_when_the_gateway_does() -> None:
    from serving.cli import try_it_lines

    tags, items = ["rock", "80s", "jazz"], ["1", "2", "3"]
    lines = try_it_lines("gw:50051", tags, items, None, auth=True, tls=True)
    assert all('--tls-ca "$APRON_TLS_CA"' in line for line in lines[:4]), lines
    assert lines[4].startswith('grpcurl -cacert "$APRON_TLS_CA" ') and "-plaintext" not in lines[4]
    assert all("--tls-ca" not in line for line in try_it_lines("gw:1", tags, items, None, auth=True))
