"""Open every page of the built book in headless Chromium and check what a reader would see.

``make test`` runs this after building the mini profile's HTML:

    python -m npga.book.check_html [--html _build/html] [--shots _build/screenshots]

For each page the browser loads the file (``file://``, no server), runs its scripts --
MathJax typesets the equations -- and dumps the resulting DOM; a second run saves a
screenshot to ``_build/screenshots/``. A page passes when:

* **math rendered**: every ``math`` element became MathJax output and no raw TeX
  delimiters (``\\(``, ``\\[``, ``$$``) are left in the text outside code;
* **no errors**: no cell output is a traceback;
* **offline**: the browser requested nothing from the network (Chromium's NetLog is
  searched for http(s) requests; MathJax and every script are served from ``_static``);
* **no sideways scrolling**: no code cell, output or table in the page is wider than the
  content column (measured by ``_static/npga_selfcheck.js`` in the page, which writes
  what overflows into ``<body data-npga-overflow=...>``);
* **players play**: every kernel-free player (matplotlib's ``to_jshtml``) has its frames.

Without a Chromium binary the check is skipped with a message, except under ``CI`` (the
environment variable), where a missing browser is an error: ``.ci/run`` installs it.
Exit status 1 when any page fails, with one line per problem.
"""

from __future__ import annotations

import argparse
import html as html_lib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from npga.config import REPO_ROOT

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Text that only unrendered TeX leaves behind (code, scripts and MathJax output removed first).
RAW_TEX = re.compile(r"\\\(|\\\)|\\\[|\\\]|\$\$|\\(?:mathbf|frac|boldsymbol|sum|delta|gamma)\b")
_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--mute-audio",
          "--no-first-run", "--disable-extensions", "--disable-background-networking",
          "--disable-component-update", "--disable-sync", "--metrics-recording-only",
          "--disable-default-apps", "--no-default-browser-check",
          # Chromium's own background traffic (network time, field trials) is not the page's
          "--disable-features=NetworkTimeServiceQuerying,OptimizationHints,Translate,MediaRouter",
          "--disable-field-trial-config"]


@dataclass
class PageReport:
    page: str
    math: int = 0  # MathJax containers in the page
    problems: list[str] = field(default_factory=list)
    players: int = 0
    screenshot: str | None = None


def find_browser() -> str | None:
    """The first Chromium-like browser on PATH (``NPGA_BROWSER`` overrides)."""
    env = os.environ.get("NPGA_BROWSER")
    if env:
        return env
    return next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)


def _strip(dom: str) -> str:
    """The page's visible text outside code, scripts, styles and MathJax output."""
    for tag in ("script", "style", "pre", "code", "mjx-container", "mjx-assistive-mml", "textarea"):
        dom = re.sub(rf"<{tag}\b.*?</{tag}>", " ", dom, flags=re.S | re.I)
    text = re.sub(r"<[^>]+>", " ", dom)
    return html_lib.unescape(text)


def network_requests(netlog: Path) -> list[str]:
    """http(s) URLs that the *page* asked for, from a Chromium NetLog file.

    Chromium itself talks to Google in the background (network time, accounts, spelling
    dictionaries) even headless; those requests have no page behind them. A page's own
    requests are the URL_REQUEST_START_JOB events whose network isolation key (or
    site-for-cookies) is the page's ``file://`` site.
    """
    if not netlog.is_file():
        return []
    text = netlog.read_text(errors="replace")
    try:
        log = json.loads(text)
    except json.JSONDecodeError:  # a log cut short when the browser was killed: keep whole events
        cut = text[: text.rfind("},") + 1] if "}," in text else ""
        try:
            log = json.loads(cut + "]}")
        except json.JSONDecodeError:
            return [f"(unreadable NetLog {netlog})"]
    names = {v: k for k, v in log.get("constants", {}).get("logEventTypes", {}).items()}
    urls = set()
    for e in log.get("events", []):
        p = e.get("params") or {}
        url = str(p.get("url", ""))
        if names.get(e.get("type")) != "URL_REQUEST_START_JOB" or not url.startswith(("http://", "https://")):
            continue
        if "file://" in str(p.get("network_isolation_key", "")) or "site=file://" in str(p.get("site_for_cookies", "")):
            urls.add(url)
    return sorted(urls)


