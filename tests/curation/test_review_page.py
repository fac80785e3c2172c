"""The review page in a real browser (Debian's headless Chromium, driven by Selenium), and the admin API."""


import httpx
import pytest
from fastapi import FastAPI

from curation import curate
from curation.config import CurationConfig
from infra.config import Config
from infra.services import ReviewStore
from serving import ids
from serving.app import ApiError, install_error_handlers
from serving.pages import add_review_routes
from tests.conftest import serve_in_thread
from tests.curation.conftest import chat, rate

REVIEWER_KEY, ADMIN_KEY = "key-of-rita", "key-of-dpo"
XSS = "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\">"


@pytest.fixture
def review_server(db, put, tmp_path):
    ok = chat("ann", "Where is my order? My email is ann.smith@example.com", "It ships tomorrow.")
    evil = chat("eve", f"Is this shown raw? {XSS}", f"Answer with markup {XSS}")
    put([ok, rate(ok, 1), evil, rate(evil, -1)])
    curate.run(db, CurationConfig(max_user_share=1.0))
    app = FastAPI()
    install_error_handlers(app)
    keys = {"rita": ids.hash_key(REVIEWER_KEY), "dpo": ids.hash_key(ADMIN_KEY)}
    add_review_routes(app, ReviewStore(db, Config(data_dir=tmp_path)), keys, b"secret", ApiError)
    with serve_in_thread(app) as url:
        yield {"url": url, "db": db, "ann": ok}


def click(browser, element) -> None:
    """Click a submit button and wait for the next page (the clicked element leaves the document)."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    def gone(_driver) -> bool:
        try:
            element.is_enabled()
        except WebDriverException:  # stale, or, mid-navigation, "node does not belong to the document"
            return True
        return False

    element.click()
    WebDriverWait(browser, 10).until(gone)


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
    assert browser.title == "Flywheel review" and "<script>document.title" in browser.find_element(By.TAG_NAME, "body").text
    click(browser, row.find_element(By.CLASS_NAME, "approve"))
    assert "Approved 1 sample" in browser.find_element(By.ID, "message").text
    assert db.execute("SELECT status FROM samples WHERE sample_id = ?", [sample]).fetchone() == ("approved",)
    assert db.execute("SELECT reviewer, decision, policy FROM reviews WHERE sample_id = ?",
                      [sample]).fetchall() == [("rita", "approve", "required")]
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
    assert db.execute("SELECT count(*) FROM reviews WHERE decision = 'reject' AND reason = 'contains markup'"
                      ).fetchone() == (1,)


def test_admin_api_needs_an_admin_key_and_forgets_a_user(review_server):
    url, db = review_server["url"], review_server["db"]
    assert httpx.post(url + "/v1/admin/forget", json={"user": "ann"}).status_code == 401
    assert httpx.post(url + "/v1/admin/forget", json={"user": "ann"},
                      headers={"Authorization": "Bearer nope"}).status_code == 401
    bad = httpx.post(url + "/v1/admin/reviews", json={"sample_ids": ["smp-x"], "decision": "approve"},
                     headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert bad.status_code == 404 and "unknown sample ids" in bad.json()["error"]["message"]
    unreasoned = httpx.post(url + "/v1/admin/reviews", json={"sample_ids": ["smp-x"], "decision": "reject"},
                            headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert unreasoned.status_code == 400 and "needs a reason" in unreasoned.json()["error"]["message"]
    blank = httpx.post(url + "/v1/admin/forget", json={"user": " "}, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert blank.status_code == 200 and blank.json()["deleted"]["chats"] == 0  # an id an app could send
    done = httpx.post(url + "/v1/admin/forget", json={"user": "ann"}, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert done.status_code == 200 and done.json()["deleted"]["chats"] == 1
    assert db.execute("SELECT count(*) FROM chats WHERE user_id = 'ann'").fetchone() == (0,)
    assert db.execute("SELECT actor FROM audit_log WHERE action = 'forget'").fetchall() == [("dpo",)] * 2
    assert httpx.post(url + "/review/decide", data={"one": "approve x"}, follow_redirects=False).status_code == 303
