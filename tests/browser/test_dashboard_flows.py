"""The Ops dashboard as its users work with it, in Chromium against the running platform.

Each test signs in with the roles it needs, works through the pages, fails on any
console error or uncaught exception, and saves full-page screenshots at laptop and
phone widths under tests/artifacts/ (at 360 px no page may overflow sideways).
"""
from __future__ import annotations

import re
import uuid

import pytest

from tests.browser.conftest import drive_traffic, wait_until

pytestmark = pytest.mark.slow

RATES = {"Control": 0.10, "Green button": 0.16, "Red button": 0.08}


def _experiment_id(dashboard) -> str:
    match = re.search(r"#/experiments/([0-9a-f-]{36})$", dashboard.page.url)
    assert match, dashboard.page.url
    return match.group(1)


def _results(dashboard, experiment_id: str) -> dict:
    answer = dashboard.api("GET", f"/api/experiments/{experiment_id}/results")
    assert answer["status"] == 200, answer
    return answer["body"]


def test_marketing_creates_runs_pauses_and_stops_an_experiment(dashboard, platform, make_token):
    tab = dashboard("marketing")
    page = tab.page
    name = f"Checkout button {uuid.uuid4().hex[:6]}"

    # Sign in by pasting the token, as a person would.
    page.goto(f"{platform.base_url}/ops")
    page.get_by_label("Bearer token").fill(make_token("marketing", sub="awa.marketing"))
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Experiments").wait_for()
    tab.screenshot("list-empty")

    # Create a 3-variant experiment through the form.
    page.get_by_role("link", name="+ New experiment").first.click()
    page.get_by_role("heading", name="New experiment").wait_for()
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Description").fill("Green and red buttons against the blue control")
    page.get_by_label("Variant 2 name").fill("Green button")
    page.get_by_label("Variant 2 config (JSON object)").fill('{"button_color": "green"}')
    page.get_by_role("button", name="+ Add variant").click()
    page.get_by_label("Variant 3 name").fill("Red button")
    page.get_by_label("Variant 3 config (JSON object)").fill('{"button_color": "red"}')
    page.get_by_label("Variant 1 config (JSON object)").fill('{"button_color": "blue"}')
    page.get_by_role("button", name="Split evenly").click()
    # A country code the browser cannot know is wrong: the server's 422 lands next to the field.
    page.get_by_label("Countries").fill("SN, ZZ")
    tab.console.expect(422, r"/api/experiments$")
    page.get_by_role("button", name="Create draft").click()
    country_error = page.locator('[data-error-for="targeting.country"]')
    country_error.wait_for()
    assert "ZZ" in country_error.inner_text() and "not a known" in country_error.inner_text()
    assert page.get_by_label("Countries").get_attribute("aria-describedby")
    tab.screenshot("create-422")
    page.get_by_label("Countries").fill("SN")
    page.get_by_role("button", name="Create draft").click()
    page.get_by_role("heading", name=name).wait_for()
    experiment_id = _experiment_id(tab)
    assert page.get_by_role("link", name="Edit draft").is_visible()

    # Start it.
    page.get_by_role("button", name="Start", exact=True).click()
    page.locator(".badge-running").first.wait_for()

    # Traffic through the API, in two waves so SIRA's history has a trend.
    service = make_token("pay_module")
    users = [f"user-{i}" for i in range(900)]
    drive_traffic(platform, service, experiment_id, users[:450], RATES, seed=1, attributes={"country": "SN"})
    wait_until(lambda: sum(v["assigned_users"] for v in _results(tab, experiment_id)["variants"]) == 450, 30, "the first wave in results")
    wait_until(lambda: len(tab.api("GET", f"/api/experiments/{experiment_id}/bandit/history")["body"]["snapshots"]) >= 1, 30, "a first history snapshot")
    drive_traffic(platform, service, experiment_id, users[450:], RATES, seed=2, attributes={"country": "SN"})
    wait_until(lambda: sum(v["metrics"]["conversion"]["users"] for v in _results(tab, experiment_id)["variants"]) > 60
               and len(tab.api("GET", f"/api/experiments/{experiment_id}/bandit/history")["body"]["snapshots"]) >= 2, 40,
               "the second wave in the rollups and a second snapshot")

    # The detail page shows the numbers, an interval chart and an over-time chart.
    page.reload()
    results = _results(tab, experiment_id)
    table = page.locator(".results-table")
    table.wait_for()
    for variant in results["variants"]:
        row = table.locator("tbody tr", has=page.get_by_role("rowheader", name=re.compile(re.escape(variant["name"]))))
        assert f"{variant['assigned_users']:,}" in row.inner_text()
    rate_chart = page.get_by_role("img", name="conversion rate per variant with 95% intervals")
    assert rate_chart.locator("circle.chart-estimate").count() == 3
    uplift_chart = page.get_by_role("img", name="Relative uplift of conversion versus control")
    assert uplift_chart.locator("circle.chart-estimate").count() == 2
    assert page.get_by_role("img", name=re.compile("Posterior densities of conversion")).locator("path.chart-density").count() == 3
    over_time = page.get_by_role("img", name="Cumulative relative uplift of conversion versus control")
    assert over_time.locator("polyline.chart-line").count() == 2, "one line per variant against control"
    page.get_by_role("button", name="Difference (always-valid)").click()
    assert page.get_by_role("img", name=re.compile("Cumulative difference")).locator("path.chart-band").count() == 2
    page.get_by_role("button", name="P(best)").click()
    assert page.get_by_role("img", name=re.compile(r"P\(best\) per variant over time")).locator("polyline.chart-line").count() == 3
    tab.screenshot("detail-running")

    # Pause a variant (the prompt asks for a reason).
    page.once("dialog", lambda dialog: dialog.accept("too red"))
    red_row = page.locator(".variants-table tbody tr", has_text="Red button")
    red_row.get_by_role("button", name="Pause").click()
    red_row.locator(".badge-paused").wait_for()
    assert "too red" in red_row.inner_text()

    # The list finds it by name and draws its uplift trend.
    page.goto(f"{platform.base_url}/ops#/experiments?q={name.split()[-1]}")
    row = page.locator(".experiments-table tbody tr", has_text=name)
    row.wait_for()
    assert page.locator(".experiments-table tbody tr").count() == 1
    assert row.locator("svg.sparkline").count() == 1
    tab.screenshot("list-filtered")

    # Stop it (after a confirmation).
    page.get_by_role("link", name=name).click()
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Stop", exact=True).click()
    page.locator(".badge-stopped").first.wait_for()
    # marketing may not archive: the button is not offered.
    assert page.get_by_role("button", name="Archive").count() == 0
    tab.screenshot("detail-stopped")


