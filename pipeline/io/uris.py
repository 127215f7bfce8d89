"""Credentials never travel with a dataset or appear in what the tool prints.

A user may type a URI that carries a secret: user info (`s3://KEY:SECRET@bucket/...`) or a
query token (`https://host/x?X-Amz-Signature=...`, `?token=...`, Azure's `?sig=...`). The
manifest, plan and card record the corpus URI and teacher spec as typed, and error messages
name the location that failed, so both go through here first: `redact` for one URI that is
stored, `redact_text` for a message that may hold several. The storage layer itself still gets
the URI as typed (the secret is what makes it readable); only what is written down or shown is
cleaned. This module sits in pipeline/io, below everything that stores or prints a location.
"""

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# Query parameters that authorise a request rather than name a resource: presigned S3 and GCS
# URLs (every X-Amz-* / X-Goog-* field: the signature is useless without them, and they name the
# signer), SAS tokens, OAuth and API keys. Matched on the lower-cased name.
_SECRET_PARAM = re.compile(
    r"(x-amz-.*|x-goog-.*|.*token.*|.*signature.*|sig|se|sp|sv|sr|st|spr|skoid|sktid|"
    r".*secret.*|.*password.*|passwd|pwd|.*key.*|.*credential.*|auth.*|code|session.*)")
# `KEY:SECRET@` right after the scheme, where the secret may hold "/" (AWS secret keys do), so
# urlsplit alone would read part of it as the path.
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^@/?#]*:[^@?#]*@")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")


def _clean_query(query: str) -> str:
    kept = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True)
            if not _SECRET_PARAM.fullmatch(k.lower())]
    return urlencode(kept)


def redact(uri) -> str:
    """`uri` without user info or secret query parameters; anything that is not a
    `scheme://` URI (a local path, `builtin:...`, `hf:org/name`) is returned unchanged."""
    text = str(uri)
    if "://" not in text:
        return text
    text = _USERINFO.sub(r"\1", text, count=1)
    try:
        parts = urlsplit(text)
    except ValueError:  # e.g. an unbalanced "[" in the host: keep nothing after the scheme
        return text.split("://", 1)[0] + "://<unparseable>"
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, _clean_query(parts.query),
                       parts.fragment))


def secrets_in(uri) -> list[str]:
    """The secret pieces of a URI as typed (user name, password, secret query values), so a
    message that quotes them outside any URI (a client library's "Invalid bucket name
    'KEY:SECRET@bucket'") can be masked too. Pieces under 4 characters are left alone."""
    text = str(uri)
    if "://" not in text:
        return []
    found, rest = [], text
    if m := _USERINFO.match(text):
        info = m.group(0)[len(m.group(1)):-1]
        # and the secret's pieces between "/": a client splits bucket from key there
        found = [info, *info.split(":", 1), *re.split(r"[:/]", info)]
        rest = m.group(1) + text[m.end():]
    try:
        parts = urlsplit(rest)
    except ValueError:
        return found
    if "@" in parts.netloc:
        found.append(parts.netloc.rsplit("@", 1)[0])
    found += [v for k, v in parse_qsl(parts.query, keep_blank_values=True)
              if _SECRET_PARAM.fullmatch(k.lower())]
    return sorted({s for s in found if len(s) >= 4}, key=len, reverse=True)


def redact_text(text: str, secrets=()) -> str:
    """Every `scheme://...` URI inside a message, redacted, and any of `secrets` (from
    `secrets_in` of what the user typed) masked wherever else it appears."""
    text = _URI.sub(lambda m: redact(m.group(0)), str(text))
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def has_secret(uri) -> bool:
    """True when `redact` would change `uri` (a check for tests and for `publish`)."""
    return redact(uri) != str(uri)
