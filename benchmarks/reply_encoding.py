"""`python -m benchmarks.reply_encoding`: what a cached Recommend's response costs the event loop to
build and serialize, with its profile sent as kept bytes (`profile_encoding.Reply`, the gateway's
way) against the profile message copied into each response and serialized with it (the way before).

Both build the same k = 10 items around one memoized K-prototype profile (the `controllable`
preset's K = 80 by default) and produce bytes that parse to the same message (checked first);
blocks of each take turns, their order swapped every round, so that other load on the machine falls
on both alike. Prints µs per response (median of the rounds) for each and their difference.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from serving.profile_encoding import EncodedProfile, ProfileEncoder, Reply, serialize
from serving.proto_gen.apron.v1 import recommender_pb2 as pb

K_ITEMS = 10


def builders(prototypes: int, seed: int = 0) -> dict[str, Callable[[], bytes]]:
    """Each way of answering, as a function that builds one response and returns its bytes."""
    rng = np.random.default_rng(seed)
    encoder = ProfileEncoder([f"tag {k}" for k in range(prototypes)], [f"item-{k:06d}" for k in range(prototypes)])
    weight = rng.dirichlet(np.ones(prototypes))
    profile = encoder.encode(weight, weight, 25, {})
    kept = EncodedProfile(profile)  # what ProfileRecord.memo keeps once per profile copy
    ids = [f"item-{i:06d}" for i in range(K_ITEMS)]
    names = [f"Artist {i} - Title {i}" for i in range(K_ITEMS)]
    scores = rng.random(K_ITEMS).tolist()

    def items() -> list[pb.ScoredItem]:
        return [pb.ScoredItem(item_id=i, score=s, name=n) for i, s, n in zip(ids, scores, names, strict=True)]

    def copied() -> bytes:
        response = pb.RecommendResponse(items=items(), profile=profile, model_version=3, profile_from_cache=True)
        return serialize(response)

    def reply() -> bytes:
        return serialize(Reply(pb.RecommendResponse(items=items(), model_version=3, profile_from_cache=True), kept))

    return {"profile copied into each response": copied, "profile sent as kept bytes (Reply)": reply}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prototypes", type=int, default=80)
    parser.add_argument("--calls", type=int, default=20_000, help="responses per block")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    if args.prototypes < 1 or args.calls < 1 or args.rounds < 1:
        parser.error("--prototypes, --calls and --rounds must be at least 1")
    ways = builders(args.prototypes)
    parsed = {name: pb.RecommendResponse.FromString(build()) for name, build in ways.items()}
    first, second = parsed.values()
    if first != second:
        raise SystemExit("the two ways do not answer the same message")
    per_call: dict[str, list[float]] = {name: [] for name in ways}
    names = list(ways)
    for round_ in range(args.rounds):
        for name in names if round_ % 2 == 0 else names[::-1]:
            build = ways[name]
            start = time.process_time()
            for _ in range(args.calls):
                build()
            per_call[name].append((time.process_time() - start) / args.calls * 1e6)
    medians = {name: statistics.median(values) for name, values in per_call.items()}
    for name, value in medians.items():
        print(f"{name}: {value:.2f} µs per response (CPU, median of {args.rounds} rounds of {args.calls:,})")
    before, after = medians.values()
    print(f"difference: {before - after:.2f} µs per response, K = {args.prototypes} prototypes, k = {K_ITEMS} items")


if __name__ == "__main__":
    main()
