"""Locust load test of the APRON gateway over gRPC (grpcio under gevent).

    locust -f loadtests/locustfile.py --config loadtests/locust.conf --host 127.0.0.1:50051 \
        --dataset artifacts/data/lastfm --token "$(apron token ...)"

Each simulated user is one test user of a prepared dataset (its `test_tr` fold-in history, as the
catalog's item ids) and runs a weighted mix of calls:

| task | what it exercises | weight option |
| --- | --- | --- |
| `recommend-cached` | Recommend with the history the cache already holds (profile from Redis) | `--weight-cached` |
| `recommend-fresh` | Recommend with a history the cache has not seen (profile computed: a miss) | `--weight-fresh` |
| `recommend-edit` | Recommend with one-off edits of random prototypes | `--weight-edit` |
| `edit-profile` | EditProfile: store an edit (or reset) | `--weight-edit-profile` |
| `get-profile` | GetProfile | `--weight-get-profile` |

Every call's latency and failure goes to Locust's `events.request` (`ApronUser.call`), so Locust's
own stats, `--csv` and `--html` report them. At the end, `check_thresholds` sets the exit code when
the failure ratio, p99 or throttled ratio break the limits given with `--max-failure-ratio` /
`--max-p99-ms` / `--max-throttled-ratio`.

A call the gateway sheds (RESOURCE_EXHAUSTED with `retry-after-ms`: a rate or concurrency limit)
is handled as a real client would: wait that long, then retry (at most `--max-throttled-retries`
times). Locust gets ONE request per call, timed from its first attempt to its answer, waits and
retries included: what the caller waited, so shedding shows in the percentiles instead of leaving
only the lucky last attempt. Shed attempts are counted apart (not requests, not failures), by task:
logged at the end (`throttled: ...` with the throttled ratio, shed attempts / all attempts) and
written to `<csv prefix>_throttled.json`; above `--max-throttled-ratio` the run fails.

The deployed gateway (compose, Kubernetes) is reached through its TLS front only: `--tls-ca
deploy/secrets/ca.crt` speaks TLS trusting that CA (`serving.tls.channel_credentials`, as `apron
client --tls-ca`), and `--tls-server-name NAME` checks the certificate for NAME when the address
dialled is not one of its names (a port-forward, a node IP). Without `--tls-ca` calls are plaintext.

`--min-requests N` ends the run before `--run-time` once every task in the mix has N requests: a
smoke run then waits on what it needs, not on the clock. `--until-file PATH` also waits for PATH
to exist: a test that drives something else under this load (a model rollout) ends the run when it
is done, by creating the file.
"""

from __future__ import annotations

import collections
import json
import logging
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
import gevent.event
import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import User, constant, events, task
from locust.env import Environment
from locust.exception import StopUser

from loadtests.catalog import DATASET_HINT, catalog_mismatch
from loadtests.mix import TASKS, task_weights
from serving import tls
from serving.client import channel_options
from serving.errors import RETRY_AFTER_KEY
from serving.proto_gen.apron.v1 import recommender_pb2 as pb
from serving.proto_gen.apron.v1 import recommender_pb2_grpc as pb_grpc

grpc_gevent.init_gevent()  # before any channel exists: gRPC's I/O then yields to gevent

log = logging.getLogger("apron.loadtest")

# Locust's name for each task's calls (several tasks share one RPC method)
TASK_LABELS = {
    "recommend-cached": "Recommend cached",
    "recommend-fresh": "Recommend fresh",
    "recommend-edit": "Recommend one-off edits",
    "edit-profile": "EditProfile",
    "get-profile": "GetProfile",
}
# attempts answered RESOURCE_EXHAUSTED + retry-after-ms, by label (retried, not failures)
throttled: collections.Counter[str] = collections.Counter()
# every attempt sent, shed or not, by label: the throttled ratio's denominator
attempts: collections.Counter[str] = collections.Counter()