def analyse_dom(dom: str) -> tuple[int, list[str], int]:
    """(MathJax containers, problems, players) of a dumped DOM (pure: tested on strings)."""
    problems = []
    math = len(re.findall(r"<mjx-container\b", dom))
    unrendered = len(re.findall(r'class="math notranslate nohighlight"', dom)) - len(
        re.findall(r'class="math notranslate nohighlight"[^>]*>\s*<mjx-container', dom))
    text = _strip(dom)
    raw = sorted(set(m.group(0) for m in RAW_TEX.finditer(text)))
    if raw:
        i = RAW_TEX.search(text).start()
        snippet = " ".join(text[max(0, i - 60): i + 60].split())
        problems.append(f"raw TeX in the text ({', '.join(raw)}): ...{snippet}...")
    if unrendered > 0:
        problems.append(f"{unrendered} math element(s) not typeset by MathJax")
    if "Traceback (most recent call last)" in text or re.search(r'class="[^"]*\btraceback\b', dom):
        problems.append("a cell output is a traceback")
    m = re.search(r'data-npga-overflow="([^"]*)"', dom)
    if m is None:
        problems.append("the overflow check did not run (no data-npga-overflow on <body>)")
    elif m.group(1) not in ("", "0"):
        problems.append(f"wider than the content column: {html_lib.unescape(m.group(1))}")
    players = len(re.findall(r"new Animation\(frames", dom))
    n_frames = len(re.findall(r"frames\[\d+\]\s*=", dom))
    if players and n_frames < 2 * players:
        problems.append(f"{players} player(s) but only {n_frames} frame(s)")
    return math, problems, players


def check_page(browser: str, page: Path, html_root: Path, shots: Path | None, timeout: float = 90.0) -> PageReport:
    """Load one page in headless Chromium; the DOM after its scripts ran, and a screenshot."""
    rel = str(page.relative_to(html_root))
    rep = PageReport(rel)
    url = page.resolve().as_uri()
    with tempfile.TemporaryDirectory() as tmp:
        netlog = Path(tmp) / "net.json"
        cmd = [browser, *_FLAGS, f"--user-data-dir={tmp}/profile", f"--log-net-log={netlog}",
               "--virtual-time-budget=20000", "--window-size=1280,1000", "--dump-dom", url]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            rep.problems.append(f"the browser did not finish within {timeout:.0f} s")
            return rep
        if out.returncode != 0 or "<html" not in out.stdout:
            rep.problems.append(f"the browser failed (exit {out.returncode}): {out.stderr.strip()[-300:]}")
            return rep
        rep.math, problems, rep.players = analyse_dom(out.stdout)
        rep.problems += problems
        requests = network_requests(netlog)
        if requests:
            rep.problems.append(f"{len(requests)} network request(s), e.g. {requests[0]}")
        if shots is not None:
            shot = shots / (rel.replace("/", "__").removesuffix(".html") + ".png")
            shot.parent.mkdir(parents=True, exist_ok=True)
            cmd = [browser, *_FLAGS, f"--user-data-dir={tmp}/profile2", "--virtual-time-budget=20000",
                   "--window-size=1280,6000", f"--screenshot={shot}", url]
            subprocess.run(cmd, capture_output=True, timeout=timeout)
            rep.screenshot = str(shot) if shot.is_file() else None
    return rep


def pages(html_root: Path) -> list[Path]:
    """The book's own pages (index and chapters), not Sphinx's search and index pages."""
    out = [html_root / "index.html"] if (html_root / "index.html").is_file() else []
    out += sorted((html_root / "book").glob("*.html"))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--html", type=Path, default=REPO_ROOT / "_build" / "html")
    ap.add_argument("--shots", type=Path, default=REPO_ROOT / "_build" / "screenshots")
    ap.add_argument("--report", type=Path, default=None, help="also write the reports as JSON here")
    args = ap.parse_args(argv)
    browser = find_browser()
    if browser is None:
        msg = f"no Chromium found (looked for {', '.join(BROWSERS)}; set NPGA_BROWSER)"
        if os.environ.get("CI"):
            print(f"ERROR: {msg}; CI needs it (.ci/run installs chromium)", file=sys.stderr)
            return 1
        print(f"SKIPPED the browser check: {msg}")
        return 0
    found = pages(args.html)
    if not found:
        print(f"ERROR: no pages under {args.html}: build the book first", file=sys.stderr)
        return 1
    reports = []
    for page in found:
        rep = check_page(browser, page, args.html, args.shots)
        reports.append(rep)
        status = "ok" if not rep.problems else "FAIL"
        print(f"  {rep.page}: {status} ({rep.math} equations, {rep.players} players)")
        for p in rep.problems:
            print(f"      - {p}")
    if args.report:
        args.report.write_text(json.dumps([r.__dict__ for r in reports], indent=1))
    bad = [r for r in reports if r.problems]
    print(f"browser check: {len(reports) - len(bad)} of {len(reports)} pages pass; screenshots in {args.shots}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
