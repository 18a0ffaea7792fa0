"""The web console at `/` on the API address, in real headless Chromium driven by Selenium.

The page signs every API request itself (Web Crypto HMAC-SHA256); these tests log in with the
server's key pair, look at a service and its pools, create a database, a user and a pool through
the forms, connect to the pool's URI with psql, change the pool's size and mode, and delete it.
Screenshots are saved under the test's tmp dir (printed with -s).
"""

from __future__ import annotations

import contextlib
import os
import re
import time

import psycopg
import pytest
import requests

from conftest import API_KEY, API_SECRET, find_pool, metrics, psql_ok, unique, user_names

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 30.0
DASH = "\u2013"
LIVE_SERIES = ("pgbay_pool_clients_active", "pgbay_pool_clients_waiting",
               "pgbay_pool_servers_active", "pgbay_pool_servers_idle",
               "pgbay_pool_transactions_total")


@contextlib.contextmanager
def chromium(tmp_path, *flags: str, accept_insecure_certs: bool = False):
    """Headless Chromium driven by chromedriver, its profile and driver log under `tmp_path`;
    `flags` are added to its command line (test_api_tls.py's browser uses this too)."""
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.fail(f"{CHROMIUM} and {CHROMEDRIVER} are needed: apt-get install chromium "
                    "chromium-driver (.ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service as ChromeService

    opts = Options()
    opts.binary_location = CHROMIUM
    opts.accept_insecure_certs = accept_insecure_certs
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1500,1100",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}", *flags):
        opts.add_argument(flag)
    service = ChromeService(executable_path=CHROMEDRIVER,
                            log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=opts)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def browser(tmp_path):
    with chromium(tmp_path) as driver:
        yield driver


def wait_for(what: str, fn, timeout: float = WAIT):
    """Polls `fn` until it returns a truthy value (returned); exceptions count as not yet."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            v = fn()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - stale elements while the page re-renders
            last = e
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last error: {last!r})")


def confirm_delete(driver, row_sel: str, button_sel: str) -> None:
    """Clicks a row's delete button twice, as a user does: the first click arms it, the second
    deletes. The page's refresh may render the row again in between; the button made again
    stays armed, and each click goes to the button shown at that moment."""
    def button():
        return css(driver, row_sel).find_element("css selector", button_sel)
    wait_for("the first click", lambda: button().click() or True)
    wait_for("the button to ask for confirmation", lambda: button().text == "Confirm delete")
    wait_for("the confirming click", lambda: button().click() or True)


def css(driver, selector):
    from selenium.webdriver.common.by import By
    return driver.find_element(By.CSS_SELECTOR, selector)


def css_all(driver, selector):
    from selenium.webdriver.common.by import By
    return driver.find_elements(By.CSS_SELECTOR, selector)


def flash_text(driver) -> str:
    f = css(driver, "#flash")
    return f.text if f.is_displayed() else ""


def type_into(driver, selector: str, text: str) -> None:
    e = css(driver, selector)
    e.clear()
    e.send_keys(text)


def log_in(driver, server, screenshot=None) -> None:
    driver.get(f"http://127.0.0.1:{server.api_port}/")
    wait_for("the login form", lambda: css(driver, "#login-form"))
    type_into(driver, "#login-key", API_KEY)
    type_into(driver, "#login-secret", "wrong-secret")
    css(driver, "#login-form button").click()
    wait_for("the refusal", lambda: "authentication failed" in flash_text(driver))
    assert css_all(driver, "#login-form"), "a refused key pair must not log in"
    if screenshot:
        driver.save_screenshot(str(screenshot))
    assert driver.execute_script("return sessionStorage.getItem('pgbay.secret')") is None
    type_into(driver, "#login-secret", API_SECRET)
    css(driver, "#login-form button").click()
    wait_for("the services list", lambda: css(driver, "#services"))
    # The secret is kept in this tab's session only.
    assert driver.execute_script("return sessionStorage.getItem('pgbay.secret')") == API_SECRET
    assert driver.execute_script("return localStorage.length") == 0


def pool_series(text: str, service: str, pool: str) -> dict[str, float]:
    """The live series of one pool in Prometheus text (summed over users)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"^(pgbay_pool_\w+)\{(.*)\}\s+(\S+)", line)
        if not m or m.group(1) not in LIVE_SERIES:
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2)))
        if labels.get("service") == service and labels.get("pool") == pool:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
    return out


def cell(row, name: str) -> str:
    return row.find_element("css selector", f".m-{name}").text