@events.init_command_line_parser.add_listener
def add_options(parser: Any) -> None:
    group = parser.add_argument_group("APRON")
    group.add_argument("--dataset", type=str, env_var="APRON_LOADTEST_DATASET", default="",
                       help="processed dataset directory (apron prepare): its test users are the simulated users")
    group.add_argument("--k", type=int, env_var="APRON_LOADTEST_K", default=10, help="items per Recommend")
    group.add_argument("--max-test-users", type=int, default=0, help="use at most this many test users (0: all)")
    group.add_argument("--token", type=str, env_var="APRON_LOADTEST_TOKEN", default="",
                       help="bearer token (a `service` role token) sent with every call; empty: none")
    group.add_argument("--tls-ca", type=str, env_var="APRON_TLS_CA", default="",
                       help="speak TLS, trusting this PEM CA (e.g. deploy/secrets/ca.crt); empty: plaintext")
    group.add_argument("--tls-server-name", type=str, default="",
                       help="with --tls-ca: the name the gateway's certificate must carry, when --host is not one of its names")
    group.add_argument("--rpc-timeout", type=float, default=10.0, help="client deadline per call (seconds)")
    group.add_argument("--edits-per-call", type=int, default=2, help="one-off edits per recommend-edit call")
    for name, (option, weight) in TASKS.items():
        group.add_argument("--" + option.replace("_", "-"), type=float, default=weight,
                           help=f"relative weight of the {name} task")
    group.add_argument("--max-failure-ratio", type=float, default=0.01,
                       help="exit non-zero when failures / requests exceed this")
    group.add_argument("--max-p99-ms", type=float, default=0.0,
                       help="exit non-zero when the p99 of all requests exceeds this (0: no limit)")
    group.add_argument("--max-throttled-ratio", type=float, default=0.01,
                       help="exit non-zero when shed attempts (RESOURCE_EXHAUSTED + retry-after-ms) / all attempts "
                            "exceed this (1: no limit, for runs that measure shedding)")
    group.add_argument("--max-throttled-retries", type=int, default=100,
                       help="retries of a call shed with RESOURCE_EXHAUSTED (after its retry-after-ms) before it fails")
    group.add_argument("--min-requests", type=int, default=0,
                       help="end the run once every task with a weight > 0 has this many requests (0: run for --run-time)")
    group.add_argument("--until-file", type=str, default="",
                       help="end the run once this file exists (and --min-requests is met): another program says when")


# ----------------------------------------------------------------------------- thresholds


def threshold_failures(environment: Environment) -> list[str]:
    """Why the run failed its thresholds (empty: it passed). Uses Locust's own aggregated stats."""
    options, total = environment.parsed_options, environment.stats.total
    if total.num_requests == 0:
        return ["no request was made"]
    reasons = []
    if total.fail_ratio > options.max_failure_ratio:
        reasons.append(f"failure ratio {total.fail_ratio:.4f} > --max-failure-ratio {options.max_failure_ratio}")
    p99 = total.get_response_time_percentile(0.99)
    if options.max_p99_ms > 0 and p99 > options.max_p99_ms:
        reasons.append(f"p99 {p99:.1f} ms > --max-p99-ms {options.max_p99_ms}")
    ratio = throttled_ratio()
    if ratio > options.max_throttled_ratio:
        reasons.append(
            f"throttled ratio {ratio:.4f} ({throttled.total()} of {attempts.total()} attempts shed) "
            f"> --max-throttled-ratio {options.max_throttled_ratio}"
        )
    return reasons


def throttled_ratio() -> float:
    """Shed attempts / all attempts of this process's users (0 before any attempt)."""
    sent = attempts.total()
    return throttled.total() / sent if sent else 0.0


