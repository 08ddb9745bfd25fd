def test_create_start_stop(client, auth, create_experiment):
    exp = create_experiment()
    assert exp["status"] == "draft"
    assert len(exp["variants"]) == 2 and all(v["id"] for v in exp["variants"])
    r = client.post(f"/api/experiments/{exp['id']}/start", headers=auth("marketing"))
    assert r.status_code == 200 and r.get_json()["status"] == "running"
    r = client.post(f"/api/experiments/{exp['id']}/stop", headers=auth("data_science"))
    assert r.status_code == 200 and r.get_json()["status"] == "stopped"
    r = client.get("/api/audit/verify", headers=auth("data_science"))
    assert r.get_json() == {"ok": True, "entries": 3, "first_bad_id": None, "reason": None}
