"""The browser check of the built book (npga.book.check_html): what it accepts and refuses.

The DOM analysis and the NetLog reading are pure functions, tested on hand-made pages; one
test runs the real browser on two tiny pages (skipped without Chromium).
"""

import json

import pytest

from npga.book import check_html as ch

GOOD = (
    '<html><body data-npga-overflow="0"><p>An equation <span class="math notranslate nohighlight">'
    '<mjx-container class="MathJax">x</mjx-container></span> and code '
    "<pre>print('$$ is fine in code')</pre></p></body></html>"
)


def test_a_rendered_page_passes():
    math, problems, players = ch.analyse_dom(GOOD)
    assert (math, problems, players) == (1, [], 0)


@pytest.mark.parametrize(
    "page, expected",
    [
        # chapter 5's broken equation: the TeX reached the page as text
        (GOOD.replace("and code", r"and $$(\delta\boldsymbol{\mu}_i, ...)$$"), "raw TeX"),
        (GOOD.replace("and code", r"and \(\mathbf{z}\)"), "raw TeX"),
        (GOOD.replace("<mjx-container", "<span").replace("</mjx-container>", "</span>"), "not typeset"),
        (GOOD.replace("and code", '<div class="output traceback">ValueError</div>'), "traceback"),
        (GOOD.replace('data-npga-overflow="0"', 'data-npga-overflow="1: pre &quot;import&quot;"'),
         'wider than the content column: 1: pre "import"'),
        (GOOD.replace(' data-npga-overflow="0"', ""), "overflow check did not run"),
        (GOOD.replace("and code", "<script>new Animation(frames, 'x'); frames[0] = 'a';</script>"),
         "1 player(s) but only 1 frame(s)"),
    ],
)
def test_a_broken_page_fails_and_says_why(page, expected):
    _, problems, _ = ch.analyse_dom(page)
    assert any(expected in p for p in problems), problems


def test_a_player_with_frames_passes():
    page = GOOD.replace("and code", "<script>new Animation(frames, 'x'); frames[0] = 'a'; frames[1] = 'b';</script>")
    _, problems, players = ch.analyse_dom(page)
    assert players == 1 and problems == []


def test_only_the_pages_own_requests_count(tmp_path):
    log = {
        "constants": {"logEventTypes": {"URL_REQUEST_START_JOB": 7, "OTHER": 8}},
        "events": [
            # Chromium's own background traffic: no page behind it
            {"type": 7, "params": {"url": "https://accounts.google.com/x", "network_isolation_key": "https://google.com"}},
            # the page's file:// site asked for a CDN script
            {"type": 7, "params": {"url": "https://cdn.example.org/mathjax.js",
                                   "network_isolation_key": "file:// [internally: file://]"}},
            {"type": 7, "params": {"url": "file:///book/_static/x.js", "network_isolation_key": "file://"}},
            {"type": 8, "params": {"url": "https://cdn.example.org/other.js", "network_isolation_key": "file://"}},
        ],
    }
    path = tmp_path / "net.json"
    path.write_text(json.dumps(log))
    assert ch.network_requests(path) == ["https://cdn.example.org/mathjax.js"]
    text = json.dumps(log)
    path.write_text(text[: text.rindex('{"type": 8')])  # cut short, as when the browser is killed
    assert ch.network_requests(path) == ["https://cdn.example.org/mathjax.js"]
    assert ch.network_requests(tmp_path / "missing.json") == []


@pytest.mark.skipif(ch.find_browser() is None, reason="no Chromium on this machine")
def test_the_browser_finds_a_cdn_script_and_a_missing_self_check(tmp_path):
    (tmp_path / "book").mkdir()
    ok = tmp_path / "book" / "ok.html"
    ok.write_text('<html><body><script>document.body.setAttribute("data-npga-overflow", "0")</script>'
                  "<p>plain text</p></body></html>")
    bad = tmp_path / "book" / "bad.html"
    bad.write_text('<html><body><script src="https://cdn.example.invalid/tex-chtml.js"></script>'
                   "<p>$$x$$</p></body></html>")
    good = ch.check_page(ch.find_browser(), ok, tmp_path, None, timeout=120)
    broken = ch.check_page(ch.find_browser(), bad, tmp_path, None, timeout=120)
    assert good.problems == []
    joined = " ".join(broken.problems)
    assert "raw TeX" in joined and "network request" in joined and "overflow check did not run" in joined


def test_player_embeds_every_frame_and_nothing_from_the_network():
    from npga.book.tools import player

    calls = []

    def draw(fig, v):
        calls.append(v)
        fig.add_subplot().imshow([[v, 0], [0, v]], vmin=0, vmax=3)

    out = player(draw, [0, 1, 2, 3], figsize=(1, 1), dpi=20, label="k")
    html = out.data if hasattr(out, "data") else out
    assert sorted(set(calls)) == [0, 1, 2, 3]
    assert "http://" not in html and "https://" not in html
    _, problems, players = ch.analyse_dom(f'<body data-npga-overflow="0">{html}</body>')
    assert players == 1 and problems == []
    with pytest.raises(ValueError, match="no values"):
        player(draw, [])
