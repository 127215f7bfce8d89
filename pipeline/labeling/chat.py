"""Conversations → token ids and a loss mask, rendered with the teacher's chat template.

Why this shape:
- A chat model was trained on its own template's text (role markers, BOS/EOS, end-of-turn
  tokens); labels of any other rendering would be labels of a text the teacher never sees at
  inference. So the template comes from the teacher's `tokenizer_config.json` (`chat_template`,
  or a `chat_template.jinja` beside it), or from `--chat-template FILE` for a tokenizer without
  one, and it is rendered by transformers' own jinja machinery (`render_jinja_template`: the
  sandboxed environment, `raise_exception`, `tojson`, `{% generation %}`), with the tokenizer's
  `bos_token`/`eos_token` strings, exactly as `apply_chat_template` renders it.
- Which tokens are the assistant's is found in the rendered *text*: a template with
  `{% generation %}` marks them itself; otherwise each assistant turn is rendered prefix by
  prefix (`messages[:i]` with the generation prompt, then `messages[:i + 1]`), and the text
  between the two is that turn (its content and end-of-turn marker). A template that renders a
  conversation differently from its prefixes is refused with the fix (add `{% generation %}`).
- The rendered text is tokenized once with offsets, without the post-processor's special tokens
  unless asked (the template writes BOS itself, as apply_chat_template assumes). A token is the
  assistant's when its characters overlap an assistant span; position t is trained when token
  t + 1 is (position t's label predicts token t + 1).
- The template's sha256 goes into the plan and the manifest: labels depend on it.
"""

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError

ROLES = ("system", "user", "assistant", "tool")
TRAIN_ON = ("all", "assistant", "last-turn")
TEMPLATE_FILE, TOKENIZER_CONFIG = "chat_template.jinja", "tokenizer_config.json"
BOS_CANDIDATES = ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>")
_GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")


class ChatError(ValueError):
    """A conversation that cannot be rendered; the caller adds the file and row."""


@dataclass(frozen=True)
class ChatTemplate:
    text: str
    source: str  # the file it came from, as a user would name it
    bos_token: str | None
    eos_token: str | None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def marks_generation(self) -> bool:
        return bool(_GENERATION.search(self.text))

    def describe(self) -> dict:
        return {"sha256": self.sha256, "source": self.source, "text": self.text}


def _token_text(value) -> str | None:
    """tokenizer_config.json spells a special token as a string or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _config_template(config: dict, where: Path) -> str | None:
    """`chat_template` of a tokenizer_config.json: a string, or a list of named templates (the
    one named "default")."""
    value = config.get("chat_template")
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        value = named.get("default")
        if value is None:
            raise PipelineError(f"{where}: chat_template lists {sorted(map(str, named))} but no "
                                "'default'; pass the one to use with --chat-template FILE")
    return value if isinstance(value, str) else None


def _read_config(folder: Path) -> dict:
    try:
        config = json.loads((folder / TOKENIZER_CONFIG).read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def template_of_folder(folder: Path | None) -> tuple[str, str] | None:
    """(template text, source) of a model/tokenizer folder, or None when it has none."""
    if folder is None:
        return None
    config = _read_config(folder)
    if (text := _config_template(config, folder / TOKENIZER_CONFIG)) is not None:
        return text, str(folder / TOKENIZER_CONFIG)
    if (folder / TEMPLATE_FILE).is_file():
        return (folder / TEMPLATE_FILE).read_text(), str(folder / TEMPLATE_FILE)
    return None


def load_template(path: str | None, folder: Path | None, tokenizer) -> ChatTemplate:
    """The template labeling renders with: --chat-template FILE, else the teacher's own."""
    if path:
        file = Path(path)
        if not file.is_file():
            raise PipelineError(f"--chat-template {path}: no such file; pass a jinja chat "
                                "template (e.g. data/chat/headline.jinja)")
        found = (file.read_text(encoding="utf-8", errors="replace"), str(file))
        if file.suffix == ".json":  # a tokenizer_config.json given as the template file
            found = template_of_folder(file.parent) if file.name == TOKENIZER_CONFIG else None
            if found is None:
                raise PipelineError(f"--chat-template {path}: no chat_template in it; pass a "
                                    ".jinja file or a tokenizer_config.json that has one")
    else:
        found = template_of_folder(folder)
        if found is None:
            raise PipelineError(f"the teacher's tokenizer ({folder}) has no chat template (no "
                                f"chat_template in {TOKENIZER_CONFIG}, no {TEMPLATE_FILE}); "
                                "pass one with --chat-template FILE")
    config = _read_config(folder) if folder is not None else {}
    tok = tokenizer.tokenizer
    eos = _token_text(config.get("eos_token")) or tok.id_to_token(tokenizer.eos_id)
    bos = _token_text(config.get("bos_token")) or next(
        (t for t in BOS_CANDIDATES if tok.token_to_id(t) is not None), None)
    return ChatTemplate(found[0], found[1], bos, eos)


