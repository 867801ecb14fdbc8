async def test_healthz(client):
    r = await client.get("/healthz")
    assert r.status_code == 200


async def test_readyz(client):
    r = await client.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "ready"


async def test_add_and_get_memory(client, tenant_a):
    r = await client.post("/users/u1/memories", json={"text": "Alice likes tea"}, headers=tenant_a.memory)
    assert r.status_code == 201, r.text
    mid = r.json()["id"]
    r = await client.get(f"/memories/{mid}", headers=tenant_a.memory)
    assert r.status_code == 200, r.text
    r = await client.get("/users/u1/memories", params={"query": "tea"}, headers=tenant_a.memory)
    assert r.status_code == 200, r.text
    assert r.json()["items"][0]["id"] == mid
