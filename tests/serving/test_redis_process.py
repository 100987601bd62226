"""The private redis-server (serving/redis_process.py): starts on a free port, AOF persists."""

from __future__ import annotations

from pathlib import Path

import redis

from serving.redis_process import RedisProcess


def test_private_redis_with_aof_keeps_data_across_restarts(tmp_path: Path) -> None:
    data_dir = tmp_path / "redis"
    with RedisProcess(data_dir=data_dir, aof=True) as server:
        client = redis.Redis.from_url(server.url)
        client.hset("apron:edits:alice", mapping={"jazz": '{"kind": "scale", "value": 0.0}'})
        client.close()
    assert data_dir.exists()  # a given directory is kept
    with RedisProcess(data_dir=data_dir, aof=True) as server:
        client = redis.Redis.from_url(server.url)
        assert client.hgetall("apron:edits:alice") == {b"jazz": b'{"kind": "scale", "value": 0.0}'}
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        client.close()


def test_temp_dir_is_removed_and_ports_differ() -> None:
    with RedisProcess() as first, RedisProcess() as second:
        assert first.port != second.port
        temp_dir = first.data_dir
        assert redis.Redis(port=first.port).ping()
    assert temp_dir is not None and not temp_dir.exists()
