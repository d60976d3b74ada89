"""REDIS_MIN_REPLICAS_ACKED: a create answers 2xx only once enough replicas have its write."""

from __future__ import annotations

from tests.api.conftest import KEY_A, MakeApi, auth


async def test_a_create_no_replica_confirms_is_a_503_that_names_the_stored_generation(
    make_api: MakeApi,
) -> None:
    """With no replica, WAIT confirms nothing: 503 replication_unconfirmed, naming the id to check."""
    api = await make_api(redis_min_replicas_acked=1, redis_replica_ack_timeout_seconds=0.05)

    response = await api.post("/api/generations/create", json={"prompt": "unconfirmed"}, headers=auth(KEY_A))

    assert response.status == 503
    answer = await response.json()
    assert answer["code"] == "replication_unconfirmed"
    assert "0 of 1 replicas" in answer["message"]
    # It is on the primary and may still run, so the caller is told which one to look for.
    [gen_id] = answer["generation_ids"]
    stored = await api.get(f"/api/generations/{gen_id}", headers=auth(KEY_A))
    assert stored.status == 200


async def test_without_the_setting_a_create_does_not_wait_for_replicas(make_api: MakeApi) -> None:
    """REDIS_MIN_REPLICAS_ACKED=0 (the default): the same Redis answers 200 at once."""
    api = await make_api()

    response = await api.post("/api/generations/create", json={"prompt": "plain"}, headers=auth(KEY_A))

    assert response.status == 200
