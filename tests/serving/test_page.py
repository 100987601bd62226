"""The control page (serving/control_page.py, serving/page/) in a real headless Chromium against a
real gateway (ONNX Runtime, real Redis): it loads, gets its token the way the auth rules allow,
picks artists by name, and an edit made through it changes the list; a screenshot is written."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver

from serving import auth
from serving.control_page import DEV_TOKEN_PATH, PAGE_USER
from serving.proto_gen.apron.v1 import recommender_pb2 as pb
from tests.export.fixtures import export_tiny_repository
from tests.reliability.conftest import Tokens, tokens  # noqa: F401  (pytest finds fixtures by name)
from tests.serving.conftest import gateway_config, item_index, liked_history, running_gateway
from tests.serving.page_browser import (
    chromium,
    data,
    item_ids,
    open_page,
    pick_artists,
    profile_tags,
    remove_tag,
    settled,
    wait,
)


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    with chromium() as driver:
        yield driver


def get_json(url: str, host: str = "") -> tuple[int, dict]:
    request = urllib.request.Request(url, headers={"host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def page_session(browser: WebDriver, base: str, names: list[str]) -> tuple[str, list[str], list[str]]:
    """Pick `names`, remove the top tag: (that tag, the list before, the list after)."""
    open_page(browser, base)
    pick_artists(browser, names)
    assert len(data(browser, "#history li", "id")) == len(names)
    top = profile_tags(browser)[0]
    before = item_ids(browser)
    return top, before, remove_tag(browser, top)  # waits for the list to change


def drag_second_tag(browser: WebDriver) -> str:
    """One step left on the second tag's slider (the keyboard, as a person may): a weight edit."""
    second = profile_tags(browser)[1]
    browser.find_element(By.CSS_SELECTOR, f'#profile .row[data-tag="{second}"] input.weight').send_keys(Keys.ARROW_LEFT)
    wait(browser, lambda d: settled(d) and second in data(d, "#profile .row.edited", "tag"), "the dragged tag shown edited")
    return second


async def test_an_edit_through_the_page_changes_the_list(
    browser: WebDriver, python_repository, redis_server, main_tags: np.ndarray, tmp_path: Path
) -> None:
    # auth on with the development secret, on loopback: the page may get a development token.
    # The gateway runs on this test's event loop: every blocking step (HTTP, the browser) in a thread.
    config = gateway_config(python_repository, redis_server.url, auth=True, http_port=0)
    async with running_gateway(config) as gateway:
        base = f"http://127.0.0.1:{gateway.server.http_port}"
        status, granted = await asyncio.to_thread(get_json, base + DEV_TOKEN_PATH)
        claims = auth.TokenVerifier(gateway.server.resources.security.verifier.key).verify(granted["token"])
        assert status == 200 and claims == auth.Principal(PAGE_USER, auth.Role.USER)  # a user token: its own profile only
        assert (await asyncio.to_thread(get_json, base + DEV_TOKEN_PATH, "rebound.example:80"))[0] == 404  # no other host name

        names = [f"Track {item_index(item)}" for item in liked_history(main_tags, 0, 1)[:4]]
        top, before, after = await asyncio.to_thread(page_session, browser, base, names)
        assert after != before and len(after) == 10
        # the page stored the edit through the API: the profile gRPC reads has it
        service = auth.bearer_metadata(gateway.server.service_token)

        async def stored() -> dict[str, tuple[str, float]]:
            answer = await gateway.stub.GetProfile(pb.GetProfileRequest(user_id=PAGE_USER), metadata=service)
            return {e.prototype: (e.WhichOneof("change"), getattr(e, e.WhichOneof("change"))) for e in answer.stored_edits}

        assert await stored() == {top: ("scale", 0.0)}
        second = await asyncio.to_thread(drag_second_tag, browser)
        assert (await stored())[second][0] == "weight"
        shot = tmp_path / "control_page.png"
        assert await asyncio.to_thread(browser.save_screenshot, str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def token_form_session(browser: WebDriver, base: str, token: str) -> str:
    """The page without a development token: it asks for one; the text it shows once given one."""
    browser.get(base + "/")
    browser.execute_script("sessionStorage.clear()")
    browser.get(base + "/")
    form = browser.find_element(By.ID, "token-form")
    wait(browser, lambda d: form.is_displayed(), "the token form")
    assert not browser.find_element(By.ID, "search").is_enabled()
    browser.find_element(By.ID, "token").send_keys(token)
    form.submit()
    wait(browser, lambda d: d.find_element(By.ID, "search").is_enabled(), "the search enabled by the pasted token")
    who = browser.find_element(By.ID, "who").text
    browser.execute_script("sessionStorage.clear()")
    return who


async def test_the_page_asks_for_a_token_without_the_quick_start(
    browser: WebDriver, python_repository, redis_server, tokens: Tokens  # noqa: F811
) -> None:
    config = gateway_config(python_repository, redis_server.url, auth=True, jwt_secret_file=str(tokens.path), http_port=0)
    async with running_gateway(config) as gateway:
        base = f"http://127.0.0.1:{gateway.server.http_port}"
        status, refused = await asyncio.to_thread(get_json, base + DEV_TOKEN_PATH)  # a configured key: no token handed out
        assert status == 404 and "paste a token" in refused["message"]
        who = await asyncio.to_thread(token_form_session, browser, base, auth.mint_token(tokens.secret, "alice", auth.Role.USER))
        assert "profile of user alice" in who  # a user token: its own profile


async def test_the_page_asks_for_no_more_than_the_models_k_max(
    browser: WebDriver, tiny_checkpoint: Path, redis_server, main_tags: np.ndarray, tmp_path: Path
) -> None:
    """A model exported with k_max 5: the page asks for 5 items, not its usual 10 (which every
    Recommend would refuse: INVALID_ARGUMENT, an empty list)."""
    repository = tmp_path / "model_repository"
    export_tiny_repository(tiny_checkpoint, repository, k_max=5)
    config = gateway_config(repository, redis_server.url, auth=True, http_port=0)
    async with running_gateway(config) as gateway:
        base = f"http://127.0.0.1:{gateway.server.http_port}"
        names = [f"Track {item_index(item)}" for item in liked_history(main_tags, 0, 1)[:2]]

        def session() -> list[str]:
            open_page(browser, base)
            pick_artists(browser, names)
            return item_ids(browser)

        assert len(await asyncio.to_thread(session)) == 5
