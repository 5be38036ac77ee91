"""``mllm web``'s chat page in a real headless browser (Debian's chromium + chromedriver, driven by selenium):
upload an image, ask, watch the answer stream in, a second turn, reset. A screenshot is saved under the
test's tmp dir (``web_chat.png``).

    .venv/bin/python -m pytest -q tests/test_serve_web.py
    # needs: apt-get install chromium chromium-driver   (bash .ci/run installs them)
"""
from __future__ import annotations

import os
import shutil

import pytest

from mllm.app.serve import BackgroundServer, ServedModel, ServeSettings
from tests._serve import MODEL_ID, client, make_files, user

MAX_TOKENS = 24


@pytest.fixture(scope="module")
def files(tmp_path_factory, one_torch_thread):
    return make_files(tmp_path_factory.mktemp("serve_web"))


@pytest.fixture(scope="module")
def server(files):
    with BackgroundServer(ServedModel.load(files["ckpt"]), ServeSettings(port=0), web=True) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.fail("the web chat test needs Debian's chromium and chromium-driver: "
                    "apt-get install -y chromium chromium-driver (bash .ci/run installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1000,800", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    b = webdriver.Chrome(service=Service(driver), options=options)
    b.set_script_timeout(60)
    yield b
    b.quit()


def wait(browser, condition, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout, poll_frequency=0.05).until(lambda b: condition(b))


def answers(browser):
    from selenium.webdriver.common.by import By

    return browser.find_elements(By.CSS_SELECTOR, ".msg.assistant")


def ask_in_page(browser, text, image=None):
    from selenium.webdriver.common.by import By

    if image:
        browser.find_element(By.ID, "image").send_keys(image)
        wait(browser, lambda b: len(b.find_elements(By.CSS_SELECTOR, "#pending img")) == 1)
    n = len(answers(browser))
    box = browser.find_element(By.ID, "prompt")
    box.clear()
    box.send_keys(text)
    browser.find_element(By.ID, "send").click()
    wait(browser, lambda b: len(answers(b)) == n + 1 and answers(b)[-1].get_attribute("data-done") == "1")
    return answers(browser)[-1]


def test_web_chat_uploads_an_image_streams_the_answer_goes_on_and_resets(browser, server, files, tmp_path):
    from selenium.webdriver.common.by import By

    api = client(server)
    first_messages = [user("What is shown?", files["red"])]
    expected = api.chat.completions.create(model=MODEL_ID, messages=first_messages, max_tokens=MAX_TOKENS,
                                           temperature=0).choices[0].message.content
    assert expected.strip()

    browser.get(server.url + "/")
    assert browser.title == "mllm chat"
    assert browser.find_element(By.ID, "model").text == MODEL_ID
    browser.find_element(By.ID, "max-tokens").clear()
    browser.find_element(By.ID, "max-tokens").send_keys(str(MAX_TOKENS))

    answer = ask_in_page(browser, "What is shown?", files["red"])
    assert answer.text == expected.strip()  # the page shows what the API answers
    assert int(answer.get_attribute("data-chunks")) > 1  # it arrived in pieces: streamed
    user_bubble = browser.find_elements(By.CSS_SELECTOR, ".msg.user")[-1]
    assert user_bubble.find_elements(By.TAG_NAME, "img") and "What is shown?" in user_bubble.text
    assert not browser.find_elements(By.CSS_SELECTOR, "#pending img")  # the image went with that message

    # a second turn carries the first (and its image): the page's answer is the API's multi-turn answer
    second = api.chat.completions.create(
        model=MODEL_ID, max_tokens=MAX_TOKENS, temperature=0,
        messages=first_messages + [{"role": "assistant", "content": expected}, user("And its colour?")],
    ).choices[0].message.content
    answer2 = ask_in_page(browser, "And its colour?")
    assert answer2.text == second.strip()
    assert browser.find_element(By.ID, "log").get_attribute("data-turns") == "2"

    shot = os.path.join(str(tmp_path), "web_chat.png")
    assert browser.save_screenshot(shot) and os.path.getsize(shot) > 5000
    print(f"screenshot: {shot}")

    browser.find_element(By.ID, "reset").click()
    assert not browser.find_elements(By.CSS_SELECTOR, ".msg")
    # after the reset the conversation starts over: the first question gets the first answer again
    assert ask_in_page(browser, "What is shown?", files["red"]).text == expected.strip()


def test_web_chat_shows_an_api_error_and_keeps_the_conversation(browser, server, files, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/")
    not_image = tmp_path / "notes.png"
    not_image.write_bytes(b"this is not a png")
    browser.find_element(By.ID, "image").send_keys(str(not_image))
    wait(browser, lambda b: len(b.find_elements(By.CSS_SELECTOR, "#pending img")) == 1)
    browser.find_element(By.ID, "prompt").send_keys("What is shown?")
    browser.find_element(By.ID, "send").click()
    error = wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, ".msg.error"))[0]
    assert "not a PNG, JPEG or WebP image" in error.text
    assert not browser.find_elements(By.CSS_SELECTOR, ".msg.user, .msg.assistant")  # the turn did not happen
    assert browser.find_element(By.ID, "prompt").get_attribute("value") == "What is shown?"
