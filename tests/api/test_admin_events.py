"""GET /api/admin/events paged with `before`: every id the query's pattern lets through is answered."""

from __future__ import annotations

from shared.accounts import AccountRegistry
from tests.api.conftest import ADMIN_KEY, KEY_A, ApiClient, account, auth


async def test_an_events_page_before_the_first_or_past_the_last_possible_id_is_not_a_500(
    api: ApiClient, registry: AccountRegistry
) -> None:
    """Found by the fuzzer: `before=0-0` (nothing precedes it) and ids past 64 bits reached Redis."""
    await registry.sync_from_settings([account("main")])
    created = await api.post("/api/generations/create", json={"prompt": "one"}, headers=auth(KEY_A))
    gen_id = (await created.json())["data"][0]["id"]
    admin = auth(ADMIN_KEY)
    for before, expected in (("0-0", []), ("00-0", []), ("99999999999999999999-0", [gen_id])):
        response = await api.get(f"/api/admin/events?before={before}", headers=admin)
        assert response.status == 200, (before, await response.text())
        events = (await response.json())["data"]
        assert [event["generation_id"] for event in events] == expected, before
    last = (await (await api.get("/api/admin/events", headers=admin)).json())["data"][0]["id"]
    page = await api.get(f"/api/admin/events?before={last}", headers=admin)
    assert (await page.json())["data"] == []