def test_data_science_sees_no_archive_button_and_a_forged_archive_is_refused(dashboard, platform, make_token):
    admin = make_token("ops_admin", sub="ops.lead")
    status, experiment = platform.request("POST", "/api/experiments", admin, {
        "name": f"Onboarding copy {uuid.uuid4().hex[:6]}",
        "variants": [{"name": "Control", "traffic_share": 50, "is_control": True}, {"name": "Short copy", "traffic_share": 50}],
    })
    assert status == 201, experiment
    for action in ("start", "stop"):
        assert platform.request("POST", f"/api/experiments/{experiment['id']}/{action}", admin)[0] == 200

    tab = dashboard("data-science")
    tab.open(f"/experiments/{experiment['id']}", token=make_token("data_science", sub="ndeye.ds"))
    page = tab.page
    page.get_by_role("heading", name=experiment["name"]).wait_for()
    page.locator(".badge-stopped").first.wait_for()
    assert page.get_by_role("button", name="Start", exact=True).is_visible()
    assert page.get_by_role("button", name="Archive").count() == 0
    assert page.get_by_role("button", name="Delete").count() == 0

    # Keyboard: the first Tab reaches "Skip to content", which moves focus to the page's content.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"

    tab.console.expect(403, r"/archive$")
    forged = tab.api("POST", f"/api/experiments/{experiment['id']}/archive")
    assert forged["status"] == 403, forged
    assert "archive" in forged["body"]["message"]
    assert platform.request("GET", f"/api/experiments/{experiment['id']}", admin)[1]["status"] == "stopped"
    tab.screenshot("detail-no-archive")