def fmt(v: float) -> str:
    """A number as the page prints it (JavaScript's String(n))."""
    return str(int(v)) if float(v).is_integer() else str(v)


def test_console_is_served_without_signature(server):
    base = f"http://127.0.0.1:{server.api_port}"
    r = requests.get(base + "/", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert 'id="login-form"' in r.text
    for path, kind in (("/console/app.js", "text/javascript"), ("/console/style.css", "text/css")):
        r = requests.get(base + path, timeout=10)
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind), path
    # Everything else still needs a signature.
    r = requests.get(base + "/console/nope.js", timeout=10)
    assert r.status_code == 403 and "authentication failed" in r.json()["message"]


def test_console_flow(server, client, service, browser, tmp_path):
    driver = browser
    db, user, pool = unique("webdb"), unique("webuser"), unique("webpool")
    log_in(driver, server, screenshot=tmp_path / "console-login.png")

    # Services with their state.
    row = wait_for("the shared service's row",
                   lambda: css(driver, f'#services tr[data-service="{service.name}"]'))
    assert row.find_element("css selector", ".service-state").text == "running"
    driver.save_screenshot(str(tmp_path / "console-services.png"))

    row.find_element("css selector", "a.service-link").click()
    wait_for("the service page", lambda: css(driver, "#svc-title").text == service.name)
    wait_for("its databases", lambda: css_all(driver, '#databases tr[data-database="defaultdb"]'))
    assert css_all(driver, f'#users tr[data-user="{service.admin_user}"]')

    try:
        _forms(driver, server, client, service, db, user, pool, tmp_path)
    finally:
        svc = client.get_dbaas_service_pg(name=service.name)
        if find_pool(svc, pool):
            client.delete_dbaas_pg_connection_pool(service_name=service.name,
                                                   connection_pool_name=pool)
        if user in user_names(svc):
            client.delete_dbaas_postgres_user(service_name=service.name, username=user)
        if db in svc["databases"]:
            client.delete_dbaas_pg_database(service_name=service.name, database_name=db)
        print(f"\nconsole screenshots in {tmp_path}")


def _forms(driver, server, client, service, db, user, pool, tmp_path):
    from selenium.webdriver.support.ui import Select

    # A database and a user through their forms.
    type_into(driver, "#database-name", db)
    css(driver, "#create-database-form button").click()
    wait_for("the new database", lambda: css_all(driver, f'#databases tr[data-database="{db}"]'))
    type_into(driver, "#user-name", user)
    css(driver, "#create-user-form button").click()
    wait_for("the new user", lambda: css_all(driver, f'#users tr[data-user="{user}"]'))
    svc = client.get_dbaas_service_pg(name=service.name)
    assert db in svc["databases"] and user in user_names(svc)

    # A pool through the form.
    type_into(driver, "#pool-name", pool)
    Select(css(driver, "#pool-database")).select_by_value(db)
    Select(css(driver, "#pool-user")).select_by_value(user)
    Select(css(driver, "#pool-mode")).select_by_value("session")
    type_into(driver, "#pool-size", "3")
    css(driver, "#create-pool-form button").click()
    row_sel = f'#pools tbody[data-pool="{pool}"]'
    wait_for("the new pool's row", lambda: css_all(driver, row_sel))
    wait_for("the success message", lambda: f"Pool {pool} created" in flash_text(driver))
    api_pool = find_pool(client.get_dbaas_service_pg(name=service.name), pool)
    assert (api_pool["database"], api_pool["username"], api_pool["mode"], api_pool["size"]) == (
        db, user, "session", 3)

    # Its URI (shown with the password masked, whole in the copy button's source) works.
    row = css(driver, row_sel)
    uri_el = row.find_element("css selector", ".uri")
    uri = uri_el.get_attribute("data-uri")
    assert uri == api_pool["connection-uri"]
    assert uri.split("@")[0].split(":")[-1] not in uri_el.text, "password shown in clear"
    assert psql_ok(uri, "SELECT current_user || '@' || current_database()") == [f"{user}@{db}"]

    _live_numbers(driver, server, service, pool, uri, row_sel)
    driver.save_screenshot(str(tmp_path / "console-service.png"))

    # Size and mode changed through the row's inputs.
    row = css(driver, row_sel)
    size = row.find_element("css selector", "input.pool-size")
    size.clear()
    size.send_keys("7")
    Select(row.find_element("css selector", "select.pool-mode")).select_by_value("transaction")
    row.find_element("css selector", "button.pool-save").click()
    wait_for("the update message", lambda: f"Pool {pool} updated" in flash_text(driver))
    api_pool = find_pool(client.get_dbaas_service_pg(name=service.name), pool)
    assert (api_pool["size"], api_pool["mode"]) == (7, "transaction")
    wait_for("the new size in the row", lambda: css(driver, row_sel).find_element(
        "css selector", "input.pool-size").get_attribute("value") == "7")
    assert psql_ok(uri, "SELECT 1") == ["1"]

    # Delete: a first click arms the button, the second deletes.
    button = css(driver, row_sel).find_element("css selector", "button.pool-delete")
    button.click()
    wait_for("the button to ask for confirmation", lambda: css(driver, row_sel).find_element(
        "css selector", "button.pool-delete").text == "Confirm delete")
    assert find_pool(client.get_dbaas_service_pg(name=service.name), pool) is not None
    wait_for("the confirming click", lambda: css(driver, row_sel).find_element(
        "css selector", "button.pool-delete").click() or True)
    wait_for("the row to go", lambda: not css_all(driver, row_sel))
    assert find_pool(client.get_dbaas_service_pg(name=service.name), pool) is None

    # The user and the database go through their delete buttons too.
    for sel, what in ((f'#users tr[data-user="{user}"]', "user"),
                      (f'#databases tr[data-database="{db}"]', "database")):
        confirm_delete(driver, sel, f"button.{what}-delete")
        wait_for(f"the {what} row to go", lambda sel=sel: not css_all(driver, sel))
    svc = client.get_dbaas_service_pg(name=service.name)
    assert db not in svc["databases"] and user not in user_names(svc)


