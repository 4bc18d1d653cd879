"""The labelling page: plain server-rendered HTML with forms, nothing fetched from elsewhere.

Rendering on the server keeps the page working on a locked-down annotation machine (no CDN, scripts
disabled) and makes what the annotator sees testable: the page is the next open queue item, escaped, with one
button per rating (or "A is better" / "B is better" / "Tie" / "Both bad"), a skip link, and the annotator's
name carried in the URL so several people can label the same store without seeing their own finished items
again.

Keyboard shortcuts (shown on the page: 1/2 choose A/B, t tie, b both bad, s skip; the digits of the scale
rate) come from one small inline script, :data:`KEYS_SCRIPT`, that only clicks the button carrying that
key's ``data-key``. Everything works without it: each shortcut is a button or link.

Every form that changes the store carries the session's CSRF token (:mod:`.security`), and the page is sent
with a Content-Security-Policy that allows only its own inline style (by hash), forms posting back to this
server, and no framing (a labelling page inside another site's frame could be clicked through).
"""

from __future__ import annotations

import base64
import hashlib
from html import escape
from urllib.parse import urlencode

from .store import QueueItem

STYLE = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 70rem; padding: 1rem; color: #222; }
header { display: flex; justify-content: space-between; align-items: center; gap: 1rem; flex-wrap: wrap; }
pre { white-space: pre-wrap; word-break: break-word; background: #f5f5f5; padding: .75rem; border-radius: 4px;
      margin: .25rem 0 1rem; font-size: 1rem; min-height: 1.2rem; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 1rem; }
