"""The viewer's one HTML page: a Jinja2 template with autoescaping (every token, name and card
value is escaped by the template engine, never by hand), CSS and JS inline, and a content
security policy that forbids every load from elsewhere, so the page works offline, from a file,
and a hostile manifest or token cannot make it fetch anything.

Stable hooks for tests and scripts: each token is `<span class="tok" id="r{R}-t{T}"
data-token-id=ID [data-p=P]>` (row R of the page, position T); the popup is `#popup`, its
probability `#popup .p`, its alternatives `#popup tr.alt` (one per stored entry, rank order).

Size: a page holds every shown token's stored alternatives, so the popup's data is compact (each
distinct token's text once, entries as [id, p]) and shades are classes, not inline styles: about
300 bytes a token at k = 8 (20 rows of 2,048 tokens: 12 MB).
"""

import jinja2
from markdown_it import MarkdownIt

GENERATOR = "softlabel-pipeline view"  # the mark that says this tool wrote a page (view.py)
CSP = ("default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
       "img-src data:")

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:16px 24px;
 color:#111827;background:#fff}
h1{font-size:22px;margin:4px 0}h2{font-size:17px;margin:22px 0 8px;border-bottom:1px solid #e5e7eb}
.sub{color:#6b7280}.card{font-size:13px;background:#f9fafb;border:1px solid #e5e7eb;
 padding:4px 14px;border-radius:6px}.card table{border-collapse:collapse}
.card td,.card th{border:1px solid #d1d5db;padding:2px 8px}.card pre{overflow:auto}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(460px,1fr));gap:8px}
.plots svg{max-width:100%;height:auto}
.legend{display:flex;flex-wrap:wrap;gap:10px;align-items:center;font-size:12px;margin:6px 0}
.row{margin:10px 0;border:1px solid #e5e7eb;border-radius:6px}
.row-head{font-size:12px;color:#6b7280;background:#f9fafb;padding:3px 10px}
.text{font-family:ui-monospace,monospace;font-size:13px;white-space:pre-wrap;
 word-break:break-word;padding:8px 10px;line-height:1.9}
.tok{border-radius:3px;cursor:pointer;padding:1px 0;box-shadow:inset -1px 0 0 #fff}
.tok:hover,.tok.pinned{outline:2px solid #f59e0b}
.s-tail{background:#fee2e2;text-decoration:underline dotted #dc2626}
.s-untrained,.pad{color:#9ca3af}.s-first{color:#6b7280}
.k-special,.k-bytes,.k-id{font-style:italic;color:#7c3aed}
.tok.pad{color:#d1d5db;font-style:normal}
.seg-start{border-left:2px solid #10b981;margin-left:2px}
#popup{position:absolute;z-index:10;background:#fff;border:1px solid #9ca3af;border-radius:6px;
 box-shadow:0 4px 14px rgba(0,0,0,.18);padding:8px 10px;font-size:12px;min-width:230px}
#popup .head{font-weight:600;margin-bottom:4px}#popup .tt{font-family:ui-monospace,monospace;
 background:#f3f4f6;padding:0 3px;white-space:pre}#popup table{border-collapse:collapse;width:100%}
#popup td{padding:1px 4px}#popup tr.actual{background:#fef3c7;font-weight:600}
#popup .bar{height:8px;background:#2563eb;border-radius:2px}#popup .note{color:#6b7280}
.sw{display:inline-block;width:28px;height:14px;border-radius:3px;vertical-align:middle}
"""

JS = r"""
(function(){
const data = JSON.parse(document.getElementById('view-data').textContent);
const pop = document.getElementById('popup');
let pinned = null;
const NOTES = {first: "the row's first token: no position predicts it",
  untrained: 'outside the loss mask: not trained on, no labels stored',
  none: 'a tokens-only dataset: no teacher labels'};
// spaces made visible in the popup, where a token stands alone (" the" → "␣the")
function spaced(text){ return text.replace(/ /g, '\u2423'); }
function el(tag, cls, text){const e=document.createElement(tag); if(cls) e.className=cls;
  if(text!==undefined) e.textContent=text; return e;}
function fill(tok){
  pop.replaceChildren();
  const head = el('div','head'); head.append(el('span','tt',spaced(tok.text)), ' ');
  head.append(el('span','p', tok.state === 'tail' ? 'p \u2264 tail (' + tok.tail_text + ')'
                                                   : tok.p_text));
  pop.append(head);
  if(NOTES[tok.state]){pop.append(el('div','note',NOTES[tok.state])); return;}
  pop.append(el('div','note', tok.state === 'tail'
    ? 'not among the stored entries: its probability is at most the tail mass'
    : "the teacher's probability of this token"));
  const table = el('table','alts');
  tok.alts.forEach(function(a, i){
    const tr = el('tr', a.id === tok.id ? 'alt actual' : 'alt');
    tr.append(el('td','rank',String(i+1)));
    const t = el('td'); t.append(el('span','tt',spaced(a.text))); tr.append(t);
    tr.append(el('td','alt-p',a.p_text));
    const b = el('td'); const bar = el('div','bar'); bar.style.width = (a.p*80).toFixed(1)+'px';
    b.append(bar); tr.append(b); table.append(tr);});
  pop.append(table);
  pop.append(el('div','note','tail (every other id): ' + tok.tail_text));
}
// the compact entry of a span (render_page: [id, state, p_text, tail_text, [[id, p_text]...]])
function token(span){
  const m = /^r(\d+)-t(\d+)$/.exec(span.id), e = data.rows[+m[1]][+m[2]];
  return {id: e[0], text: data.texts[e[0]], state: e[1], p_text: e[2], tail_text: e[3],
    alts: e[4].map(function(a){
      return {id: a[0], text: data.texts[a[0]], p_text: a[1], p: parseFloat(a[1])};})};
}
function show(span){
  const tok = token(span);
  fill(tok); pop.hidden = false;
  const r = span.getBoundingClientRect();
  pop.style.left = Math.max(4, Math.min(window.scrollX + r.left,
    window.scrollX + document.documentElement.clientWidth - pop.offsetWidth - 8)) + 'px';
  pop.style.top = (window.scrollY + r.bottom + 4) + 'px';
}
function unpin(){ if(pinned){pinned.classList.remove('pinned'); pinned=null;} }
document.addEventListener('mouseover', function(e){
  const s = e.target.closest('.tok'); if(s && !pinned) show(s);});
document.addEventListener('mouseout', function(e){
  if(e.target.closest('.tok') && !pinned) pop.hidden = true;});
document.addEventListener('click', function(e){
  const s = e.target.closest('.tok');
  if(!s){ if(!e.target.closest('#popup')){unpin(); pop.hidden = true;} return; }
  const again = pinned === s; unpin();
  if(again){pop.hidden = true; return;}
  pinned = s; s.classList.add('pinned'); show(s);});
document.addEventListener('focusin', function(e){
  const s = e.target.closest('.tok'); if(s && !pinned) show(s);});
document.addEventListener('keydown', function(e){
  if(e.key === 'Escape'){unpin(); pop.hidden = true;}});
})();
"""

TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{{ csp }}">
<meta name="generator" content="{{ generator }}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ name }} · soft-label dataset</title><style>{{ css|safe }}{{ shades|safe }}</style>
</head>
<body>
<h1>Soft-label dataset <code>{{ name }}</code></h1>
<div class="sub">format {{ format }} · labels {{ labels }} · {{ rows|length }} rows of
split <b>{{ split }}</b> shown, figures from {{ "{:,}".format(positions) }} positions in
{{ row_groups }} row groups (seed {{ seed }})</div>
<h2>Card</h2><section class="card">{{ card|safe }}</section>
<h2>Plots</h2><section class="plots">{% for p in plots %}<figure>{{ p|safe }}</figure>{% endfor %}
</section>
<h2>Text</h2>
<div class="legend"><span>teacher's probability of each token:</span>
{% for q in (0, 3, 5, 8, 10) %}<span><span class="sw q{{ q }}"></span> {{ q / 10 }}</span>\
{% endfor %}
<span><span class="sw s-tail"></span> p ≤ tail (not stored)</span>
{% if masked %}<span class="s-untrained">grey: outside the loss mask</span>{% endif %}
{% if segmented %}<span class="seg-start">&nbsp;a new packed sample</span>{% endif %}
<span class="sub">hover or click a token for the teacher's top-k</span></div>
{% for row in rows %}{% set r = loop.index0 %}
<div class="row" id="row-{{ r }}" data-shard="{{ row.shard }}" data-shard-row="{{ row.row }}">
<div class="row-head">{{ row.shard }} · row {{ row.row }}</div>
<div class="text">{% for tok in row.tokens %}<span class="{{ classes(tok, loop.index0, row) }}" \
id="r{{ r }}-t{{ loop.index0 }}" data-token-id="{{ tok.id }}"\
{% if tok.state == 'p' %} data-p="{{ '%.6g'|format(tok.p) }}"{% endif %} tabindex="0">\
{{ tok.text }}</span>{% endfor %}</div></div>{% endfor %}
<div id="popup" role="tooltip" hidden></div>
<script type="application/json" id="view-data">{{ data|tojson }}</script>
<script>{{ js|safe }}</script>
</body></html>
"""


def shade(p: float) -> str:
    """The background of a token the teacher gave probability p: more blue, more probable."""
    return f"rgba(37,99,235,{0.06 + 0.8 * p:.3f})"


# Eleven shades, q0 (p < 0.05) to q10 (p ≥ 0.95); white text on the darker ones.
SHADES = "".join(f".q{q}{{background:{shade(q / 10)}}}" for q in range(11)) + \
    ",".join(f".q{q}" for q in range(6, 11)) + "{color:#fff}"


def classes(tok: dict, t: int, row: dict) -> str:
    names = ["tok", f"s-{tok['state']}", f"k-{tok['kind']}"]
    if tok["state"] == "p":
        names.append(f"q{round(tok['p'] * 10)}")
    if "seg" in tok:
        previous = row["tokens"][t - 1].get("seg") if t else tok["seg"]
        names += ["pad"] if tok["seg"] == 0 else ["seg-start"] if tok["seg"] != previous else []
    return " ".join(names)


def card_html(markdown: str) -> str:
    """The dataset card (Markdown) as HTML: raw HTML in it is escaped, images are not rendered
    (an image would be a load from elsewhere), links stay text-safe (markdown-it validates them)."""
    md = MarkdownIt("commonmark", {"html": False}).enable("table").disable("image")
    return md.render(markdown)


_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
_ENV.policies["json.dumps_kwargs"] = {"separators": (",", ":")}  # `tojson`, compact
_PAGE = _ENV.from_string(TEMPLATE)


def render_page(**fields) -> str:
    """The page; `fields` are the template's names (see view.py `write_view`)."""
    return _PAGE.render(csp=CSP, generator=GENERATOR, css=CSS, shades=SHADES, js=JS,
                        classes=classes, data=popup_data(fields["rows"]), **fields)


def popup_data(rows: list[dict]) -> dict:
    """What the popup reads: each distinct token's text once, and per token
    [id, state, p_text, tail_text, [[id, p_text], ...]] (viewsample.token_view's fields)."""
    texts = {}
    out = []
    for row in rows:
        entries = []
        for tok in row["tokens"]:
            texts[tok["id"]] = tok["text"]
            for a in tok.get("alts", ()):
                texts[a["id"]] = a["text"]
            p_text = tok["p_text"] if tok["state"] == "p" else ""  # the tail's: from tail_text
            entries.append([tok["id"], tok["state"], p_text,
                            tok.get("tail_text", ""),
                            [[a["id"], a["p_text"]] for a in tok.get("alts", ())]])
        out.append(entries)
    return {"texts": texts, "rows": out}