def _live_numbers(driver, server, service, pool, uri, row_sel):
    """With pgbay's per-pool series in /metrics: the row shows /metrics' numbers for the pool
    while a client holds a transaction open. Without them: every live cell shows a dash."""
    names = ("clients-active", "clients-waiting", "servers-active", "servers-idle")
    series = ("pgbay_pool_clients_active", "pgbay_pool_clients_waiting",
              "pgbay_pool_servers_active", "pgbay_pool_servers_idle")
    if "pgbay_pool_clients_active" not in metrics(server):
        time.sleep(4)  # more than one refresh
        row = css(driver, row_sel)
        assert [cell(row, n) for n in (*names, "tps")] == [DASH] * 5
        return
    with psycopg.connect(uri, connect_timeout=10) as conn:
        conn.execute("SELECT 1")  # opens a transaction, held until the block ends

        def shown_equals_metrics():
            m = pool_series(metrics(server), service.name, pool)
            row = css(driver, row_sel)
            shown = [cell(row, n) for n in names]
            want = [fmt(m[s]) for s in series if s in m]
            return shown == want and m["pgbay_pool_clients_active"] >= 1 \
                and m["pgbay_pool_servers_active"] >= 1

        wait_for("the row to show /metrics' numbers", shown_equals_metrics)
        wait_for("a TPS figure", lambda: re.fullmatch(r"\d+\.\d",
                                                      cell(css(driver, row_sel), "tps")))


def test_console_creates_and_deletes_a_service(server, client, browser, tmp_path):
    driver = browser
    name = unique("websvc")
    log_in(driver, server)
    type_into(driver, "#service-name", name)
    type_into(driver, "#service-plan", "hobbyist-2")
    css(driver, "#create-service-form button").click()
    row_sel = f'#services tr[data-service="{name}"]'
    try:
        wait_for("the new service's row", lambda: css_all(driver, row_sel))
        wait_for("it to run", lambda: css(driver, row_sel).find_element(
            "css selector", ".service-state").text == "running", timeout=120)
        wait_for("the success message", lambda: f"Service {name} created" in flash_text(driver),
                 timeout=120)
        svc = client.get_dbaas_service_pg(name=name)
        assert (svc["state"], svc["plan"]) == ("running", "hobbyist-2")

        # A refused creation shows the API's message.
        type_into(driver, "#service-name", name)
        css(driver, "#create-service-form button").click()
        wait_for("the conflict message",
                 lambda: flash_text(driver) == f"service {name} already exists")
        assert "error" in css(driver, "#flash").get_attribute("class")

        confirm_delete(driver, row_sel, "button.service-delete")
        wait_for("the row to go", lambda: not css_all(driver, row_sel), timeout=120)
        assert name not in [s["name"] for s in client.list_dbaas_services()["dbaas-services"]]
    finally:
        if name in [s["name"] for s in client.list_dbaas_services()["dbaas-services"]]:
            client.delete_dbaas_service_pg(name=name)