def test_a_draft_is_edited_field_by_field_and_cloned(dashboard, platform, make_token):
    tab = dashboard("editor")
    tab.open("/new", token=make_token("ops_admin", sub="ops.editor"))
    page = tab.page
    name = f"Pricing banner {uuid.uuid4().hex[:6]}"
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_role("button", name="Create draft").click()
    page.get_by_role("heading", name=name).wait_for()
    experiment_id = _experiment_id(tab)

    page.get_by_role("link", name="Edit draft").click()
    page.get_by_role("heading", name=f"Edit draft “{name}”").wait_for()
    page.get_by_label("Mode").select_option("bandit")
    page.get_by_label("Primary metric").select_option("click")
    page.get_by_label("Coverage (%)").fill("40")
    page.get_by_label("Languages").fill("fr, wo")
    page.get_by_role("button", name="+ Add variant").click()
    page.get_by_label("Variant 3 name").fill("Banner C")
    page.get_by_label("Variant 2 is the control").check()
    page.get_by_label("Variant 1 share (%)").fill("20")
    page.get_by_label("Variant 2 share (%)").fill("40")
    page.get_by_label("Variant 3 share (%)").fill("40")
    # Invalid JSON is caught before anything is sent.
    page.get_by_label("Variant 3 config (JSON object)").fill('{"tone": ')
    page.get_by_role("button", name="Save draft").click()
    assert "invalid JSON" in page.locator('[data-error-for="variants.2.config"]').inner_text()
    page.get_by_label("Variant 3 config (JSON object)").fill('{"tone": "bold"}')
    page.get_by_label("Burn-in: users per arm before adapting").fill("50")
    page.get_by_role("checkbox", name="refund").uncheck()
    tab.screenshot("edit-draft")
    page.get_by_role("button", name="Save draft").click()
    # The editor's own heading contains the name too: wait until the detail page replaced it.
    page.get_by_role("heading", name=f"Edit draft “{name}”").wait_for(state="detached")
    page.get_by_role("heading", name=name).wait_for()

    admin = make_token("ops_admin")
    saved = platform.request("GET", f"/api/experiments/{experiment_id}", admin)[1]
    assert (saved["mode"], saved["primary_metric"], saved["coverage"]) == ("bandit", "click", 40.0)
    assert saved["targeting"] == {"lang": ["fr", "wo"]}
    assert [(v["name"], v["traffic_share"], v["is_control"]) for v in saved["variants"]] == [
        ("Control", 20.0, False), ("Variant B", 40.0, True), ("Banner C", 40.0, False)]
    assert saved["variants"][2]["config"] == {"tone": "bold"}
    assert saved["bandit"]["min_samples"] == 50
    assert "refund" not in saved["guardrails"]

    page.get_by_role("link", name="Clone").click()
    page.get_by_role("heading", name=f"Clone “{name}”").wait_for()
    assert page.get_by_label("Name", exact=True).input_value() == f"{name} (copy)"
    page.get_by_role("button", name="Create draft").click()
    page.get_by_role("heading", name=f"{name} (copy)").wait_for()
    clone_id = _experiment_id(tab)
    assert clone_id != experiment_id
    clone = platform.request("GET", f"/api/experiments/{clone_id}", admin)[1]
    assert clone["status"] == "draft"
    for key in ("mode", "primary_metric", "coverage", "targeting", "fail_fast", "guardrails", "guardrail_action", "bandit"):
        assert clone[key] == saved[key], key
    assert [(v["name"], v["config"], v["traffic_share"], v["is_control"]) for v in clone["variants"]] == [
        (v["name"], v["config"], v["traffic_share"], v["is_control"]) for v in saved["variants"]]


