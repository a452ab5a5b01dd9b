"""The human annotation page: its server over real HTTP (saving, restart, bad requests) and the page
itself driven in headless Chromium through Selenium, clicking and typing through a small study and
checking the saved verdicts and the table built from them. The browser test skips, saying why,
where Chromium, chromedriver or Selenium is missing."""

from __future__ import annotations

import json
import shutil
import threading
import urllib.error
import urllib.request

import pytest

from lima_jax.evaluate.annotate import AnnotationStudy, make_server
from lima_jax.evaluate.cli import main
from lima_jax.evaluate.responses import Response


def _pairs(n):
    return [(Response(f"p{i}", 0, f"prompt {i}", f"answer of lima {i}"),
             Response(f"p{i}", 0, f"prompt {i}", f"answer of gpt {i}")) for i in range(n)]


class Running:
    """A study served on a free port in a background thread."""

    def __init__(self, out, n=4):
        self.study = AnnotationStudy(_pairs(n), out, a_name="lima", b_name="gpt", annotator="ann")
        self.server = make_server(self.study, port=0)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def _post(url, body):
    request = urllib.request.Request(url + "/api/verdict", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})  # as the page sends it
    with urllib.request.urlopen(request, timeout=5) as r:
        return json.loads(r.read())


def _verdicts(out):
    return {r["id"]: r for r in map(json.loads, (out / "verdicts.jsonl").read_text().splitlines())}


def test_server_saves_each_verdict_and_survives_a_restart(tmp_path):
    out = tmp_path / "ann"
    run = Running(out)
    with urllib.request.urlopen(run.url + "/api/state", timeout=5) as r:
        state = json.loads(r.read())
    assert (state["done"], state["total"], state["item"]["id"]) == (0, 4, "p0")
    left_is_a = run.study.left_is_a["p0"]
    assert state["item"]["left"] == f"answer of {'lima' if left_is_a else 'gpt'} 0"
    state = _post(run.url, {"id": "p0", "choice": "left"})
    assert state["done"] == 1 and state["item"]["id"] == "p1"
    assert _verdicts(out)["p0"]["verdict"] == ("a" if left_is_a else "b")  # saved at once
    with pytest.raises(urllib.error.HTTPError) as e:
        _post(run.url, {"id": "p1", "choice": "sideways"})
    assert e.value.code == 400
    run.stop()

    run = Running(out)  # a restart continues where the annotator stopped, sides unchanged
    assert run.study.state()["done"] == 1 and run.study.left_is_a["p0"] == left_is_a
    run.stop()


def _browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("headless browser test needs chromium and chromedriver on PATH "
                    "(Debian: apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def test_annotation_page_in_headless_chromium(tmp_path):
    browser = _browser()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    out = tmp_path / "ann"
    run = Running(out, n=4)
    wait = WebDriverWait(browser, 10)

    def progress(text):
        wait.until(lambda d: d.find_element(By.ID, "progress").text == text)

    def current_left():
        return browser.find_element(By.ID, "left").text

    try:
        browser.get(run.url)
        progress("(0 / 4 judged)")
        assert browser.find_element(By.ID, "prompt").text == "prompt 0"
        expected = {}
        for i, action in enumerate(["click:btn-left", "key:3", "click:btn-tie"]):
            left_is_lima = "lima" in current_left()
            kind, what = action.split(":")
            if kind == "click":
                browser.find_element(By.ID, what).click()
            else:
                browser.find_element(By.TAG_NAME, "body").send_keys(what)
            choice = {"btn-left": "left", "3": "right", "btn-tie": "tie"}[what]
            expected[f"p{i}"] = ("tie" if choice == "tie" else
                                 "a" if (choice == "left") == left_is_lima else "b")
            progress(f"({i + 1} / 4 judged)")
        assert {k: v["verdict"] for k, v in _verdicts(out).items()} == expected

        run.stop()  # restart the server: the page picks up at the last item
        run = Running(out, n=4)
        browser.get(run.url)
        progress("(3 / 4 judged)")
        assert browser.find_element(By.ID, "prompt").text == "prompt 3"
        left_is_lima = "lima" in current_left()
        browser.find_element(By.TAG_NAME, "body").send_keys("1")
        expected["p3"] = "a" if left_is_lima else "b"
        wait.until(lambda d: d.find_element(By.ID, "done").is_displayed())
        progress("(4 / 4 judged)")
    finally:
        browser.quit()
        run.stop()
    assert {k: v["verdict"] for k, v in _verdicts(out).items()} == expected
    table = json.loads((out / "table.json").read_text())
    wins = list(expected.values())
    assert (table["a"], table["b"], table["judged"]) == ("lima", "gpt", 4)
    assert (table["a_wins"], table["ties"], table["b_wins"]) == (wins.count("a"), 1, wins.count("b"))
    # the human verdicts feed the same tables and chart as a judge's
    assert main(["table", "--verdicts", str(out), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "winrate.png").stat().st_size > 1000


EVIL_PAGE = """<!doctype html><html><body>
<form id="f" method="POST" action="TARGET/api/verdict" enctype="text/plain">
<input name='{"id": "p0", "choice": "left", "x": "' value='"}'></form>
<script>
const body = JSON.stringify({id: "p0", choice: "left"});
Promise.allSettled([
  fetch("TARGET/api/verdict", {method: "POST", mode: "no-cors", body: body, headers: {"Content-Type": "text/plain"}}),
  fetch("TARGET/api/verdict", {method: "POST", body: body, headers: {"Content-Type": "application/json"}}),
]).then(results => { document.title = "sent " + results.map(r => r.status).join(" "); });
</script></body></html>"""


def test_a_page_from_another_origin_cannot_record_in_headless_chromium(tmp_path):
    """Another site's page (here another port: another origin) posts a verdict every way a page
    can: a text/plain fetch (no preflight), a JSON fetch (preflight, never granted) and a
    text/plain form; the server records none of them."""
    browser = _browser()
    import http.server

    from selenium.webdriver.support.ui import WebDriverWait

    out = tmp_path / "ann"
    run = Running(out, n=2)
    page = EVIL_PAGE.replace("TARGET", run.url).encode()

    class Evil(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

    evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Evil)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        browser.get(f"http://127.0.0.1:{evil.server_address[1]}/")
        WebDriverWait(browser, 10).until(lambda d: d.title.startswith("sent"))
        browser.execute_script("document.getElementById('f').submit()")
        WebDriverWait(browser, 10).until(lambda d: "/api/verdict" in d.current_url)
        assert "refused" in browser.page_source or "application/json" in browser.page_source
    finally:
        browser.quit()
        evil.shutdown()
        evil.server_close()
        run.stop()
    assert not (out / "verdicts.jsonl").exists() or (out / "verdicts.jsonl").read_text() == ""
    assert run.study.state()["done"] == 0
