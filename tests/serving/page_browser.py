"""Driving the control page (serving/page/) in Debian's headless Chromium through selenium and the
apt-installed chromedriver (scripts/install_system.sh; nothing is downloaded at run time): the steps
tests/serving/test_page.py takes, and the command that writes README's screenshot from the demo
model of `make serve` (builds it into ./model_repository when missing):

    .venv/bin/python -m tests.serving.page_browser --out docs/control_page.png
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

TIMEOUT_S = 60.0  # generous: a loaded 2-core CI machine; every wait ends as soon as its condition holds


def browser_paths() -> tuple[str, str]:
    """Debian's chromium and chromedriver; without them, fail in CI and skip locally."""
    found = shutil.which("chromium"), shutil.which("chromedriver")
    if all(found):
        return found  # type: ignore[return-value]
    message = "chromium / chromedriver are not installed: run scripts/install_system.sh (Debian's packages)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@contextlib.contextmanager
def chromium(width: int = 1400, height: int = 900) -> Iterator[WebDriver]:
    binary, driver_path = browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", f"--window-size={width},{height}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: WebDriver, condition, what: str) -> object:
    return WebDriverWait(driver, TIMEOUT_S, poll_frequency=0.05).until(lambda d: condition(d), message=what)


def texts(driver: WebDriver, selector: str) -> list[str]:
    """The matching elements' text, read in one script (the page re-renders lists as answers come)."""
    return driver.execute_script("return [...document.querySelectorAll(arguments[0])].map(e => e.textContent)", selector)


def data(driver: WebDriver, selector: str, key: str) -> list[str]:
    """The matching elements' `data-<key>`, read in one script."""
    return driver.execute_script("return [...document.querySelectorAll(arguments[0])].map(e => e.dataset[arguments[1]])", selector, key)


def item_ids(driver: WebDriver) -> list[str]:
    return data(driver, "#items li", "id")


def settled(driver: WebDriver) -> bool:
    """No API call of the page in flight (it counts them on <body data-pending>)."""
    return driver.execute_script("return document.body.dataset.pending") == "0"


def open_page(driver: WebDriver, base_url: str) -> None:
    driver.get(base_url + "/")
    wait(driver, lambda d: d.find_element(By.ID, "search").is_enabled(), "the page got a token and enabled the search")


def pick_artists(driver: WebDriver, names: Sequence[str]) -> None:
    """Search each name and add the first result (names that start with it come first)."""
    for count, name in enumerate(names, 1):
        search = driver.find_element(By.ID, "search")
        search.clear()
        search.send_keys(name)
        wait(
            driver,
            lambda d, name=name: (found := texts(d, "#results li")) and found[0].lower().startswith(name.lower()),
            f"search results for {name!r}",
        )
        driver.find_element(By.CSS_SELECTOR, "#results li button").click()  # its Recommend starts in the click
        wait(driver, lambda d, count=count: len(texts(d, "#history li")) == count and settled(d), f"{name!r} in the history")
    wait(driver, lambda d: item_ids(d), "a list of recommendations")


def profile_tags(driver: WebDriver) -> list[str]:
    return data(driver, "#profile .row", "tag")


def remove_tag(driver: WebDriver, tag: str) -> list[str]:
    """Click the tag's remove button; the list once it has changed."""
    wait(driver, settled, "the page's calls answered")
    before = item_ids(driver)
    driver.find_element(By.CSS_SELECTOR, f'#profile .row[data-tag="{tag}"] button.remove').click()
    wait(driver, lambda d: settled(d) and tag in data(d, "#profile .row.edited", "tag"), f"{tag!r} shown removed")
    wait(driver, lambda d: item_ids(d) and item_ids(d) != before, f"the list to change after removing {tag!r}")
    return item_ids(driver)


def main(argv: Sequence[str] | None = None) -> None:
    from loadtests.gateway_process import run_gateway

    parser = argparse.ArgumentParser(description="README's screenshot of the control page, on the demo model")
    parser.add_argument("--out", default="docs/control_page.png")
    parser.add_argument("--repository", default="model_repository", help="the demo model's repository (built there when empty)")
    parser.add_argument("--artists", nargs="+", default=["Amy Winehouse", "Michael Jackson", "The Beatles"])
    parser.add_argument("--remove", default="jazz", help="the tag the screenshot shows removed")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as logs:
        serve = ["--repository", str(Path(args.repository).absolute()), "--http-port", "0", "--metrics-port", "-1"]
        with run_gateway(serve, Path(logs), startup_timeout=900) as gateway, chromium(1400, 780) as driver:
            http_port = re.search(r"http_port=(\d+)", gateway.log())[1]  # type: ignore[index]
            open_page(driver, f"http://127.0.0.1:{http_port}")
            pick_artists(driver, args.artists)
            remove_tag(driver, args.remove)
            driver.save_screenshot(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
