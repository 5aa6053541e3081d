"""The HTML report in a real browser: headless Chromium opens it from a file URL with the network disabled.

Checks: no console errors (CSP violations included), no request other than the file itself and data: URIs, every
figure present and not blank, and hovering a UMAP point shows a tooltip with the point's class and its thumbnail.

The browser is driven over the Chrome DevTools Protocol through ``--remote-debugging-pipe`` (JSON messages on file
descriptors 3 and 4), so the test needs no Python package beyond the standard library. It skips, saying why, when no
Chromium/Chrome binary is found (set ``EMBEDLAB_CHROMIUM`` to its path) or the browser cannot start.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from embedlab.reports import load_results, render_report

EVIL = "<script>alert(1)</script>"

BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--mute-audio", "--remote-debugging-pipe")


def find_browser() -> str | None:
    env = os.environ.get("EMBEDLAB_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    return next((p for p in map(shutil.which, BROWSER_NAMES) if p), None)


class BrowserError(RuntimeError):
    pass


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (NUL-separated JSON on fds 3 and 4)."""

    def __init__(self, binary: str, *, timeout: float = 20.0) -> None:
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="embedlab-chromium-")
        cmd_r, self._cmd_w = os.pipe()  # we write commands; the browser reads fd 3
        self._res_r, res_w = os.pipe()  # the browser writes fd 4; we read

        def child_fds() -> None:  # runs in the child before exec: put the pipe ends on fds 3 and 4
            a, b = os.dup(cmd_r), os.dup(res_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     preexec_fn=child_fds, pass_fds=(3, 4))
        os.close(cmd_r)
        os.close(res_w)
        self._next_id = 0
        self._messages: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._closed = False
        self._stderr: list[bytes] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self._stderr.extend(self.proc.stderr or []), daemon=True).start()
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._res_r, 1 << 20)
            except OSError:
                chunk = b""
            if not chunk:
                with self._cond:
                    self._closed = True
                    self._cond.notify_all()
                return
            buf += chunk
            *complete, buf = buf.split(b"\0")
            with self._cond:
                self._messages += [json.loads(m) for m in complete if m]
                self._cond.notify_all()

    def stderr_tail(self) -> str:
        return b"".join(self._stderr).decode(errors="replace")[-800:]

    def _wait(self, match: Callable[[dict[str, Any]], bool], what: str, timeout: float | None = None) -> dict[str, Any]:
        deadline = time.monotonic() + (timeout or self.timeout)
        with self._cond:
            while True:
                for i, m in enumerate(self._messages):
                    if match(m):
                        return self._messages.pop(i)
                if self._closed:
                    raise BrowserError(f"browser closed while waiting for {what}: {self.stderr_tail()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BrowserError(f"timed out waiting for {what}")
                self._cond.wait(left)

    def send(self, method: str, params: dict[str, Any] | None = None, *, session: bool = True,
             timeout: float | None = None) -> dict[str, Any]:
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        reply = self._wait(lambda m, i=self._next_id: m.get("id") == i, method, timeout)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def wait_event(self, method: str, timeout: float | None = None) -> dict[str, Any]:
        return self._wait(lambda m: m.get("method") == method, method, timeout)

    def drain_events(self) -> list[dict[str, Any]]:
        """Every event received so far (moved to ``self.events``)."""
        with self._cond:
            events = [m for m in self._messages if "method" in m]
            self._messages = [m for m in self._messages if "method" not in m]
        self.events += events
        return self.events

    def open_page(self, width: int = 1280, height: int = 900, scale: float = 1.0) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True},
                                 session=False)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        self.send("Network.emulateNetworkConditions",
                  {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": scale, "mobile": False})

    def navigate(self, url: str) -> None:
        self.send("Page.navigate", {"url": url})
        self.wait_event("Page.loadEventFired")

    def eval(self, expression: str) -> Any:
        res = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in res:
            raise BrowserError(f"evaluate failed: {res['exceptionDetails']}")
        return res["result"].get("value")

    def screenshot(self, clip: dict[str, float] | None = None) -> bytes:
        params: dict[str, Any] = {"format": "png", "captureBeyondViewport": False}
        if clip:
            params["clip"] = {**clip, "scale": 1}
        return base64.b64decode(self.send("Page.captureScreenshot", params)["data"])

    def close(self) -> None:
        try:
            self.send("Browser.close", session=False, timeout=5)
        except (BrowserError, OSError):
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._cmd_w, self._res_r):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)


