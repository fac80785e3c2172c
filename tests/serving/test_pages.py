"""The review page in a real browser (Debian's headless Chromium, driven by Selenium), and the admin API."""

import hashlib

import httpx
import pytest

from curation import curate
from curation.config import CurationConfig
from infra import keys
from infra.config import Config
from infra.services import ReviewStore
from serving import ids
from tests.conftest import pages_app, serve_in_thread
from tests.helpers.browser import XSS, click
from tests.helpers.events import chat, rate

REVIEWER_KEY, ADMIN_KEY = "key-of-rita", "key-of-dpo"


@pytest.fixture
def review_server(db, put, tmp_path):
    user = lambda app, name: ids.pseudonym(keys.data_dir_key(tmp_path, "user-pseudonyms"), app, name)  # noqa: E731
    ok = chat(user("store", "ann"), "Where is my order? My email is ann.smith@example.com", "It ships tomorrow.")
    evil = chat(user("store", "eve"), f"Is this shown raw? {XSS}", f"Answer with markup {XSS}")
    # another app's "ann" is another user (ids are pseudonyms of (app, user))
    other = chat(user("shop", "ann"), "Do you sell gift cards?", "Yes, from 10 to 200 euros.").model_copy(
        update={"app_id": "shop"}
    )
    put([ok, rate(ok, 1), evil, rate(evil, -1), other])
    curate.run(db, CurationConfig(max_user_share=1.0))
    admin_keys = {"rita": ids.hash_key(REVIEWER_KEY), "dpo": ids.hash_key(ADMIN_KEY)}
    app = pages_app(
        ReviewStore(db, Config(data_dir=tmp_path, serving={"api_keys": {"store": "0" * 64, "shop": "1" * 64}})),
        admin_keys,
    )
    with serve_in_thread(app) as url:
        yield {"url": url, "db": db, "ann": ok, "other_ann": other}


def test_a_reviewer_approves_a_sample_in_chromium_and_the_database_records_it(review_server, browser):
    from selenium.webdriver.common.by import By

    url, db = review_server["url"], review_server["db"]
    browser.get(url + "/review")
    browser.find_element(By.ID, "key").send_keys("wrong")
    click(browser, browser.find_element(By.ID, "sign-in"))
    assert "Unknown reviewer key" in browser.find_element(By.ID, "message").text
    browser.find_element(By.ID, "key").send_keys(REVIEWER_KEY)
    click(browser, browser.find_element(By.ID, "sign-in"))
    assert browser.find_element(By.ID, "reviewer").text == "rita"

    sample = curate.sample_id(str(review_server["ann"].event_id), "rating")
    row = browser.find_element(By.ID, f"row-{sample}")
    assert "<EMAIL_ADDRESS>" in row.text and "ann.smith" not in browser.page_source  # scrubbed text only
    assert "EMAIL_ADDRESS" in row.find_element(By.CLASS_NAME, "pii").text
    # Markup from a chat is shown as text, never run.
    assert (
        browser.title == "Flywheel review"
        and "<script>document.title" in browser.find_element(By.TAG_NAME, "body").text
    )
    click(browser, row.find_element(By.CLASS_NAME, "approve"))
    assert "Approved 1 sample" in browser.find_element(By.ID, "message").text
    assert db.execute("SELECT status FROM samples WHERE sample_id = ?", [sample]).fetchone() == ("approved",)
    assert db.execute("SELECT reviewer, decision, policy FROM reviews WHERE sample_id = ?", [sample]).fetchall() == [
        ("rita", "approve", "required")
    ]
    audit = browser.find_element(By.ID, "audit").text
    assert "rita" in audit and "approve" in audit

    # A batch rejection without a reason is refused and says why; with one it is recorded.
    browser.find_element(By.CSS_SELECTOR, "input[name=sample_id]").click()
    click(browser, browser.find_element(By.ID, "reject-selected"))
    assert "needs a reason" in browser.find_element(By.ID, "message").text
    browser.find_element(By.CSS_SELECTOR, "input[name=sample_id]").click()
    browser.find_element(By.NAME, "reason").send_keys("contains markup")
    click(browser, browser.find_element(By.ID, "reject-selected"))
    assert "Rejected 1 sample" in browser.find_element(By.ID, "message").text
    assert browser.find_element(By.ID, "empty")
    assert db.execute(
        "SELECT count(*) FROM reviews WHERE decision = 'reject' AND reason = 'contains markup'"
    ).fetchone() == (1,)