@events.quitting.add_listener
def check_thresholds(environment: Environment, **_kwargs: Any) -> None:
    if environment.parsed_options is None:  # used as a library, not from the command line
        return
    if _stopped_because is not None:  # no measurement to judge
        log.error("run stopped: %s", _stopped_because)
        environment.process_exit_code = 2
        return
    log.info("throttled: %s; throttled ratio %.4f (%d of %d attempts shed)", json.dumps(dict(throttled), sort_keys=True),
             throttled_ratio(), throttled.total(), attempts.total())  # fmt: skip
    if environment.parsed_options.csv_prefix:
        Path(f"{environment.parsed_options.csv_prefix}_throttled.json").write_text(json.dumps(dict(throttled)))
    reasons = threshold_failures(environment)
    for reason in reasons:
        log.error("threshold broken: %s", reason)
    if reasons:
        environment.process_exit_code = 1
    else:
        log.info("thresholds met")


def tasks_done(environment: Environment, min_requests: int) -> bool:
    """Whether every task with a weight > 0 has at least `min_requests` requests."""
    weights = task_weights(environment.parsed_options)
    for name, weight in weights.items():
        entry = environment.stats.entries.get((TASK_LABELS[name], "grpc"))  # .get(): never adds an empty row
        if weight > 0 and (entry is None or entry.num_requests < min_requests):
            return False
    return True


@events.test_start.add_listener
def stop_at_min_requests(environment: Environment, **_kwargs: Any) -> None:
    options = environment.parsed_options
    if options is None or (options.min_requests <= 0 and not options.until_file) or environment.runner is None:
        return

    def watch() -> None:
        while not tasks_done(environment, options.min_requests) or (options.until_file and not Path(options.until_file).exists()):
            gevent.sleep(0.1)
        log.info("every task has %d requests%s: ending the run", options.min_requests,
                 f" and {options.until_file} exists" if options.until_file else "")
        environment.runner.quit()

    gevent.spawn(watch)


# ----------------------------------------------------------------------------- test users


class TestUsers:
    """The dataset's test users as (user id, history of catalog item ids); loaded once per process."""

    def __init__(self, dataset: Path, max_users: int = 0):
        from training.data.dataset import ProcessedDataset  # here: locust --help must not need it

        data = ProcessedDataset.load(dataset)
        matrix = data.test_tr
        rows = [r for r in range(matrix.shape[0]) if matrix.indptr[r + 1] > matrix.indptr[r]]
        if max_users:
            rows = rows[:max_users]
        if not rows:
            raise ValueError(f"{dataset}: test_tr has no user with a history")
        ids = data.item_ids
        self.histories = [[ids[i] for i in matrix.indices[matrix.indptr[r]:matrix.indptr[r + 1]]] for r in rows]
        self.user_ids = [f"{data.name}-test-{r}" for r in rows]
        self.all_items = list(ids)
        self.item_set = set(ids)


_test_users: TestUsers | None = None
_credentials: grpc.ChannelCredentials | None = None  # --tls-ca's, read once at start (None: plaintext)
_stopped_because: str | None = None  # the run cannot measure anything (stop_run)
_setup_failures = 0  # users whose set-up call failed (each stopped: `setup_failed`)


def stop_run(environment: Environment, message: str) -> None:
    """End the whole run with `message` and exit code 2 (once, whichever user finds it first)."""
    global _stopped_because
    if _stopped_because is None:
        _stopped_because = message
        log.error("%s", message)
        if environment.runner is not None:
            gevent.spawn(environment.runner.quit)  # not from this user's greenlet, which quit() kills


def setup_failed(environment: Environment) -> None:
    """One user's set-up call failed (it is recorded, and the user stops). Once every user has, nothing
    more can happen: the run ends now rather than at --run-time, its thresholds deciding the exit code."""
    global _setup_failures
    _setup_failures += 1
    runner = environment.runner
    if runner is not None and _setup_failures >= runner.target_user_count:
        gevent.spawn(runner.quit)  # not from this user's greenlet, which quit() kills