def start_browser() -> Chromium:
    """A started headless browser; the test skips without one, unless ``EMBEDLAB_REQUIRE_BROWSER=1`` (set by CI
    once it has installed Chromium), where a missing or broken browser fails the test instead."""
    miss = pytest.fail if os.environ.get("EMBEDLAB_REQUIRE_BROWSER") == "1" else pytest.skip
    binary = find_browser()
    if binary is None:
        miss("no headless Chromium/Chrome found (apt-get install chromium, or set EMBEDLAB_CHROMIUM)")
    try:
        browser = Chromium(binary)
        browser.send("Browser.getVersion", session=False)
    except (BrowserError, OSError) as e:
        miss(f"{binary} could not be started headless: {e}")
    return browser


def console_errors(events: list[dict[str, Any]]) -> list[str]:
    errors = []
    for e in events:
        m, p = e.get("method"), e.get("params", {})
        if m == "Runtime.exceptionThrown":
            errors.append(json.dumps(p.get("exceptionDetails", {}))[:300])
        elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            errors.append(p["entry"].get("text", ""))
    return errors


def _pca_layout(embeddings: np.ndarray, **settings: Any) -> tuple[np.ndarray, np.ndarray]:
    """Stand-in for umap_2d: a 2-D PCA (this test is about the page, not the layout; it keeps the test fast)."""
    x = embeddings - embeddings.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return (x @ vt[:2].T).astype(np.float32), np.arange(len(x), dtype=np.int64)


# The figure checks run in the page: canvases must have drawn pixels, SVGs a size and marks.
FIGURE_CHECKS = """(() => {
  const out = {canvases: [], svgs: [], imgs: []};
  document.querySelectorAll("figure.umap canvas.points").forEach(c => {
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let painted = 0;
    for (let i = 3; i < d.length; i += 4) if (d[i] > 0) painted++;
    out.canvases.push({model: c.closest("figure").dataset.model, w: c.width, h: c.height, painted});
  });
  document.querySelectorAll("figure svg").forEach(s => {
    if (s.closest("[hidden]")) return;
    const r = s.getBoundingClientRect();
    const marks = s.querySelectorAll("path.series, circle, rect, path.hist").length;
    out.svgs.push({cls: s.getAttribute("class"), w: r.width, h: r.height, marks});
  });
  document.querySelectorAll("img").forEach(i => out.imgs.push({w: i.naturalWidth, h: i.naturalHeight, ok: i.complete}));
  return out;
})()"""

# Find a UMAP point with no other point within 4 px, scroll its panel into view, return its page coordinates.
PICK_POINT = """(() => {
  const plot = window.embedlabReport.umap[%d];
  plot.fig.scrollIntoView({block: "center", behavior: "instant"});
  plot.draw();
  for (let i = 0; i < plot.n; i++) {
    let alone = true;
    for (let j = 0; j < plot.n && alone; j++) {
      if (j !== i && Math.hypot(plot.px[i] - plot.px[j], plot.py[i] - plot.py[j]) < 4) alone = false;
    }
    const hasThumb = plot.thumbs ? plot.thumbs[i] >= 0 : false;
    if (alone && (!plot.thumbs || hasThumb)) {
      const p = plot.clientXY(i);
      return {i, x: p.x, y: p.y, cls: plot.classOf(i), thumb: hasThumb, model: plot.data.model};
    }
  }
  return null;
})()"""

TOOLTIP = """(() => {
  const fig = window.embedlabReport.umap[%d].fig, tip = fig.querySelector(".umap-tip");
  const thumb = tip.querySelector(".tip-thumb");
  let painted = 0;
  if (!thumb.hidden) {
    const d = thumb.getContext("2d").getImageData(0, 0, thumb.width, thumb.height).data;
    for (let i = 3; i < d.length; i += 4) if (d[i] > 0) painted++;
  }
  const r = tip.getBoundingClientRect();
  return {hidden: tip.hidden, text: tip.querySelector(".tip-text").textContent, w: r.width, h: r.height,
          thumbHidden: thumb.hidden, thumbPainted: painted};
})()"""