def check_messages(messages, train_on: str) -> list[dict]:
    """A conversation as a list of {role, content} with known roles; an assistant turn to train
    on unless --train-on all; no empty assistant turn (it would teach "say nothing")."""
    if not isinstance(messages, list) or not messages:
        raise ChatError("messages must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) \
                or not isinstance(m.get("content"), str):
            raise ChatError(f"message {i} is not an object with string role and content")
        if m["role"] not in ROLES:
            raise ChatError(f"message {i} has unknown role {m['role']!r} (known: "
                            f"{', '.join(ROLES)}); fix the data or map the role")
        if m["role"] == "assistant" and not m["content"].strip():
            raise ChatError(f"message {i} is an empty assistant turn; drop the conversation "
                            "or fill the turn")
        out.append({"role": m["role"], "content": m["content"]})
    if train_on != "all" and not any(m["role"] == "assistant" for m in out):
        raise ChatError("no assistant turn to train on; drop the conversation or pass "
                        "--train-on all")
    return out


def _render(template: ChatTemplate, messages: list[dict], generation_prompt: bool = False,
            marks: bool = False):
    from transformers.utils.chat_template_utils import render_jinja_template

    special = {k: v for k, v in (("bos_token", template.bos_token),
                                 ("eos_token", template.eos_token)) if v is not None}
    try:
        texts, spans = render_jinja_template(
            [messages], chat_template=template.text, return_assistant_tokens_mask=marks,
            add_generation_prompt=generation_prompt, **special)
    except Exception as exc:  # jinja raises many types (TemplateError, TypeError, ...)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ChatError(f"chat template {template.source} failed to render ({first}); fix the "
                        "template or the conversation") from None
    return texts[0], [tuple(s) for s in spans[0]] if marks else []


def assistant_spans(template: ChatTemplate, messages: list[dict]) -> tuple[str, list]:
    """The rendered conversation and the character spans of its assistant turns (module doc)."""
    if template.marks_generation:
        return _render(template, messages, marks=True)
    text, _ = _render(template, messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before, _ = _render(template, messages[:i], generation_prompt=True)
        upto, _ = _render(template, messages[:i + 1])
        if not (upto.startswith(before) and text.startswith(upto)):
            raise ChatError(f"chat template {template.source} renders the conversation "
                            "differently from its prefixes, so assistant turns cannot be found; "
                            "wrap assistant text in {% generation %}...{% endgeneration %}")
        spans.append((len(before), len(upto)))
    return text, spans


def encode_conversation(template: ChatTemplate, tokenizer, messages: list[dict], train_on: str,
                        add_special_tokens: bool) -> tuple[np.ndarray, np.ndarray]:
    """(token ids [n] int32, trained positions [n] bool) of one checked conversation."""
    text, spans = assistant_spans(template, messages)
    if train_on == "last-turn":
        spans = spans[-1:]
    enc = tokenizer.tokenizer.encode(text, add_special_tokens=add_special_tokens)
    ids = np.asarray(enc.ids, dtype=np.int32)
    if train_on == "all":
        token_mask = np.ones(len(ids), dtype=bool)
    else:
        offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
        token_mask = np.zeros(len(ids), dtype=bool)
        for lo, hi in spans:
            token_mask |= (offsets[:, 0] < hi) & (offsets[:, 1] > lo) & \
                (offsets[:, 1] > offsets[:, 0])
    positions = np.zeros(len(ids), dtype=bool)
    positions[:-1] = token_mask[1:]  # position t predicts token t + 1
    return ids, positions


def dataset_template(manifest: dict) -> dict | None:
    """The chat template a 1.3 dataset was rendered with ({sha256, source, text}), or None."""
    found = (manifest.get("samples") or {}).get("chat_template")
    return found if isinstance(found, dict) and isinstance(found.get("text"), str) else None


def check_model_template(manifest: dict, folder: Path | None, who: str) -> None:
    """Refuse a model whose own chat template differs from the one the dataset was rendered
    with, as a different tokenizer is refused: the same conversation would be other tokens."""
    want = (manifest.get("tokenizer") or {}).get("chat_template_sha256")
    found = template_of_folder(folder) if want and folder is not None else None
    if found is None:
        return
    got = hashlib.sha256(found[0].encode()).hexdigest()
    if got != want:
        raise PipelineError(f"{who}: its chat template ({found[1]}, sha256 {got[:12]}) differs "
                            f"from the one the dataset was rendered with (sha256 {want[:12]}); "
                            "relabel with this model's template (--chat-template) or use a "
                            "model with the dataset's")


def write_template(manifest: dict, folder: Path) -> None:
    """Give a trained student the dataset's template (chat_template.jinja, which transformers'
    AutoTokenizer also reads), so it is served with the text it was trained on."""
    found = dataset_template(manifest)
    if found is not None:
        (folder / TEMPLATE_FILE).write_text(found["text"])
