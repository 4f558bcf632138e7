"""The web page (web/) in headless Chromium, for its tests and its picture; a first reading can
skip it.

Debian's chromium and chromium-driver packages give the browser and the driver, and the selenium
package (a test-only dependency) speaks to the driver. Both are named by their paths: given the
driver's, selenium skips its Selenium Manager, which would otherwise look for (and download) one. The browser logs every request the page makes, to check that none leaves the
page's origin.
"""
import json
import os
import shutil
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlencode, urlsplit

WEB = Path(__file__).resolve().parent.parent / "web"
CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
CHROMEDRIVER = "/usr/bin/chromedriver"
PAGE_FILES = ("index.html", "page.js", "node_modules")


def missing():
    """What is missing to run the page in a browser (a sentence naming the fix), or None."""
    if not any(os.path.exists(path) for path in CHROMIUM):
        return "no Chromium (apt-get install chromium chromium-driver)"
    if not os.path.exists(CHROMEDRIVER):
        return f"no {CHROMEDRIVER} (apt-get install chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "no selenium package (python -m pip install selenium)"
    if not (WEB / "node_modules" / "onnxruntime-web").is_dir():
        return "no web/node_modules (npm ci --prefix web)"
    return None


def site(folder, files=None):
    """Folder made a copy of the page to serve (its files linked, not copied), with these extra
    files {name: source path} beside it: a model, images."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in PAGE_FILES:
        (folder / name).symlink_to(WEB / name)
    for name, source in (files or {}).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, folder / name)
    return folder


@contextmanager
def serving(folder):
    """The origin (http://127.0.0.1:PORT) of web/serve.py's server of folder, while in the block."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("serve", WEB / "serve.py")
    serve = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serve)
    server = serve.server(folder, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class Page:
    """Headless Chromium, driven through chromedriver; close() ends both."""

    def __init__(self, width=900, height=700):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = next(path for path in CHROMIUM if os.path.exists(path))
        for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", f"--window-size={width},{height}",
                         "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync"):
            options.add_argument(argument)
        options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
        self.driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        self.requests = []

    def before_scripts(self, source):
        """Run this JavaScript in every page, before the page's own scripts."""
        self.driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": source})

    def score(self, origin, image=None, timeout=120, **query):
        """Open index.html?image=...&age=..., wait for the result; the result element's data
        attributes ({status, probability?, decision?, warning?})."""
        parameters = {key: value for key, value in {"image": image, **query}.items()
                      if value not in (None, "")}
        self.driver.get(f"{origin}/index.html?{urlencode(parameters)}")
        deadline = time.monotonic() + timeout
        while True:
            found = self.driver.execute_script(
                "return Object.assign({}, document.getElementById('result').dataset)")
            if found.get("status") == "done" or found.get("status", "").startswith("error"):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the page gave no result in {timeout} s: {found}")
            time.sleep(0.05)
        self.requests += self.logged_requests()
        return found

    def logged_requests(self):
        """The URL of every request made since the last call (the browser's network log)."""
        urls = []
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                urls.append(message["params"]["request"]["url"])
        return urls

    def foreign_requests(self, origin):
        """The requests made so far to anywhere but origin (data: URLs stay in the page)."""
        return [url for url in self.requests
                if not url.startswith("data:")
                and f"{urlsplit(url).scheme}://{urlsplit(url).netloc}" != origin]

    def close(self):
        self.driver.quit()