def test_audit_page_lists_what_happened_and_the_chain_verifies(dashboard, platform, make_token):
    admin = make_token("ops_admin", sub="ops.auditor")
    status, experiment = platform.request("POST", "/api/experiments", admin, {
        "name": f"Audit trail {uuid.uuid4().hex[:6]}",
        "variants": [{"name": "Control", "traffic_share": 50, "is_control": True}, {"name": "B", "traffic_share": 50}],
    })
    assert status == 201
    assert platform.request("POST", f"/api/experiments/{experiment['id']}/start", admin)[0] == 200

    tab = dashboard("auditor")
    tab.open(f"/audit?experiment_id={experiment['id']}", token=make_token("ops_admin", sub="ops.auditor"))
    page = tab.page
    rows = page.locator(".audit-table tbody tr")
    rows.first.wait_for()
    actions = [row.locator("td").nth(3).inner_text().strip() for row in rows.all()]
    assert actions == ["start", "create"], actions
    assert "ops.auditor" in rows.first.inner_text()
    page.get_by_role("button", name="Verify chain").click()
    verdict = page.get_by_role("status").filter(has_text="Chain intact")
    verdict.wait_for()
    assert "entries checked" in verdict.inner_text()
    tab.screenshot("audit")


def test_approval_flow_between_two_ops_admins(dashboard, platform, make_token):
    requester_token = make_token("ops_admin", sub="amadou.ops")
    status, experiment = platform.request("POST", "/api/experiments", requester_token, {
        "name": f"Fee display {uuid.uuid4().hex[:6]}", "category": "pricing",
        "variants": [{"name": "Control", "traffic_share": 50, "is_control": True}, {"name": "Fee shown early", "traffic_share": 50}],
    })
    assert status == 201, experiment
    assert experiment["requires_approval"] is True

    requester = dashboard("requester")
    requester.open(f"/experiments/{experiment['id']}", token=requester_token)
    page = requester.page
    governance = page.locator("section.card", has=page.get_by_role("heading", name="Governance"))
    governance.get_by_text("required; not requested yet").wait_for()
    # Starting without approval is refused by the server, and the page says why.
    requester.console.expect(409, r"/start$")
    page.get_by_role("button", name="Start", exact=True).click()
    page.locator(".banner-error", has_text="approval").wait_for()
    page.once("dialog", lambda dialog: dialog.accept("new fee copy, legal has seen it"))
    governance.get_by_role("button", name="Request approval").click()
    governance.get_by_text("Your request: another ops_admin decides.").wait_for()
    assert governance.get_by_role("button", name="Approve").count() == 0

    # The queue offers the requester no decision, and a forged one is refused.
    page.get_by_role("link", name="Governance").click()
    queue_row = page.locator("tr", has_text=experiment["name"])
    queue_row.wait_for()
    assert queue_row.get_by_role("button", name="Approve").count() == 0
    requester.console.expect(403, r"/approve$")
    forged = requester.api("POST", f"/api/experiments/{experiment['id']}/approve", {"comment": "looks fine to me"})
    assert forged["status"] == 403, forged

    approver = dashboard("approver")
    approver.open("/governance", token=make_token("ops_admin", sub="fatou.ops"))
    row = approver.page.locator("tr", has_text=experiment["name"])
    row.wait_for()
    assert "amadou.ops" in row.inner_text()
    approver.screenshot("governance-queue")
    approver.page.once("dialog", lambda dialog: dialog.accept("approved: copy checked"))
    row.get_by_role("button", name="Approve").click()
    approver.page.get_by_text("Nothing waiting for approval.").wait_for()

    # Back to the requester: approved, and now it starts.
    page.goto(f"{platform.base_url}/ops#/experiments/{experiment['id']}")
    governance = page.locator("section.card", has=page.get_by_role("heading", name="Governance"))
    governance.locator(".badge", has_text="approved").first.wait_for()
    assert "fatou.ops" in governance.inner_text() and "approved: copy checked" in governance.inner_text()
    page.get_by_role("button", name="Start", exact=True).click()
    page.locator(".badge-running").first.wait_for()
    requester.screenshot("approved-and-running")
    audit = platform.request("GET", f"/api/audit?experiment_id={experiment['id']}", requester_token)[1]
    assert {"approve", "start"} <= {entry["action"] for entry in audit}