@pytest.fixture(scope="module")
def report_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_reports import ood_metric, write_results, write_study

    root = tmp_path_factory.mktemp("browser")
    rng = np.random.default_rng(0)
    for s in range(2):
        write_results(root / "results", f"mm-seed{s}", seed=s, method="multimix", plots=True, thumbnails=True,
                      data_seed=s, metrics={
                          "accuracy": {"value": float(rng.uniform(0.8, 1)), "higher_is_better": True, "analysis": "accuracy"},
                          "alignment": {"value": float(rng.uniform(0, 1)), "higher_is_better": False, "analysis": "align_uniform"},
                          "uniformity": {"value": float(rng.uniform(-3, -1)), "higher_is_better": False, "analysis": "align_uniform"},
                          "ood/gaussian/energy/auroc": ood_metric(0.9, "gaussian", "energy", "auroc")})
    write_results(root / "results", "evil", name=EVIL, seed=0, method="erm", plots=True, thumbnails=True,
                  classes=["cat", "dog", "bird", EVIL], metrics={
                      "accuracy": {"value": 0.7, "higher_is_better": True, "analysis": "accuracy"},
                      "alignment": {"value": 0.5, "higher_is_better": False, "analysis": "align_uniform"},
                      "uniformity": {"value": -2.0, "higher_is_better": False, "analysis": "align_uniform"}})
    study = write_study(root / "results" / "toy")
    from embedlab.reports import load_report_inputs, umap_embed

    inputs = load_report_inputs([root / "results"])
    original = umap_embed.umap_2d
    umap_embed.umap_2d = _pca_layout  # type: ignore[assignment]
    try:
        out = render_report(inputs.results, root / "report.html", studies=inputs.studies, workers=1)
    finally:
        umap_embed.umap_2d = original  # type: ignore[assignment]
    assert study.exists() and load_results([root / "results"])
    return out


def test_report_in_headless_chromium(report_file: Path) -> None:
    browser = start_browser()
    try:
        browser.open_page()
        url = report_file.resolve().as_uri()
        browser.navigate(url)
        time.sleep(0.3)  # let the data: images decode and the ResizeObservers fire

        figs = browser.eval(FIGURE_CHECKS)
        assert len(figs["canvases"]) == 2  # the two seeds of "mm" are one model
        for c in figs["canvases"]:
            assert c["w"] > 100 and c["h"] > 100 and c["painted"] > 200, c
        kinds = {s["cls"].split()[-1] for s in figs["svgs"]}
        assert {"plane", "reliability", "histogram", "confusion"} <= kinds, kinds
        for s in figs["svgs"]:
            assert s["w"] > 50 and s["h"] > 50 and s["marks"] > 0, s
        assert figs["imgs"] and all(i["ok"] and i["w"] > 0 for i in figs["imgs"])

        # a screenshot of the first UMAP panel has non-background pixels
        rect = browser.eval("(() => { const w = document.querySelector('figure.umap .umap-wrap');"
                            " w.scrollIntoView({block: 'center', behavior: 'instant'}); const r = w.getBoundingClientRect();"
                            " return {x: r.left + scrollX, y: r.top + scrollY, width: r.width, height: r.height}; })()")
        png = browser.screenshot(rect)
        assert png.startswith(b"\x89PNG")
        try:  # Pillow comes with matplotlib (a seaborn dependency); without it the pixel count above must do
            from PIL import Image
        except ImportError:
            Image = None  # type: ignore[assignment]
        if Image is not None:
            import io

            pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
            background = np.array([251, 251, 252])
            assert (np.abs(pixels - background).sum(axis=2) > 60).mean() > 0.01

        # hovering a point shows its class and thumbnail
        for plot in range(2):
            point = browser.eval(PICK_POINT % plot)
            assert point is not None
            assert browser.eval(TOOLTIP % plot)["hidden"] is True
            browser.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": point["x"], "y": point["y"]})
            tip = browser.eval(TOOLTIP % plot)
            assert tip["hidden"] is False and tip["text"] == point["cls"] and tip["w"] > 0, (point, tip)
            assert tip["thumbHidden"] is False and tip["thumbPainted"] > 0, tip
            browser.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": 2, "y": 2})
            assert browser.eval(TOOLTIP % plot)["hidden"] is True
        # the hostile model name is text in the page, never markup: no extra script element, no alert dialog
        assert browser.eval("document.querySelectorAll('script').length") == 1 + 2 + 1  # code, 2 UMAP data, atlases
        evil_cells = browser.eval("[...document.querySelectorAll('th.model')].filter(t => t.textContent === %s).length"
                                  % json.dumps(EVIL))
        assert evil_cells >= 2  # summary table, runs table, ...

        # the OOD score selector switches the visible histograms
        shown = browser.eval("(() => { const s = document.getElementById('ood-score'); s.value = 'msp';"
                             " s.dispatchEvent(new Event('change'));"
                             " return [...document.querySelectorAll('#ood [data-score]')].filter(e => !e.hidden)"
                             ".map(e => e.dataset.score); })()")
        assert shown and set(shown) == {"msp"}

        events = browser.drain_events()
        assert console_errors(events) == []
        assert not [e for e in events if e.get("method") == "Page.javascriptDialogOpening"]
        requests = [e["params"]["request"]["url"] for e in events if e.get("method") == "Network.requestWillBeSent"]
        external = [u for u in requests if not (u == url or u.startswith("data:"))]
        assert requests and external == [], external
        failed = [e["params"] for e in events if e.get("method") == "Network.loadingFailed"]
        assert failed == []
    finally:
        browser.close()