def test_admin_api_needs_an_admin_key_and_forgets_a_user(review_server):
    url, db = review_server["url"], review_server["db"]
    assert httpx.post(url + "/v1/admin/forget", json={"app": "store", "user": "ann"}).status_code == 401
    assert (
        httpx.post(
            url + "/v1/admin/forget", json={"app": "store", "user": "ann"}, headers={"Authorization": "Bearer nope"}
        ).status_code
        == 401
    )
    bad = httpx.post(
        url + "/v1/admin/reviews",
        json={"sample_ids": ["smp-x"], "decision": "approve"},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    )
    assert bad.status_code == 404 and "unknown sample ids" in bad.json()["error"]["message"]
    unreasoned = httpx.post(
        url + "/v1/admin/reviews",
        json={"sample_ids": ["smp-x"], "decision": "reject"},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    )
    assert unreasoned.status_code == 400 and "needs a reason" in unreasoned.json()["error"]["message"]
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    blank = httpx.post(url + "/v1/admin/forget", json={"app": "store", "user": " "}, headers=admin)
    assert blank.status_code == 200 and blank.json()["deleted"]["chats"] == 0  # an id an app could send
    unknown = httpx.post(url + "/v1/admin/forget", json={"app": "stroe", "user": "ann"}, headers=admin)
    assert unknown.status_code == 400 and "unknown app 'stroe'" in unknown.json()["error"]["message"]
    no_app = httpx.post(url + "/v1/admin/forget", json={"user": "ann"}, headers=admin)
    assert no_app.status_code == 400 and "app" in no_app.json()["error"]["message"]
    done = httpx.post(url + "/v1/admin/forget", json={"app": "store", "user": "ann"}, headers=admin)
    assert done.status_code == 200 and done.json()["deleted"]["chats"] == 1
    ann, other = review_server["ann"].user_id, review_server["other_ann"].user_id
    assert db.execute("SELECT count(*) FROM chats WHERE user_id = ?", [ann]).fetchone() == (0,)
    assert db.execute("SELECT app_id FROM chats WHERE user_id = ?", [other]).fetchall() == [("shop",)]  # kept
    # What stays of her (the hash in forgotten_users) cannot be matched by guessing ids without the secret.
    from ingest.contracts import FORGET_PREFIX

    stored = {h for (h,) in db.execute("SELECT user_hash FROM forgotten_users").fetchall()}
    assert hashlib.sha256(f"{FORGET_PREFIX}{ann}".encode()).hexdigest() in stored
    assert hashlib.sha256(f"{FORGET_PREFIX}ann".encode()).hexdigest() not in stored
    assert db.execute("SELECT actor FROM audit_log WHERE action = 'forget'").fetchall() == [("dpo",)] * 2
    assert httpx.post(url + "/review/decide", data={"one": "approve x"}, follow_redirects=False).status_code == 303


def test_pages_send_security_headers_sign_out_and_sessions_end_with_their_key(review_server, db, tmp_path):
    url = review_server["url"]
    with httpx.Client(base_url=url) as c:
        c.post("/review/login", data={"key": REVIEWER_KEY})
        page = c.get("/review")
        assert "Signed in as" in page.text
        for name, value in (
            ("content-security-policy", "frame-ancestors 'none'"),
            ("x-content-type-options", "nosniff"),
            ("cache-control", "no-store"),
            ("referrer-policy", "same-origin"),
        ):
            assert value in page.headers[name], name
        cookie = c.cookies["flywheel_reviewer"]
        c.post("/review/logout")
        assert "Signed in as" not in c.get("/review").text
    # The same signed cookie against a service where rita's key was changed: signed out.
    app = pages_app(ReviewStore(db, Config(data_dir=tmp_path)), {"rita": ids.hash_key("rita-new-key")})
    with serve_in_thread(app) as other:
        assert "Signed in as" not in httpx.get(other + "/review", cookies={"flywheel_reviewer": cookie}).text
    assert "Signed in as" in httpx.get(url + "/review", cookies={"flywheel_reviewer": cookie}).text
