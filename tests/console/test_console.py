"""The web console in a real headless browser (Debian's chromium and chromedriver, driven by
selenium) against the real app on a socket: signing in, a bank and its search, a memory's
history with the decision behind it, feedback on an answer, an ingestion job, a training job's
curves and an adapter roll back, by keyboard where a user would, and at phone width.

Screenshots go to ``$MEMR1_SCREENSHOTS`` (the README's come from there) or a temporary folder."""

import os
import re
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException
from selenium.common.exceptions import StaleElementReferenceException as StaleElement
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from app.adapters import service as adapters
from app.core.config import Settings
from app.core.db import transaction
from app.core.runtime import Runtime
from app.models import JobStatus, Scope, TrainingJob
from app.tenants import service as tenants
from memory_r1.client import Client, Turn
from tests.adapters.test_api import adapter_dir
from tests.api.helpers import add_op, answered, extracted
from tests.fixtures.served import Served, served_app

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver (bash scripts/install-browser.sh)",
)


@pytest.fixture(scope="module")
def served(settings: Settings) -> Iterator[Served]:
    with served_app(settings) as served:
        yield served


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = os.environ.get("MEMR1_SCREENSHOTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def undated(text: str) -> str:
    """A memory's text without the date of mention an added fact starts with."""
    return re.sub(r"^On \d+ \w+ \d{4}, ", "", text)


@pytest.fixture(scope="module")
def bank(served: Served, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Ann's bank: a memory added and then updated by the Manager, another one, a running
    training job with five steps of curves, and two answer adapters, the newer active."""
    user = f"ann-{uuid.uuid4().hex[:6]}"
    with Client(served.base_url, served.key) as client:
        served.llm.push(extracted("Ann adopted a cat named Tom."), add_op())
        client.add_turns("s1", user, [Turn(speaker="Ann", text="I adopted a cat, Tom!")], wait=True)
        served.llm.push(extracted("Ann lives in Lisbon."), add_op())
        client.add_turns("s1", user, [Turn(speaker="Ann", text="Lisbon is home.")], wait=True)
        cat = client.memories(user, query="cat").items[0]
        served.llm.push(  # one extraction per turn, then the Manager
            extracted("Ann adopted a second cat, Kit."),
            extracted(),
            {
                "operations": [
                    {"op": "UPDATE", "id": "m1", "text": "Ann has two cats, Tom and Kit."}
                ]
            },
        )
        accepted = client.add_turns(
            "s1",
            user,
            [
                Turn(speaker="Ann", text="Guess what, we adopted a second cat, Kit."),
                Turn(speaker="Ann", text="She is tiny."),
            ],
            wait=True,
        )
        assert client.memory(cat.id).text == "Ann has two cats, Tom and Kit."
    root = tmp_path_factory.mktemp("adapters")

    async def train_and_register(runtime: Runtime) -> dict[str, Any]:
        history = [
            {"step": n, "total": 8, "reward_mean": r, "kl": k}
            for n, r, k in [(1, 0.21, 0.0), (2, 0.26, 0.002), (3, 0.33, 0.004), (4, 0.38, 0.007)]
        ]
        async with transaction(runtime.sessions) as db:
            job = TrainingJob(
                tenant_id=served.tenant_id,
                agent="answer",
                algorithm="grpo",
                source="episodes",
                params={},
                status=JobStatus.running,
                attempts=1,
                metrics={**history[-1], "history": history},
                logs="loading the base model\nstep 1/8 reward 0.21\nstep 4/8 reward 0.38\n",
                started_at=datetime.now(UTC),
            )
            db.add(job)
        names = []
        for n, f1 in enumerate((0.31, 0.36)):
            async with transaction(runtime.sessions) as db:  # one after the other
                adapter = await adapters.register_candidate(
                    db,
                    tenant_id=served.tenant_id,
                    agent="answer",
                    name=f"answer-{n + 1}",
                    base_model=served.llm.base_model,
                    path=str(adapter_dir(root, f"a{n}")),
                    rank=8,
                    validation_metrics={"f1": f1, "exact_match": f1 - 0.1},
                    training_job_id=None,
                )
            names.append(adapter)
        return {"job": job.id, "adapters": names}

    made = served.call(train_and_register)
    with Client(served.base_url, served.key) as client:
        for adapter in made["adapters"]:  # the first, then the second, is activated
            client.activate_adapter(adapter.id)
    return {"user": user, "cat": cat.id, "ingestion": accepted.ingestion_job_id, **made}


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    options = Options()
    assert CHROMIUM and CHROMEDRIVER
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument("--window-size=1280,900")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(browser: WebDriver, css: str, text: str | None = None) -> WebElement:
    wait = WebDriverWait(browser, 20)
    if text is not None:
        wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, css), text))
    return wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, css)))


def heading(browser: WebDriver, text: str) -> None:
    """Wait for the view titled ``text``, alone or followed by a space ("User ann-1"): a
    heading that only contains it ("Training jobs" for "Training job") is another view."""
    title = re.compile(rf"{re.escape(text)}( |$)")
    wait = WebDriverWait(browser, 20, ignored_exceptions=(NoSuchElementException, StaleElement))
    wait.until(lambda b: title.match(b.find_element(By.CSS_SELECTOR, "main h1").text))


def sign_in(browser: WebDriver, served: Served, key: str) -> None:
    browser.get(f"{served.base_url}/console/")
    browser.execute_script("sessionStorage.clear()")
    browser.get(f"{served.base_url}/console/#/")
    heading(browser, "Sign in")
    field = browser.switch_to.active_element  # the heading has focus; the key field is next
    field.send_keys(Keys.TAB)
    field = browser.switch_to.active_element
    assert field.get_attribute("id") == "key"
    field.send_keys(key, Keys.ENTER)  # keyboard only


def test_a_wrong_key_is_refused_and_says_why(browser: WebDriver, served: Served) -> None:
    sign_in(browser, served, "mr1_not-a-key")
    alert = wait_for(browser, "#alert", "API key")
    assert "401" in alert.text
    assert browser.find_element(By.ID, "nav").get_attribute("hidden") is not None


def test_sign_in_then_the_bank_and_search(
    browser: WebDriver, served: Served, bank: dict[str, Any], shots: Path
) -> None:
    sign_in(browser, served, served.key)
    heading(browser, "Users")
    nav = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#nav a") if a.is_displayed()]
    assert nav == ["Users", "Training", "Adapters"]
    browser.find_element(By.LINK_TEXT, bank["user"]).click()
    heading(browser, f"User {bank['user']}")
    wait_for(browser, "ol.memories li")
    texts = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "ol.memories .text")]
    assert sorted(map(undated, texts)) == ["Ann has two cats, Tom and Kit.", "Ann lives in Lisbon."]

    search = browser.find_element(By.ID, "q")
    search.send_keys("where is home", Keys.ENTER)
    wait_for(browser, "section[aria-label='Memory bank'] p.meta", "most similar")
    first = browser.find_element(By.CSS_SELECTOR, "ol.memories .text")
    assert undated(first.text) == "Ann lives in Lisbon."
    assert "similarity" in browser.find_element(By.CSS_SELECTOR, "ol.memories .meta").text
    browser.save_screenshot(str(shots / "console-bank.png"))


def test_a_memorys_history_with_the_decision_behind_it(
    browser: WebDriver, served: Served, bank: dict[str, Any], shots: Path
) -> None:
    browser.get(f"{served.base_url}/console/#/memories/{bank['cat']}")
    heading(browser, "Memory history")
    wait_for(browser, "ol.timeline > li")
    items = browser.find_elements(By.CSS_SELECTOR, "ol.timeline > li")
    assert [i.find_element(By.CSS_SELECTOR, ".badge").text for i in items] == ["ADD", "UPDATE"]
    update = items[1]
    assert undated(update.find_element(By.TAG_NAME, "del").text) == "Ann adopted a cat named Tom."
    assert update.find_element(By.TAG_NAME, "ins").text == "Ann has two cats, Tom and Kit."
    update.find_element(By.TAG_NAME, "summary").click()
    wait_for(browser, "ol.timeline > li:nth-child(2) .episode", "Raw decision")
    shown, raw = update.find_elements(By.CSS_SELECTOR, ".episode pre")[:2]
    assert "Ann adopted a second cat, Kit." in shown.text  # the fact it was deciding on
    assert '"op": "UPDATE"' in raw.text and '"Ann has two cats, Tom and Kit."' in raw.text
    assert "manager" in update.find_element(By.TAG_NAME, "dl").text
    browser.save_screenshot(str(shots / "console-history.png"))


def test_feedback_on_an_answer_from_the_page(
    browser: WebDriver, served: Served, bank: dict[str, Any], shots: Path
) -> None:
    browser.get(f"{served.base_url}/console/#/users/{bank['user']}")
    heading(browser, "User")
    served.llm.push(answered("Two cats, Tom and Kit."))
    browser.find_element(By.ID, "question").send_keys("How many cats does Ann have?", Keys.ENTER)
    said = wait_for(browser, ".answer .said", "Tom and Kit")
    assert said.text == "Answer: Two cats, Tom and Kit."
    browser.find_element(By.XPATH, "//button[text()='Wrong']").click()
    wait_for(browser, ".answer", "Feedback saved: wrong.")
    gold = browser.find_element(By.ID, "gold")
    gold.send_keys("Two: Tom and Kit", Keys.ENTER)
    wait_for(browser, ".answer", "the answer is “Two: Tom and Kit”")
    browser.save_screenshot(str(shots / "console-feedback.png"))

    link = browser.find_element(By.LINK_TEXT, "decision log").get_attribute("href")
    assert link is not None
    episode_id = uuid.UUID(link.rsplit("/", 1)[1])
    with Client(served.base_url, served.key) as client:
        given = client.episode(episode_id).feedback
    assert sorted((str(f.rating), str(f.gold_answer)) for f in given) == [
        ("-1", "None"),
        ("None", "Two: Tom and Kit"),
    ]


def test_forget_a_memory_from_the_bank(
    browser: WebDriver, served: Served, bank: dict[str, Any]
) -> None:
    with Client(served.base_url, served.key) as client:
        rain = client.add_memory(bank["user"], "Ann dislikes rain.", speaker="Ann")
    browser.get(f"{served.base_url}/console/#/users/{bank['user']}")
    browser.refresh()  # the page may show this bank already, from before the memory was added
    wait_for(browser, "ol.memories", "Ann dislikes rain.")
    button = browser.find_element(By.XPATH, "//button[. = 'Forget “Ann dislikes rain.”']")
    button.click()
    WebDriverWait(browser, 10).until(ec.alert_is_present())
    browser.switch_to.alert.dismiss()  # changed their mind: nothing happens
    assert "Ann dislikes rain." in browser.find_element(By.CSS_SELECTOR, "ol.memories").text
    button.click()
    WebDriverWait(browser, 10).until(ec.alert_is_present())
    browser.switch_to.alert.accept()
    wait_for(browser, "#status", "Forgot “Ann dislikes rain.”")
    assert "Ann dislikes rain." not in browser.find_element(By.CSS_SELECTOR, "ol.memories").text
    with Client(served.base_url, served.key) as client:
        assert client.memory(rain.id).deleted_at is not None
        assert [e.op for e in client.memory_history(rain.id)][-1] == "DELETE"


def test_an_ingestion_job_and_its_turns(
    browser: WebDriver, served: Served, bank: dict[str, Any]
) -> None:
    browser.get(f"{served.base_url}/console/#/users/{bank['user']}")
    heading(browser, "User")
    wait_for(browser, "section[aria-label='Ingestion jobs'] table")
    browser.find_element(By.LINK_TEXT, str(bank["ingestion"])[:8]).click()
    heading(browser, "Ingestion job")
    assert "2 of 2 turns processed" in browser.find_element(By.ID, "job").text
    turns = [t.text for t in browser.find_elements(By.CSS_SELECTOR, "ol.turns li")]
    assert turns[0].startswith("Ann: Guess what, we adopted a second cat, Kit.")
    assert turns[1].startswith("Ann: She is tiny.")
    ops = browser.find_element(By.CSS_SELECTOR, "#job table").text
    assert "UPDATE" in ops and "Ann has two cats, Tom and Kit." in ops


def test_a_training_job_with_its_curves_and_log(
    browser: WebDriver, served: Served, bank: dict[str, Any], shots: Path
) -> None:
    browser.get(f"{served.base_url}/console/#/training")
    heading(browser, "Training jobs")
    browser.find_element(By.LINK_TEXT, str(bank["job"])[:8]).click()
    heading(browser, "Training job")
    assert "step 4 of 8" in browser.find_element(By.ID, "training-job").text
    charts = browser.find_elements(By.CSS_SELECTOR, "figure.chart")
    assert [c.find_element(By.TAG_NAME, "figcaption").text for c in charts] == [
        "Mean reward",
        "KL to the base model",
    ]
    for chart in charts:
        assert len(chart.find_elements(By.CSS_SELECTOR, "circle.series")) == 4
    assert "step 4/8 reward 0.38" in browser.find_element(By.CSS_SELECTOR, "pre.log").text
    browser.save_screenshot(str(shots / "console-training.png"))

    async def fifth_step(runtime: Runtime) -> None:
        async with transaction(runtime.sessions) as db:
            job = await db.get(TrainingJob, bank["job"])
            assert job is not None and job.metrics is not None
            step = {"step": 5, "total": 8, "reward_mean": 0.41, "kl": 0.009}
            job.metrics = {**step, "history": [*job.metrics["history"], step]}
            job.logs += "step 5/8 reward 0.41\n"

    served.call(fifth_step)  # the open page follows the running job
    wait_for(browser, "#training-job", "step 5 of 8")
    wait_for(browser, "pre.log", "step 5/8 reward 0.41")
    charts = browser.find_elements(By.CSS_SELECTOR, "figure.chart")
    assert len(charts[0].find_elements(By.CSS_SELECTOR, "circle.series")) == 5
    # The numbers behind a curve, for those who cannot see it.
    charts[0].find_element(By.TAG_NAME, "summary").click()
    cells = charts[0].find_elements(By.CSS_SELECTOR, "tbody td")
    assert [c.text for c in cells[:2]] == ["1", "0.210"]


def test_roll_back_to_an_earlier_adapter(
    browser: WebDriver, served: Served, bank: dict[str, Any], shots: Path
) -> None:
    first, second = bank["adapters"]
    browser.get(f"{served.base_url}/console/#/adapters")
    heading(browser, "Adapters")
    wait_for(browser, "main section p", f"Serving {second.name}.")
    assert "f1" in browser.find_element(By.CSS_SELECTOR, "main table").text
    browser.save_screenshot(str(shots / "console-adapters.png"))
    button = browser.find_element(By.XPATH, "//button[starts-with(., 'Roll back to this')]")
    assert button.text.startswith("Roll back to this")
    button.click()
    wait_for(browser, "#status", f"{first.name} is now the active answer adapter.")
    wait_for(browser, "main section p", f"Serving {first.name}.")
    with Client(served.base_url, served.key) as client:
        active = [a.name for a in client.adapters("answer") if a.status == "active"]
    assert active == [first.name]


def test_a_memory_key_sees_no_admin_views(browser: WebDriver, served: Served) -> None:
    sign_in(browser, served, served.issue_key(Scope.memory))
    heading(browser, "Users")
    shown = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#nav a") if a.is_displayed()]
    assert shown == ["Users"]
    browser.get(f"{served.base_url}/console/#/adapters")
    heading(browser, "Not allowed")


def test_a_key_revoked_while_signed_in_signs_out_and_says_why(
    browser: WebDriver, served: Served
) -> None:
    async def issue(runtime: Runtime) -> tuple[str, uuid.UUID]:
        async with transaction(runtime.sessions) as db:
            issued = await tenants.create_key(
                db, tenant_id=served.tenant_id, name="revoked-later", scopes=[Scope.admin]
            )
        return issued.plaintext, issued.key_id

    key, key_id = served.call(issue)
    sign_in(browser, served, key)
    heading(browser, "Training jobs")

    async def revoke(runtime: Runtime) -> None:
        async with transaction(runtime.sessions) as db:
            await tenants.revoke_key(db, key_id)

    served.call(revoke)
    browser.find_element(By.LINK_TEXT, "Adapters").click()
    heading(browser, "Sign in")
    assert "API key" in wait_for(browser, "#alert", "401").text


def test_every_control_is_labelled_and_the_skip_link_comes_first(
    browser: WebDriver, served: Served, bank: dict[str, Any]
) -> None:
    sign_in(browser, served, served.key)
    heading(browser, "Users")
    browser.get(f"{served.base_url}/console/#/users/{bank['user']}")
    wait_for(browser, "ol.memories li")
    unlabelled = browser.execute_script(
        "return [...document.querySelectorAll('input')].filter(i => !i.labels.length)"
        ".map(i => i.outerHTML)"
    )
    assert unlabelled == []
    nameless = browser.execute_script(
        "return [...document.querySelectorAll('button, a')].filter(e => !e.textContent.trim())"
        ".map(e => e.outerHTML)"
    )
    assert nameless == []
    first = browser.execute_script("return document.querySelector('a, button, input, [tabindex]')")
    assert first.text == "" and first.get_attribute("class") == "skip"  # hidden until focused
    browser.execute_script("arguments[0].focus()", first)
    assert first.is_displayed() and first.text == "Skip to content"
    first.send_keys(Keys.ENTER)
    assert browser.switch_to.active_element.get_attribute("id") == "main"
    assert "#/users/" in browser.current_url  # the view stays


def test_readable_on_a_phone(
    browser: WebDriver, served: Served, bank: dict[str, Any], shots: Path
) -> None:
    browser.set_window_size(390, 844)
    try:
        for route, ready in [
            (f"#/users/{bank['user']}", "ol.memories li"),
            (f"#/memories/{bank['cat']}", "ol.timeline li"),
            (f"#/training/{bank['job']}", "figure.chart"),
            ("#/adapters", "main table"),
        ]:
            browser.get(f"{served.base_url}/console/{route}")
            wait_for(browser, ready)
            overflow = browser.execute_script(
                "return document.documentElement.scrollWidth - window.innerWidth"
            )
            assert overflow <= 0, f"{route} scrolls sideways by {overflow}px"
        browser.get(f"{served.base_url}/console/#/users/{bank['user']}")
        wait_for(browser, "ol.memories li")
        browser.save_screenshot(str(shots / "console-phone.png"))
    finally:
        browser.set_window_size(1280, 900)


def test_the_page_is_served_with_a_strict_content_security_policy(served: Served) -> None:
    with httpx.Client(base_url=served.base_url) as http:
        assert http.get("/console", follow_redirects=False).status_code in (307, 308)
        page = http.get("/console/")
        script = http.get("/console/console.js")
    assert page.status_code == 200 and "<main" in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assert script.headers["content-type"].startswith(("text/javascript", "application/javascript"))
    # Every browser test above ran under this policy: an inline script or a foreign request
    # would have been refused and the view never drawn.


def test_no_script_errors_or_refused_content_along_the_way(browser: WebDriver) -> None:
    """What the browser logged through every test above: no uncaught error, nothing the
    content security policy refused (refused API calls, 401 and 403, are expected)."""
    messages = [entry["message"] for entry in browser.get_log("browser")]
    assert not [m for m in messages if "Uncaught" in m or "Content Security Policy" in m], messages
