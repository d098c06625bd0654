"""The operator's view against `bridge demo`: `bridge explain`, /status in a real browser, and
the Grafana dashboard's metric names against a running bridge's /metrics.

The demo: Service default/php-apache-svc with two pods, and billing on two Consul VMs
(see tests/e2e/test_demo.py). The browser is Debian's Chromium, headless, driven by
Selenium; the screenshot of /status lands in .artifacts/status.png for people to look at.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rdatatype
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import eventually
from tests.e2e.proc import BRIDGE, Proc

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / ".artifacts"
DASHBOARD = ROOT / "deploy" / "grafana" / "bridge.json"
PODS = {"10.28.3.13": "php-apache-7d8f9c6b5-fghij", "10.28.5.15": "php-apache-7d8f9c6b5-abcde"}
VMS = {"192.0.2.21": "vm-billing-1", "192.0.2.22": "vm-billing-2"}


@pytest.fixture(scope="module")
def demo():
    proc = Proc("demo", "--dns-listen", "127.0.0.1:0")
    try:
        kube = proc.expect(r"kubernetes API \(test server\) at (http://\S+);").group(1)
        dns_port = int(proc.expect(r"dns listening on 127\.0\.0\.1:(\d+)").group(1))
        http = proc.expect(r"http listening on (127\.0\.0\.1:\d+)").group(1)
        proc.expect(r"^ready$")
        yield {"proc": proc, "kube": kube, "http": http, "dns_port": dns_port}
    finally:
        code = proc.stop()
        assert code == 0, f"demo exited {code} on SIGTERM"


def explain(demo: dict[str, Any], name: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BRIDGE, "explain", name, "--server", demo["http"], *flags],
                          capture_output=True, text=True, timeout=30)


def explained(demo: dict[str, Any], name: str) -> dict[str, Any]:
    done = explain(demo, name, "--json")
    assert done.returncode in (0, 3), done.stderr
    return json.loads(done.stdout)


def set_ready(demo: dict[str, Any], pod: str, ready: bool) -> None:
    """What a kubelet reports when a readiness probe fails (or passes again)."""
    body = json.dumps({"status": {"conditions": [{"type": "Ready", "status": str(ready)}]}}).encode()
    request = urllib.request.Request(f"{demo['kube']}/api/v1/namespaces/default/pods/{pod}/status",
                                     data=body, method="PATCH",
                                     headers={"Content-Type": "application/merge-patch+json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def test_explain_shows_both_pods_with_their_origin(demo):
    done = explain(demo, "php-apache-svc.default.svc.cluster.local")
    assert done.returncode == 0, done.stderr
    text = done.stdout
    for address, pod in PODS.items():
        assert re.search(rf"IN\s+A\s+{re.escape(address)}", text), f"A record of {address} in:\n{text}"
        line = next((ln for ln in text.splitlines() if ln.strip().startswith(address)), "")
        assert f"pod {pod}" in line and "EndpointSlice of this cluster (demo)" in line, text
        assert "[answered]" in line, line
    assert "Left out (0)" in text, text
    data = explained(demo, "php-apache-svc.default.svc.cluster.local")
    assert {i["address"]: i["origin"]["pod"] for i in data["instances"]} == PODS, data["instances"]
    assert all(i["origin"]["kind"] == "kubernetes" for i in data["instances"])


def test_billing_shows_the_two_vms_with_their_consul_nodes(demo):
    data = explained(demo, "billing.consul.svc.cluster.local")
    assert data["known"], data
    nodes = {i["address"]: i["origin"]["node"] for i in data["instances"]}
    assert nodes == VMS, data["instances"]
    assert all(i["origin"]["kind"] == "consul" and i["answered"] is True for i in data["instances"])
    text = explain(demo, "billing.consul.svc.cluster.local").stdout
    assert "Consul node vm-billing-1" in text and "Consul node vm-billing-2" in text, text
    # The same service asked by its Consul name.
    assert explained(demo, "billing")["service"] == {"namespace": "consul", "name": "billing"}


def test_an_unknown_name_says_why_and_exits_3(demo):
    done = explain(demo, "nope.default.svc.cluster.local")
    assert done.returncode == 3, (done.returncode, done.stdout, done.stderr)
    assert "no Service default/nope" in done.stdout and "NXDOMAIN" in done.stdout, done.stdout


def test_explain_names_an_unreachable_bridge():
    done = subprocess.run([BRIDGE, "explain", "x", "--server", "127.0.0.1:1"], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 1 and "cannot reach the bridge at 127.0.0.1:1" in done.stderr, done.stderr


def test_every_metric_the_dashboard_queries_exists_in_metrics(demo):
    # One DNS query first, so the per-rcode DNS counters have samples.
    query = dns.message.make_query("php-apache-svc.default.svc.cluster.local.", dns.rdatatype.A)
    dns.query.udp(query, "127.0.0.1", port=demo["dns_port"], timeout=5)
    with urllib.request.urlopen(f"http://{demo['http']}/metrics", timeout=10) as response:
        text = response.read().decode()
    known: set[str] = set()
    for family in text_string_to_metric_families(text):
        known.add(family.name)
        known.update(s.name for s in family.samples)
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(family.type, ())
        known.update(family.name + suffix for suffix in suffixes)  # declared, no sample yet
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    used = {name for expr in exprs for name in re.findall(r"\b(bridge_[a-z0-9_]+)", expr)}
    assert len(used) >= 15, f"the dashboard queries only {sorted(used)}"
    assert {"bridge_dns_responses_total", "bridge_sync_lag_seconds_bucket", "bridge_leader",
            "bridge_source_last_event_timestamp_seconds"} <= used, sorted(used)
    missing = sorted(used - known)
    assert not missing, f"the dashboard queries metrics /metrics does not have: {missing}"


def _browser() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "Debian's chromium and chromium-driver are needed: ./dev test installs them"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,1200"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


def test_status_page_in_a_browser_search_finds_a_service_and_links_to_its_explanation(demo):
    from selenium.webdriver.common.by import By

    browser = _browser()
    try:
        browser.get(f"http://{demo['http']}/status")
        assert "bridge demo: status" in browser.find_element(By.TAG_NAME, "h1").text
        assert "ready" in browser.find_element(By.ID, "readiness").text
        rows = browser.find_elements(By.CSS_SELECTOR, "#catalog a.explain")
        assert {"php-apache-svc", "billing"} <= {r.text for r in rows}, [r.text for r in rows]
        ARTIFACTS.mkdir(exist_ok=True)
        assert browser.save_screenshot(str(ARTIFACTS / "status.png")), "screenshot not written"

        browser.find_element(By.ID, "search").send_keys("billing")
        browser.find_element(By.ID, "search-button").click()
        eventually(lambda: "1 matching" in browser.find_element(By.ID, "matched").text, 15,
                   "the search narrowed the table to billing")
        [row] = browser.find_elements(By.CSS_SELECTOR, "#catalog a.explain")
        assert row.text == "billing"
        row.click()
        explanation = eventually(lambda: browser.find_element(By.ID, "explanation").text, 15,
                                 "the explanation page")
        assert "vm-billing-1" in explanation and "vm-billing-2" in explanation, explanation
        assert browser.save_screenshot(str(ARTIFACTS / "status-explain.png"))
    finally:
        browser.quit()


def test_a_pod_made_not_ready_is_left_out_with_the_reason(demo):
    """Last in this module: it changes the demo (and puts it back)."""
    pod = PODS["10.28.5.15"]
    set_ready(demo, pod, False)
    try:
        def left_out() -> dict[str, Any]:
            data = explained(demo, "php-apache-svc.default.svc.cluster.local")
            assert [i["address"] for i in data["left_out"]] == ["10.28.5.15"], data["left_out"]
            return data
        data = eventually(left_out, 20, "the not-ready pod left out")
        [left] = data["left_out"]
        assert left["origin"]["pod"] == pod and "not ready" in left["reason"], left
        assert [i["address"] for i in data["instances"]] == ["10.28.3.13"]
        text = explain(demo, "php-apache-svc.default.svc.cluster.local").stdout
        assert "Left out (1)" in text and "reason: not ready: its EndpointSlice condition ready is false" in text, text
    finally:
        set_ready(demo, pod, True)
