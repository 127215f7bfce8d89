"""The `pipeline view` page in a real headless browser (Debian's chromium, driven by selenium
through /usr/bin/chromedriver: selenium-manager never downloads a driver). One browser for the
module. What a user sees is checked against the dataset, read here through the reference reader:
a token's text and shown probability, its top-k popup, "p ≤ tail", the chat loss mask; no
console error. Screenshots go to outputs/test-artifacts/ (ignored by git) for a person to look at.

`make test` installs chromium and chromium-driver when they are missing; without them these
tests fail (they do not skip), saying so."""

import shutil
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from tests.conftest import REPO, run_cli
from tests.pipeline.sharing import viewdata
from tests.pipeline.sharing.viewdata import dataset_row, teacher_says

bbc, chat = viewdata.bbc, viewdata.chat
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ARTIFACTS = REPO / "outputs/test-artifacts"


@pytest.fixture(scope="module")
def browser():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).is_file()]
    if missing or not shutil.which("chromium"):
        pytest.fail(f"{', '.join(missing) or 'chromium'} not installed: `make test` installs "
                    "chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1280,1400", "--disable-gpu"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def open_page(browser, dataset: Path, out: Path, *args):
    run_cli("view", dataset, "--out", out, *args)
    browser.get(out.as_uri())
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors  # no script error, no blocked load
    return browser


def shown(browser, css: str):
    from selenium.webdriver.common.by import By

    return browser.find_elements(By.CSS_SELECTOR, css)


def click(browser, element):
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    element.click()
    popup = shown(browser, "#popup")[0]
    assert popup.is_displayed()
    return popup


def page_row(browser, r: int, dataset: Path) -> dict:
    """Row r of the page, as the dataset has it (the page names its shard and row)."""
    div = shown(browser, f"#row-{r}")[0]
    return dataset_row(dataset, div.get_attribute("data-shard"),
                       int(div.get_attribute("data-shard-row")))


def test_a_token_shows_its_text_probability_and_top_k(browser, bbc, tmp_path):
    open_page(browser, bbc, tmp_path / "view.html", "--rows", "6")
    tok = Tokenizer.from_file(str(bbc / "tokenizer.json"))
    row = page_row(browser, 0, bbc)
    ids = row["input_ids"].tolist()
    said = {t: teacher_says(row, t) for t in range(1, len(ids))}
    # the token the teacher was surest of, spelled in plain letters: text compares exactly
    t = max((t for t in said if said[t][0] == "p" and tok.decode([ids[t]]).strip().isalpha()),
            key=lambda t: said[t][1])
    _, p, entries = said[t]
    span = shown(browser, f"#r0-t{t}")[0]
    assert span.get_attribute("textContent") == tok.decode([ids[t]])
    assert int(span.get_attribute("data-token-id")) == ids[t]
    popup = click(browser, span)
    assert float(shown(browser, "#popup .p")[0].text) == pytest.approx(p, rel=1e-3)
    alts = shown(browser, "#popup tr.alt")
    assert len(alts) == len(entries) == 8  # k entries, in the teacher's rank order
    for tr, (i, q) in zip(alts, entries):
        cells = tr.find_elements("css selector", "td")
        assert cells[1].text.replace("␣", " ") == tok.decode([i]).replace("\n", "↵\n")
        assert float(cells[2].text) == pytest.approx(q, rel=1e-3)
    actual = shown(browser, "#popup tr.actual")
    assert len(actual) == 1 and actual[0] == alts[[i for i, _ in entries].index(ids[t])]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "view.png"))
    # a token the teacher did not store: "p ≤ tail", with the position's tail mass
    t = next(t for t in said if said[t][0] == "tail")
    click(browser, shown(browser, f"#r0-t{t}")[0])  # pins this one instead
    assert shown(browser, "#popup .p")[0].text == f"p ≤ tail ({said[t][1]:.4g})"
    assert len(shown(browser, "#popup tr.alt")) == 8 and not shown(browser, "#popup tr.actual")
    shown(browser, "h1")[0].click()  # a click elsewhere closes it
    assert not popup.is_displayed()


def test_chat_page_greys_what_the_loss_mask_leaves_out(browser, chat, tmp_path):
    open_page(browser, chat, tmp_path / "chat.html", "--rows", "3", "--split", "train")
    row = page_row(browser, 0, chat)
    mask = row["loss_mask"].tolist()
    spans = shown(browser, "#row-0 .tok")
    assert len(spans) == len(mask)
    untrained = [t for t, s in enumerate(spans) if "s-untrained" in s.get_attribute("class")]
    assert untrained == [t for t in range(1, len(mask)) if not mask[t - 1]]
    trained = next(t for t in range(1, len(mask)) if mask[t - 1])
    click(browser, spans[trained])
    assert len(shown(browser, "#popup tr.alt")) == 4
    click(browser, spans[untrained[1]])
    assert "outside the loss mask" in shown(browser, "#popup .note")[0].text
    assert not shown(browser, "#popup tr.alt")
    browser.save_screenshot(str(ARTIFACTS / "view-chat.png"))
