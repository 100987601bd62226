"""`apron serve` (the gateway) and `apron client recommend|edit|profile|prototypes` (try it by hand)."""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.errors import UserFacingError

if TYPE_CHECKING:
    from serving.resources import Serving

# Mistakes in the setup that `apron serve` reports in one line (exit 2) rather than a traceback.
STARTUP_ERRORS: tuple[type[Exception], ...] = (ValueError, FileNotFoundError, OSError, RuntimeError)


# ----------------------------------------------------------------------------- serve


# each command's one-line help: also `apron --help`'s overview, which builds no command's parser
HELP = {
    "serve": "run the gRPC recommendation gateway (apron.v1.Recommender)",
    "client": "call a running gateway: recommend, edit, profile, prototypes",
    "token": "mint a signed bearer token (JWT) for the gateway",
}


def _add_serve(subparsers: argparse._SubParsersAction) -> None:
    from serving.config import add_arguments

    parser = subparsers.add_parser(
        "serve",
        help=HELP["serve"],
        description=(
            "Run the gateway. With no flags: in-process ONNX Runtime, a private redis-server, and a demo "
            "model built into ./model_repository when it holds none. Every option below can also be set "
            "by its APRON_* environment variable."
        ),
    )
    add_arguments(parser)
    parser.set_defaults(func=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from serving.config import ServingConfig
    from serving.logs import configure_logging
    from serving.runtime import serve

    try:
        config = ServingConfig.from_args(args)
    except ValueError as error:
        raise UserFacingError(str(error)) from error
    configure_logging(config.log_level, config.log_format)
    from serving.auth import check_exposure

    try:
        check_exposure(config.security, config.host)  # before anything slow: development auth never leaves loopback
    except ValueError as error:
        raise UserFacingError(str(error)) from error
    if config.build_demo:
        _ensure_demo_model(config)
    try:
        serve(config, print_banner)
    except UserFacingError:
        raise
    except STARTUP_ERRORS as error:  # no model, redis-server missing, port taken, bad key file...
        raise UserFacingError(f"cannot start the gateway: {error}") from error
    return 0


def apron_command() -> str:
    """The `apron` command as this process was started (`.venv/bin/apron` under `make serve`), so
    the printed lines run as they are from the same directory; `apron` when started otherwise."""
    argv0 = sys.argv[0] if sys.argv else ""
    return shlex.quote(argv0) if Path(argv0).name == "apron" else "apron"


def try_it_lines(
    address: str,
    tag_names: list[str],
    prototype_item_ids: list[str],
    token: str | None,
    auth: bool,
    apron: str = "apron",
    tls: bool = False,
) -> list[str]:
    """Commands that work exactly as printed against the gateway at `address`: a list for a
    history of the three most used tags' prototype items, an edit that removes the first of
    those tags, and the list again, which the edit changes (tests/serving/test_demo.py runs them).
    `apron client` finds a token itself (APRON_TOKEN, else one minted from the development secret);
    grpcurl is given the development `token` when there is one, else $APRON_TOKEN. With `tls` the
    lines trust the CA in $APRON_TLS_CA (the gateway knows its certificate, not who signed it)."""
    history = " ".join(f"--history {item}" for item in prototype_item_ids[:3])
    tag = tag_names[0]
    tag_arg = shlex.quote(tag)  # "female vocalists" is one shell word
    header = ""
    if auth:
        header = f'-H "authorization: Bearer {token if token else "$APRON_TOKEN"}" '
    client = f"{apron} client --target {address}" + (' --tls-ca "$APRON_TLS_CA"' if tls else "")
    transport = '-cacert "$APRON_TLS_CA"' if tls else "-plaintext"
    return [
        f"{client} prototypes",
        f"{client} recommend --user alice {history} --k 10",
        f"{client} edit --user alice --scale {tag_arg}=0",
        f"{client} recommend --user alice --k 10",
        f"grpcurl {transport} {header}-d '{{\"user_id\": \"alice\", \"k\": 5}}' {address} apron.v1.Recommender/Recommend",
    ]


def http_lines(host: str, http_port: int | None, token: str | None, auth: bool, tls: bool) -> list[str]:
    """With --http-port: the same call over HTTP/JSON, the OpenAPI document and the control page."""
    if http_port is None:
        return []
    base = f"{'https' if tls else 'http'}://{host}:{http_port}"
    header = f'-H "authorization: Bearer {token if token else "$APRON_TOKEN"}" ' if auth else ""
    return [
        f"over HTTP/JSON (OpenAPI: {base}/v1/openapi.json):",
        f"  curl -s {header}-d '{{\"user_id\": \"alice\", \"k\": 5}}' {base}/apron.v1.Recommender/Recommend",
        f"control page (pick artists, drag a tag's share, watch the list change): {base}/",
    ]


def usage_hint(serving: Serving) -> str:
    """How to call the running gateway, with real ids from its catalog."""
    config = serving.config
    address = f"{config.host}:{serving.port}"
    metrics = f"http://{config.host}:{serving.metrics_port}/metrics" if serving.metrics_port else "off"
    tls = bool(config.tls_cert)
    lines = try_it_lines(address, serving.tag_names, serving.prototype_item_ids, serving.service_token, config.auth, apron_command(), tls)
    if tls:
        lines.insert(0, "export APRON_TLS_CA=<the PEM CA that signed --tls-cert>   # the gateway speaks TLS")
    return "\n".join(
        [
            f"APRON gateway on {address} (model version {serving.model_version}, {serving.backend} backend, "
            f"{len(serving.tag_names)} prototypes, {serving.n_items} items); metrics: {metrics}",
            "try it:",
            *(f"  {line}" for line in lines),
            *http_lines(config.host, serving.http_port, serving.service_token, config.auth, tls),
            "stop with Ctrl-C (in-flight calls are drained); roll out a newer exported version with SIGHUP",
        ]
    )


def print_banner(serving: Serving) -> None:
    """`apron serve`'s banner, once the gateway (every worker) serves."""
    print(usage_hint(serving), flush=True)
    if serving.worker_pids:
        print(f"worker pids: {' '.join(map(str, serving.worker_pids))}", flush=True)
    if serving.service_token:  # reliability: the quick start works with auth on
        print(f"development service token (any user; `apron token --sub USER` mints more):\n  {serving.service_token}", flush=True)


def _ensure_demo_model(config: Any) -> None:
    """With no model in the repository, build the demo model there. The builder (export/demo.py)
    trains with torch, so it is imported only here, only when needed: a gateway serving an
    exported model never loads the training stack."""
    from export.metadata import metadata_path

    if metadata_path(config.repository).is_file():
        return
    import logging

    try:
        from export.demo import DemoSettings, build_demo_repository
        from export.pipeline import ExportError
        from training.data.raw import DataError
    except ModuleNotFoundError as error:  # a gateway-only install (the `serve` extra)
        raise UserFacingError(
            f"no model in {config.repository}, and building the demo model needs the 'train' extra "
            f"(module {error.name} is missing): export a model there, or pip install 'apron-recsys[train]'"
        ) from error

    logging.getLogger("apron.gateway").info(
        "no model in %s: building the demo model (a minute or two, once)", config.repository
    )
    try:
        build_demo_repository(config.repository, DemoSettings(dataset=config.demo_dataset))
    except (ExportError, DataError) as error:
        raise UserFacingError(f"cannot build the demo model: {error}") from error


# ----------------------------------------------------------------------------- client


def _tag_values(pairs: list[str], flag: str) -> dict[str, float]:
    values = {}
    for pair in pairs:
        tag, sep, raw = pair.rpartition("=")
        try:
            if not sep or not tag:
                raise ValueError
            value = float(raw)
        except ValueError:
            raise UserFacingError(f"{flag} {pair!r}: expected TAG=NUMBER, e.g. {flag} jazz=0") from None
        if tag in values and values[tag] != value:  # the last one silently won before: say which is meant
            raise UserFacingError(f"{flag} {tag}: given twice ({values[tag]:g} and {value:g}); give it once")
        values[tag] = value
    return values


def _add_client(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("client", help=HELP["client"])
    parser.add_argument("--target", default=os.environ.get("APRON_TARGET", "127.0.0.1:50051"), help="gateway host:port [env APRON_TARGET]")
    parser.add_argument(
        "--token",
        default=os.environ.get("APRON_TOKEN", ""),
        help="bearer token [env APRON_TOKEN]; default: a service token signed with the local development secret, if any",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="call deadline in seconds")
    parser.add_argument("--json", action="store_true", help="print the raw response as JSON")
    parser.add_argument(
        "--tls-ca", default=os.environ.get("APRON_TLS_CA", ""),
        help="speak TLS, trusting this PEM CA (e.g. deploy/secrets/ca.crt) [env APRON_TLS_CA]",
    )  # fmt: skip
    parser.add_argument("--tls", action="store_true", help="speak TLS, trusting the system's CAs")
    parser.add_argument("--tls-client-cert", default="", help="PEM client certificate (mutual TLS; with --tls-client-key)")
    parser.add_argument("--tls-client-key", default="", help="PEM key of --tls-client-cert")
    commands = parser.add_subparsers(dest="client_command", required=True, metavar="CALL")

    recommend = commands.add_parser("recommend", help="top-k items for a user")
    recommend.add_argument("--user", required=True)
    recommend.add_argument("--history", action="append", default=[], metavar="ITEM_ID", help="a heard item (repeatable)")
    recommend.add_argument("--k", type=int, default=10)
    recommend.add_argument("--scale", action="append", default=[], metavar="TAG=S", help="one-off scale edit (repeatable)")
    recommend.add_argument("--weight", action="append", default=[], metavar="TAG=W", help="one-off share edit (repeatable)")
    recommend.add_argument("--include-heard", action="store_true", help="allow items of the history")
    recommend.add_argument(
        "--profile-view", choices=["all", "top", "none"], default="all",
        help="how much profile comes back: every prototype (default), the --profile-top-n largest shares, or none",
    )  # fmt: skip
    recommend.add_argument("--profile-top-n", type=int, default=5, metavar="N", help="with --profile-view top: how many (default 5)")

    edit = commands.add_parser("edit", help="store profile edits (or reset them)")
    edit.add_argument("--user", required=True)
    edit.add_argument("--scale", action="append", default=[], metavar="TAG=S", help="multiply a prototype's weight (0 removes it)")
    edit.add_argument("--weight", action="append", default=[], metavar="TAG=W", help="set a prototype's share in [0, 1]")
    edit.add_argument("--reset", action="store_true", help="delete the stored edits first")

    profile = commands.add_parser("profile", help="a user's profile with stored edits")
    profile.add_argument("--user", required=True)

    commands.add_parser("prototypes", help="the served model's prototypes (tags)")

    admin = commands.add_parser("admin", help="model rollout (a service token): status, load")
    admin_commands = admin.add_subparsers(dest="admin_command", required=True, metavar="ACTION")
    admin_commands.add_parser("status", help="the versions served, the repository's versions, the last rollout error")
    load = admin_commands.add_parser("load", help="roll out a version (loaded and warmed beside, then swapped), roll back with --pin")
    load.add_argument("--version", type=int, default=0, help="the primary version (0: the newest in the repository)")
    load.add_argument("--pin", action="store_true", help="keep it through SIGHUP and --watch-repository (a rollback)")
    load.add_argument("--candidate", type=int, default=0, help="A/B: a second version for --share of the users")
    load.add_argument("--share", type=float, default=0.0, help="A/B: the candidate's share of users, in (0, 1] (needed with --candidate)")
    parser.set_defaults(func=_run_client)


def _run_client(args: argparse.Namespace) -> int:
    import grpc
    from google.protobuf.json_format import MessageToJson

    from serving import tls
    from serving.client import ApronClient, development_token

    token = args.token or development_token()
    credentials = None
    if args.tls or args.tls_ca or args.tls_client_cert or args.tls_client_key:
        try:
            credentials = tls.channel_credentials(
                args.tls_ca or None, args.tls_client_cert or None, args.tls_client_key or None
            )
        except tls.TLSConfigError as error:
            raise UserFacingError(str(error)) from error
    with ApronClient(args.target, token=token, timeout_s=args.timeout, credentials=credentials) as client:
        try:
            if args.client_command == "recommend":
                from serving.client import make_edits

                edits = make_edits(_tag_values(args.scale, "--scale"), _tag_values(args.weight, "--weight"))
                top_n = args.profile_top_n if args.profile_view == "top" else 0
                response: Any = client.recommend(
                    args.user, args.k, args.history, edits, args.include_heard, args.profile_view, top_n
                )
            elif args.client_command == "edit":
                response = client.edit(
                    args.user, _tag_values(args.scale, "--scale"), _tag_values(args.weight, "--weight"), args.reset
                )
            elif args.client_command == "profile":
                response = client.profile(args.user)
            elif args.client_command == "admin" and args.admin_command == "load":
                response = client.load_model(args.version, args.pin, args.candidate, args.share)
            elif args.client_command == "admin":
                response = client.model_status()
            else:
                response = client.prototypes()
        except grpc.RpcError as error:
            raise UserFacingError(rpc_error_message(error.code().name, error.details() or "", args.target)) from None
    if args.json:
        print(MessageToJson(response, preserving_proto_field_name=True))
    else:
        print(format_response(args.client_command, response))
    return 0


# grpc's own words (lower case) when a call reached no server, as against a gateway's own UNAVAILABLE
# (whose details may well say "Connection refused": Redis's)
NOT_REACHED = ("failed to connect to all addresses", "connections to all backends failing", "errors resolving", "dns resolution failed")


def rpc_error_message(code: str, details: str, target: str) -> str:
    """A failed call as the client prints it: the status and its details, and when nothing answered
    at `target`, what to do about it."""
    message = f"{code}: {details}"
    if code == "UNAVAILABLE" and any(sign in details.lower() for sign in NOT_REACHED):
        message += (
            f"\nnothing answers at {target}: is `apron serve` running? Start it, or pass --target HOST:PORT "
            "(or set APRON_TARGET) to reach a gateway elsewhere"
        )
    return message


SHOWN_SHARE = 0.0005  # rows that would print as 0.0% both before and after edits are counted, not listed


def format_profile(profile: Any) -> list[str]:
    """The profile's rows by share; prototypes at 0.0% (a sharp model gives a short history only a
    few) are summarised in one line unless an edit names them."""
    lines = [f"profile (history of {profile.history_length} items): prototype  share  (before edits)  prototype item"]
    hidden = 0
    for w in sorted(profile.weights, key=lambda w: (-w.weight, -w.base_weight)):
        edit = w.edit.WhichOneof("change") if w.HasField("edit") else None
        if not edit and max(w.weight, w.base_weight) < SHOWN_SHARE:
            hidden += 1
            continue
        note = f"  [{edit} {getattr(w.edit, edit):g}]" if edit else ""
        lines.append(f"  {w.prototype:<24} {w.weight:6.1%}  ({w.base_weight:6.1%})  {w.prototype_item_id}{note}")
    if hidden:
        lines.append(f"  ... and {hidden} more prototypes at 0.0%")
    return lines


def format_response(command: str, response: Any) -> str:
    lines: list[str] = []
    if command == "recommend":
        source = "cached" if response.profile_from_cache else "computed"
        ignored = f", {response.ignored_history_items} unknown history ids ignored" if response.ignored_history_items else ""
        lines.append(f"model version {response.model_version}, profile {source}{ignored}")
        lines += [f"  {rank:3d}. {item.item_id:<20} {item.score:8.3f}  {item.name}" for rank, item in enumerate(response.items, 1)]
        lines += format_profile(response.profile) if response.HasField("profile") else ["profile not asked for (--profile-view none)"]
    elif command in ("edit", "profile"):
        stored = ", ".join(f"{e.prototype}: {e.WhichOneof('change')} {getattr(e, e.WhichOneof('change')):g}" for e in response.stored_edits)
        lines.append(f"model version {response.model_version}; stored edits: {stored or 'none'}")
        if response.HasField("profile"):
            lines += format_profile(response.profile)
        else:
            lines.append("no profile yet: the edits apply once a recommend call sends the user's history")
    elif command == "admin":
        serving = ", ".join(f"version {v.version} ({v.role}, {v.share:.0%} of users)" for v in response.serving)
        lines.append(f"serving {serving or 'nothing'}{' (pinned)' if response.pinned else ''} on {response.backend}")
        lines.append(f"repository versions: {', '.join(map(str, response.available_versions)) or 'none'}")
        if response.last_error:
            lines.append(f"last rollout failed: {response.last_error}")
    else:
        lines.append(f"model version {response.model_version}, k_max {response.k_max}; prototypes:")
        lines += [f"  {p.name:<24} {p.group:<15} {p.item_id:<20} {p.item_name}" for p in response.prototypes]
    if command in ("recommend", "edit", "profile") and response.unapplied_edits:
        lines.append(f"stored edits of prototypes this version lacks (kept, not applied): {', '.join(response.unapplied_edits)}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- token (reliability)


def _add_token(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "token",
        help=HELP["token"],
        description=(
            "Print a token for `--sub`. Signed with --private-key (RS256/ES256/EdDSA), else --secret-file "
            "(HS256), else the development secret that `apron serve` uses when no key is configured."
        ),
    )
    parser.add_argument("--sub", required=True, help="the user id (role user) or the service's name")
    parser.add_argument("--role", choices=["user", "service"], default="user", help="user: own profile only; service: any")
    parser.add_argument("--ttl", type=float, default=3600.0, help="seconds until it expires (default 3600)")
    parser.add_argument("--issuer", default=os.environ.get("APRON_JWT_ISSUER", "apron"), help="`iss` claim [env APRON_JWT_ISSUER]")
    parser.add_argument(
        "--secret-file", default=os.environ.get("APRON_JWT_SECRET_FILE", ""), help="HS256 secret [env APRON_JWT_SECRET_FILE]"
    )
    parser.add_argument("--private-key", default="", help="PEM private key whose public key the gateway has")
    parser.add_argument(
        "--audience", default=os.environ.get("APRON_JWT_AUDIENCE", ""), help="`aud` claim [env APRON_JWT_AUDIENCE]"
    )
    parser.set_defaults(func=_run_token)


def _run_token(args: argparse.Namespace) -> int:
    from serving import auth

    if not (math.isfinite(args.ttl) and args.ttl > 0):
        raise UserFacingError(f"--ttl must be a positive number of seconds, got {args.ttl:g}")
    if not args.sub.strip():  # a token for nobody: every call it made would name no user
        raise UserFacingError("--sub must name the user (role user) or the service, got an empty name")
    try:
        token = auth.mint_with_configured_key(
            args.sub, args.role, secret_file=args.secret_file, private_key=args.private_key, issuer=args.issuer,
            ttl_s=args.ttl, audience=args.audience,
        )  # fmt: skip
    except auth.AuthConfigError as error:
        raise UserFacingError(str(error)) from error
    print(token)
    return 0


COMMANDS = {"serve": _add_serve, "client": _add_client, "token": _add_token}
