"""Driving Chromium through Selenium."""

from __future__ import annotations

# Markup in chat text: a page that runs it (or shows it unescaped) changes its title.
XSS = "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\">"


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
