"""PNG screenshots of the review page and the A/B dashboard of a running Flywheel, in headless Chromium,
and of the dashboard's history across nights alone (ab-history.png).

    flywheel demo --keep-running &        # wait for its "running" line, then:
    .venv/bin/python scripts/screenshots.py http://127.0.0.1:8000 docs/

Signs in with the demo reviewer key (serving.admin_keys) unless --key is given.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", help="Base URL of the API, e.g. http://127.0.0.1:8000")
    parser.add_argument("out", type=Path, help="Folder for review.png, ab-dashboard.png and ab-history.png")
    parser.add_argument("--key", default="flywheel-review-key", help="A reviewer key from serving.admin_keys")
    args = parser.parse_args()

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    profile = tempfile.mkdtemp()
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--hide-scrollbars",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.implicitly_wait(10)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        driver.get(f"{args.url}/review")
        driver.find_element(By.ID, "key").send_keys(args.key)
        driver.find_element(By.ID, "sign-in").click()
        driver.find_element(By.ID, "reviewer")
        for path, name in (("/review", "review.png"), ("/ab", "ab-dashboard.png")):
            driver.get(f"{args.url}{path}")
            height = driver.execute_script("return document.body.scrollHeight")
            driver.set_window_size(1280, min(max(height + 40, 800), 4000))
            driver.save_screenshot(str(args.out / name))
            print(args.out / name)
        driver.find_element(By.ID, "nights").screenshot(str(args.out / "ab-history.png"))
        print(args.out / "ab-history.png")
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
