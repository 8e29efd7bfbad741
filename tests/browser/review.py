"""Drives `medprm review` in headless Chromium (started by tests/review.rs).

Environment: REVIEW_URL, REVIEW_ITEM (an item with uncertain steps 1-3), REVIEW_XSS_ITEM,
REVIEW_USERS ("alice:pw,bob:pw"), REVIEW_SCREENSHOT (PNG path), REVIEW_COMMENT.
Prints one "browser: ..." line per check; any failed check raises (non-zero exit).
"""

import json
import os
import shutil
import sys
import tempfile
import urllib.parse

from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

URL = os.environ["REVIEW_URL"]
ITEM = os.environ["REVIEW_ITEM"]
XSS_ITEM = os.environ["REVIEW_XSS_ITEM"]
USERS = [u.split(":", 1) for u in os.environ["REVIEW_USERS"].split(",")]
SHOT = os.environ["REVIEW_SCREENSHOT"]
COMMENT = os.environ["REVIEW_COMMENT"]
TIMEOUT = 20
dirs = []


def browser():
    d = tempfile.mkdtemp(prefix="medprm-chromium-")
    dirs.append(d)
    o = webdriver.ChromeOptions()
    o.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for a in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--disable-dev-shm-usage", f"--user-data-dir={d}", "--window-size=1280,1000"]:
        o.add_argument(a)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=o)


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"browser: ok: {what}", flush=True)


def wait(drv, fn, what):
    try:
        WebDriverWait(drv, TIMEOUT).until(lambda d: fn(d))
    except Exception as e:
        raise AssertionError(f"timed out waiting for {what}: {e}") from None
    print(f"browser: ok: {what}", flush=True)


def item_url(item):
    return f"{URL}/item?id={urllib.parse.quote(item, safe='')}"


def login(drv, name, pw):
    drv.get(f"{URL}/queue")
    check(drv.current_url.endswith("/login"), f"{name}: /queue without a session redirects to /login")
    # Keyboard only: the name field has focus.
    ActionChains(drv).send_keys(name).send_keys(Keys.TAB).send_keys(pw).send_keys(Keys.ENTER).perform()
    wait(drv, lambda d: d.current_url.endswith("/queue") and d.find_elements(By.CSS_SELECTOR, "table.queue"), f"{name} logged in, queue shown")


def keys(drv, *ks):
    a = ActionChains(drv)
    for k in ks:
        a.send_keys(k)
    a.perform()


def step(drv, i):
    return drv.find_element(By.ID, f"step-{i}")


def saved(drv, i, value, version=None):
    def ok(d):
        s = step(d, i)
        return s.get_attribute("data-value") == value and (version is None or s.get_attribute("data-version") == str(version))
    return ok


def no_alert(drv):
    try:
        drv.switch_to.alert
        return False
    except NoAlertPresentException:
        return True