@events.init.add_listener
def load_test_users(environment: Environment, **_kwargs: Any) -> None:
    global _test_users
    options = environment.parsed_options
    if options is None or not options.dataset:
        return
    try:
        _test_users = TestUsers(Path(options.dataset), options.max_test_users)
    except ValueError as error:  # DataError included; SystemExit: Locust reports a listener's Exception and runs on
        print(f"loadtest: no test users in {options.dataset}: {error}\n{DATASET_HINT}", file=sys.stderr)
        raise SystemExit(2) from None
    task_weights(options)  # fail at start, not in every user
    global _credentials
    try:
        _credentials = tls_credentials(options.tls_ca, options.tls_server_name)
    except tls.TLSConfigError as error:  # a missing or unreadable CA: every user would fail its first call
        print(f"loadtest: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    log.info("loaded %d test users from %s", len(_test_users.user_ids), options.dataset)


# ----------------------------------------------------------------------------- gRPC client


def tls_credentials(ca: str, server_name: str) -> grpc.ChannelCredentials | None:
    """--tls-ca's credentials (the client's own helper, as `apron client --tls-ca`), None for plaintext."""
    if not ca:
        if server_name:  # a name to check on a channel that checks nothing: say so, do not ignore it
            raise tls.TLSConfigError("--tls-server-name needs --tls-ca (the name is checked on a TLS channel only)")
        return None
    return tls.channel_credentials(ca)


def open_channel(host: str, credentials: grpc.ChannelCredentials | None, server_name: str = "") -> grpc.Channel:
    """A channel to `host` (HOST:PORT, `grpc://` allowed) as a real client opens it: every address
    of the host, NOT_SERVING replicas skipped, UNAVAILABLE retried (channel_options); TLS with
    `credentials`, checking the certificate for `server_name` when given, else for the host."""
    target, options = host.removeprefix("grpc://"), channel_options()
    if credentials is None:
        return grpc.insecure_channel(target, options=options)
    if server_name:
        options = [*options, ("grpc.ssl_target_name_override", server_name)]
    return grpc.secure_channel(target, credentials, options=options)


def retry_after_s(error: grpc.RpcError) -> float | None:
    """The wait the gateway asks for when it sheds a call (RESOURCE_EXHAUSTED + retry-after-ms),
    else None (a message-size RESOURCE_EXHAUSTED has no hint: it is the request's fault)."""
    if not isinstance(error, grpc.Call) or error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return None
    hint = dict(error.trailing_metadata() or ()).get(RETRY_AFTER_KEY)
    return None if hint is None else int(hint) / 1000.0


class ApronUser(User):
    """One dataset test user calling the gateway with the weighted task mix, back to back."""

    wait_time = constant(0)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        if _test_users is None:
            raise StopUser("no test users: pass --dataset with a prepared dataset directory")
        if not self.host:
            raise StopUser("no target: pass --host HOST:PORT of the gateway")
        self.options = options
        self.weights = task_weights(options)
        self.metadata = (("authorization", f"Bearer {options.token}"),) if options.token else ()
        self.channel = open_channel(self.host, _credentials, options.tls_server_name)
        self.stub = pb_grpc.RecommenderStub(self.channel)
        index = random.randrange(len(_test_users.user_ids))
        self.user_id = _test_users.user_ids[index]
        self.history = _test_users.histories[index]
        self.fresh_round = 0
        reply = self.call("ListPrototypes", self.stub.ListPrototypes, pb.ListPrototypesRequest())
        if reply is None:
            setup_failed(self.environment)
            raise StopUser("ListPrototypes failed")
        mismatch = catalog_mismatch(
            _test_users.item_set, [p.item_id for p in reply.prototypes], reply.model_version, options.dataset
        )
        if mismatch is not None:  # every call would fail: end the run, quietly for every user
            stop_run(self.environment, mismatch)
            gevent.event.Event().wait()  # until the runner's quit kills this greenlet (on_stop then runs)
        self.prototypes = [p.name for p in reply.prototypes]
        self.k = min(options.k, reply.k_max)
        self.recommend_cached()  # fills the cache, so that the cached task and GetProfile find a profile

    def on_stop(self) -> None:
        self.channel.close()

    def call(self, name: str, method: Callable, request: Any) -> Any:
        """The response, or None after a failure. A shed call is retried after the wait the gateway
        asked for, as a real client would; Locust gets one request for the whole call, timed from
        the first attempt to the last answer (the caller's wait), and each shed attempt is counted
        in `throttled`."""
        retries = self.options.max_throttled_retries
        response, exception = None, None
        start = time.perf_counter()
        for attempt in range(retries + 1):
            attempts[name] += 1
            try:
                response = method(request, metadata=self.metadata, timeout=self.options.rpc_timeout)
                break
            except grpc.RpcError as error:
                wait_s = retry_after_s(error)
                if wait_s is None:  # a real failure: the request's or the gateway's, not a shed
                    exception = error
                    break
                throttled[name] += 1
                if attempt < retries:
                    gevent.sleep(wait_s * random.uniform(1.0, 1.1))  # jitter: users shed together spread out
        else:
            exception = RuntimeError(f"still RESOURCE_EXHAUSTED after {retries} retries")
        self.environment.events.request.fire(
            request_type="grpc", name=name, response_time=(time.perf_counter() - start) * 1000.0,
            response_length=0 if response is None else response.ByteSize(), exception=exception, context={},
        )  # fmt: skip
        return response

    @task
    def one_call(self) -> None:
        name = random.choices(list(self.weights), weights=list(self.weights.values()))[0]
        getattr(self, name.replace("-", "_"))()

    def recommend_cached(self) -> None:
        request = pb.RecommendRequest(user_id=self.user_id, history=self.history, k=self.k)
        self.call(TASK_LABELS["recommend-cached"], self.stub.Recommend, request)

    def recommend_fresh(self) -> None:
        """A history no one has sent before: the user's own minus one item, plus a random catalog item,
        under a new user id (so the cached profile of the real user is not replaced)."""
        self.fresh_round += 1
        history = list(self.history)
        if len(history) > 1:
            history.pop(random.randrange(len(history)))
        history.append(random.choice(_test_users.all_items))
        user_id = f"{self.user_id}-fresh-{id(self)}-{self.fresh_round}"
        self.call(TASK_LABELS["recommend-fresh"], self.stub.Recommend, pb.RecommendRequest(user_id=user_id, history=history, k=self.k))

    def random_edits(self, count: int, remove: bool = True) -> list[pb.Edit]:
        """`count` edits of random prototypes. Scale 0 removes a prototype: never every one
        (INVALID_ARGUMENT: a head with no mass), so only one-off edits remove (`remove`), never
        stored ones, which pile up between resets."""
        names = random.sample(self.prototypes, min(count, len(self.prototypes)))
        removing = remove and len(names) < len(self.prototypes)
        scales = (0.0, 0.5, 2.0, 4.0) if removing else (0.5, 2.0, 4.0)
        return [pb.Edit(prototype=name, scale=random.choice(scales)) for name in names]

    def recommend_edit(self) -> None:
        edits = self.random_edits(self.options.edits_per_call)
        request = pb.RecommendRequest(user_id=self.user_id, history=self.history, k=self.k, edits=edits)
        self.call(TASK_LABELS["recommend-edit"], self.stub.Recommend, request)

    def edit_profile(self) -> None:
        reset = random.random() < 0.2  # keeps the stored edits from piling up over a long run
        request = pb.EditProfileRequest(user_id=self.user_id, edits=[] if reset else self.random_edits(1, remove=False), reset=reset)
        self.call(TASK_LABELS["edit-profile"], self.stub.EditProfile, request)

    def get_profile(self) -> None:
        self.call(TASK_LABELS["get-profile"], self.stub.GetProfile, pb.GetProfileRequest(user_id=self.user_id))