button { font-size: 1rem; padding: .5rem 1rem; margin: .2rem; cursor: pointer; }
.error { background: #fee; border: 1px solid #c00; padding: .5rem; }
.muted { color: #666; font-size: .9rem; }
kbd { border: 1px solid #999; border-radius: 3px; padding: 0 .3rem; font-size: .85rem; background: #fafafa; }
"""

#: Keyboard shortcuts: a key press clicks the button or link with that ``data-key`` (not while typing in a
#: field, not with modifier keys, not on auto-repeat), once per page (a held key cannot post twice).
KEYS_SCRIPT = """
document.addEventListener("keydown", function (e) {
  if (e.ctrlKey || e.metaKey || e.altKey || e.repeat || e.isComposing) return;
  var t = e.target;
  if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT" || t.isContentEditable)) return;
  var target = null;
  document.querySelectorAll("[data-key]").forEach(function (el) {
    if (el.getAttribute("data-key") === e.key.toLowerCase()) target = el;
  });
  if (!target || document.body.dataset.sent) return;
  e.preventDefault();
  document.body.dataset.sent = "1";
  target.click();
});
"""


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def security_headers() -> dict[str, str]:
    """Headers of every page: what the browser may load and run, no framing, no MIME sniffing."""
    return {"Content-Security-Policy": f"default-src 'none'; style-src {_csp_hash(STYLE)}; "
                                       f"script-src {_csp_hash(KEYS_SCRIPT)}; form-action 'self'; "
                                       "frame-ancestors 'none'; base-uri 'none'",
            "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
            "Cache-Control": "no-store"}


def _url(annotator: str, after: int = 0) -> str:
    query = {k: v for k, v in (("annotator", annotator), ("after", after)) if v}
    return "/" + (f"?{urlencode(query)}" if query else "")


def _hidden(item: QueueItem, annotator: str, csrf: str) -> str:
    return (f'<input type="hidden" name="item" value="{item.id}">'
            f'<input type="hidden" name="annotator" value="{escape(annotator)}">'
            f'<input type="hidden" name="csrf" value="{escape(csrf)}">')


def _button(name: str, value: str, label: str, key: str | None) -> str:
    shortcut = f' data-key="{key}" title="key {key}"' if key else ""
    hint = f" <kbd>{key}</kbd>" if key else ""
    return f'<button name="{name}" value="{value}"{shortcut}>{label}{hint}</button>'


def _rating_controls(scale: tuple[float, float]) -> str:
    """One button per point when the scale is a short integer range (1..5, 0..10); otherwise a number box.

    Points 0..9 get their digit as a shortcut."""
    lo, hi = scale
    if lo.is_integer() and hi.is_integer() and hi - lo <= 10:
        points = range(int(lo), int(hi) + 1)
        return "".join(_button("score", str(p), str(p), str(p) if 0 <= p <= 9 else None) for p in points)
    return (f'<input type="number" name="score" min="{lo:g}" max="{hi:g}" step="any" required> '
            '<button>Rate</button>')


def _item_html(item: QueueItem, annotator: str, scale: tuple[float, float], csrf: str) -> str:
    head = (f'<p class="muted">item #{item.id} ({item.kind}; {item.labels} of {item.required} label(s); '
            f'source {escape(item.source or "-")})</p><h3>Prompt</h3><pre>{escape(item.prompt)}</pre>')
    if item.kind == "rating":
        body = (f"<h3>Completion</h3><pre>{escape(item.completion_a)}</pre>"
                f'<form method="post" action="/label">{_hidden(item, annotator, csrf)}'
                f"<p>How good is this completion? ({scale[0]:g} = worst, {scale[1]:g} = best)</p>"
                f"{_rating_controls(scale)}</form>")
    else:
        body = (f'<div class="pair"><div><h3>A</h3><pre>{escape(item.completion_a)}</pre></div>'
                f'<div><h3>B</h3><pre>{escape(item.completion_b)}</pre></div></div>'
                f'<form method="post" action="/label">{_hidden(item, annotator, csrf)}<p>Which reply is better?</p>'
                + _button("choice", "a", "A is better", "1") + _button("choice", "b", "B is better", "2")
                + _button("choice", "tie", "Tie (equally good)", "t")
                + _button("choice", "both_bad", "Both bad", "b") + "</form>")
    skip = (f'<p><a href="{escape(_url(annotator, item.id))}" data-key="s">Skip this item</a> <kbd>s</kbd> '
            "(it stays in the queue)</p>")
    keys = ("1 A is better, 2 B is better, t tie, b both bad, s skip" if item.kind == "comparison" else
            "the digits rate, s skip")
    return head + body + skip + f'<p class="muted">Keyboard: {keys}.</p>'



def render_page(item: QueueItem | None, annotator: str, after: int, scale: tuple[float, float],
                counts: dict, error: str = "", csrf: str = "") -> str:
    """The whole page for ``annotator``: the item to label (or why there is none) and the queue's counts.

    ``csrf``: the session's CSRF token, put in every form that posts.
    """
    who = escape(annotator)
    if item is not None:
        main = _item_html(item, annotator, scale, csrf)
    elif after:
        main = (f"<p>No open item after #{after} that you have not labelled. "
                f'<a href="{escape(_url(annotator))}">Go back to the items you skipped</a>.</p>')
    else:
        main = ("<p>Nothing to label: the queue has no open item you have not labelled. Items arrive when a "
                "training run with <code>--reward=human</code> meets unrated completions, or through "
                "<code>POST /api/queue</code>.</p>")
    notice = f'<p class="error">{escape(error)}</p>' if error else ""
    anonymous = "" if annotator else '<p class="muted">Labels are stored as anonymous until you give a name.</p>'
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>rewardhub feedback</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>
<body><header><h2>rewardhub feedback</h2>
<form method="get" action="/"><label>Annotator <input name="annotator" value="{who}"
 placeholder="your name"></label> <button>Use this name</button></form></header>
<p class="muted">{counts["queue_open"]} open item(s), {counts["ratings"]} rating(s), {counts["comparisons"]}
 comparison(s) in {escape(str(counts["path"]))}</p>
{anonymous}{notice}{main}
<script>{KEYS_SCRIPT}</script>
</body></html>
"""