def main():
    (a_name, a_pw), (b_name, b_pw) = USERS[0], USERS[1]
    a = browser()
    b = None
    try:
        login(a, a_name, a_pw)
        a.get(item_url(ITEM))
        wait(a, lambda d: "current" in step(d, 1).get_attribute("class"), "the first uncertain step (2) is selected on load")
        # Three labels with the keyboard only: + on step 2, j, + on step 3, j, - on step 4.
        keys(a, "+")
        wait(a, saved(a, 1, "1", 1), "step 2 labelled + with the keyboard (saved, version 1)")
        keys(a, "j", "+")
        wait(a, saved(a, 2, "1", 1), "step 3 labelled + with the keyboard")
        keys(a, "j", "-")
        wait(a, saved(a, 3, "0", 1), "step 4 labelled - with the keyboard")
        keys(a, "k")
        check("current" in step(a, 2).get_attribute("class"), "k goes back a step")
        # A review field, autosaved while typing (no submit).
        field = a.find_element(By.ID, "review_comments")
        field.click()
        field.send_keys(COMMENT)
        wait(a, lambda d: d.find_element(By.ID, "review_comments").get_attribute("data-value") == COMMENT, "review comment autosaved")
        a.find_element(By.TAG_NAME, "body").click()

        a.refresh()
        for i, v in [(1, "1"), (2, "1"), (3, "0")]:
            s = step(a, i)
            check(s.get_attribute("data-value") == v and s.find_element(By.CSS_SELECTOR, ".expert").text.startswith("expert: " + ("+" if v == "1" else "−")),
                  f"step {i + 1} still {v} after a reload")
        check(a.find_element(By.ID, "review_comments").get_attribute("value") == COMMENT, "comment persisted")
        hist = a.find_element(By.ID, "history").text
        check(hist.count(a_name) >= 4 and "step 2" in hist, "history names who changed what")
        a.set_window_size(1280, 1700)
        a.execute_script("window.scrollTo(0, 0)")
        a.save_screenshot(SHOT)
        a.set_window_size(1280, 1000)
        print(f"browser: screenshot {SHOT}", flush=True)

        # 200% zoom on a 1366-pixel laptop screen: a 683-CSS-pixel viewport, no sideways scrolling.
        a.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {"width": 683, "height": 384, "deviceScaleFactor": 2, "mobile": False})
        a.refresh()
        wait(a, lambda d: d.find_elements(By.ID, "step-0"), "item page at 200% zoom")
        sw, cw = a.execute_script("return [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        check(sw <= cw, f"no horizontal scrolling at 200% zoom (scrollWidth {sw} <= {cw})")
        a.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

        # A second reviewer opens the same item; both hold step 2 at version 1.
        b = browser()
        login(b, b_name, b_pw)
        b.get(item_url(ITEM))
        a.get(item_url(ITEM))
        for d in (a, b):
            wait(d, lambda x: "current" in step(x, 1).get_attribute("class") and step(x, 1).get_attribute("data-version") == "1", "step 2 selected at version 1")
        keys(a, "+")
        wait(a, saved(a, 1, "1", 2), f"{a_name} saves step 2 again (version 2)")
        keys(b, "-")
        wait(b, lambda d: not d.find_element(By.ID, "banner").get_attribute("hidden") and "Conflict" in d.find_element(By.ID, "banner").text,
             f"{b_name}'s stale save is refused with a conflict")
        banner = b.find_element(By.ID, "banner").text
        check(a_name in banner and "+ correct" in banner, f"the conflict names {a_name} and the current value: {banner!r}")
        check(step(b, 1).get_attribute("data-value") == "1" and step(b, 1).get_attribute("data-version") == "2",
              f"{b_name}'s page now shows {a_name}'s value")

        # n: the next item that still needs work.
        keys(a, "n")
        wait(a, lambda d: "/item?id=" in d.current_url and urllib.parse.quote(ITEM, safe="") not in d.current_url
             and d.find_elements(By.CSS_SELECTOR, ".step.current"), "n opens the next item")

        # XSS: record text with <script> and <img onerror> renders as text and runs nothing.
        a.get(item_url(XSS_ITEM))
        wait(a, lambda d: d.find_elements(By.ID, "question"), "XSS item page")
        q = a.find_element(By.ID, "question")
        s0 = step(a, 0)
        check("<script>" in q.text and "onerror" in q.text, "question payload shown as text")
        check("<img src=x" in s0.text and "<script>" in s0.text, "step payload shown as text")
        check(not a.find_elements(By.CSS_SELECTOR, "#question *, #step-0 .text *, #options *"), "no element created from record text")
        check(a.execute_script("return window.__xss === undefined"), "no payload ran (window.__xss unset)")
        check(no_alert(a), "no alert opened")
        # The page's own script still runs (keyboard selection works on the XSS item).
        check(a.find_elements(By.CSS_SELECTOR, ".step.current"), "review.js ran")
        print("browser: all checks passed", flush=True)
    finally:
        for d in (a, b):
            if d is not None:
                d.quit()
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
