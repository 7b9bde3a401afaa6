"""The web UI in headless Chromium (Debian's `chromium`, driven by Playwright) against a
real `alice-spool serve` on 127.0.0.1 with API keys on and the runner on the tiny model.

Every page is saved as a screenshot under `test-artifacts/web/` (or
`$ALICE_TEST_ARTIFACTS/web/`), and every page must run without a console error.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    expect,
    sync_playwright,
)

from alice_spool.engine.tiny import create_tiny_lora
from tests.support.live_server import Served, serve, wait_until
from tests.support.sources import (
    Civitai,
    Hub,
    Repo,
    checkpoint_bytes,
    civitai_model,
    civitai_serving,
    hub_serving,
)

pytestmark = pytest.mark.slow

KEY = "web-secret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("ALICE_TEST_ARTIFACTS", REPO / "test-artifacts")) / "web"
WAIT_MS = 60_000


# Debian's chromium (`make test` installs it), or another given by ALICE_CHROMIUM. Without
# one, every test here is skipped with one line that says so.
CHROMIUM = os.environ.get("ALICE_CHROMIUM") or shutil.which("chromium")
if not CHROMIUM:
    pytest.skip(
        "Chromium not found: apt-get install chromium (make test installs it), "
        "or set ALICE_CHROMIUM=/path/to/chrome",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Hub, Civitai]]:
    """CivitAI (with preview images) and the Hub, as the Download page meets them."""
    made = tmp_path_factory.mktemp("made")
    lora = create_tiny_lora(made).read_bytes()
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 120, 40)).save(buffer, "PNG")
    big = checkpoint_bytes(3)  # over 1 MiB: a transfer the test can hold mid-way
    hub = Hub(repos={"org/web-lora": Repo({"web.safetensors": big}, tags=["diffusers", "lora"])})
    civitai = Civitai(blobs={11: lora, 21: lora, 31: lora})
    with hub_serving(hub), civitai_serving(civitai):
        civitai.images = {f"/images/{i}.png": buffer.getvalue() for i in range(1, 5)}
        civitai.models += [
            civitai_model(
                1,
                "Ink Style",
                "LORA",
                [(11, "inkStyle.safetensors", lora)],
                image=f"{civitai.url}/images/1.png",
            ),
            civitai_model(
                2,
                "Dream Base",
                "Checkpoint",
                [(21, "dream.safetensors", lora)],
                image=f"{civitai.url}/images/2.png",
            ),
            civitai_model(
                3,
                "Night Style",
                "LORA",
                [(31, "night.safetensors", lora)],
                nsfw=True,
                image=f"{civitai.url}/images/3.png",
            ),
            civitai_model(
                4,
                "A VAE",
                "VAE",
                [(41, "vae.safetensors", lora)],
                image=f"{civitai.url}/images/4.png",
            ),
        ]
        yield hub, civitai


@pytest.fixture(scope="module")
def site(
    tmp_path_factory: pytest.TempPathFactory, stand_ins: tuple[Hub, Civitai], tiny_models: Path
) -> Iterator[Served]:
    hub, civitai = stand_ins
    config = f'[server.api_keys]\nops = "{KEY}"\n'
    # allow_private_urls: CivitAI's downloads redirect to its storage, another local port.
    config += f'[models]\nhf_endpoint = "{hub.url}"\ncivitai_url = "{civitai.url}"\n'
    config += "allow_private_urls = true\n"
    config += f'civitai_token = "{civitai.token}"\n'
    root = tmp_path_factory.mktemp("web")
    with serve(
        root, config, scheduler="euler", hub_offline=False, models=tiny_models, split=True
    ) as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        yield browser
        browser.close()


class Console:
    """Console errors and uncaught exceptions of every page of a browser context."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def watch(self, page: Page) -> None:
        page.on("console", self._message)
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))

    def _message(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"{message.text} at {message.location.get('url')}")


def new_page(
    site: Served, browser: Browser, console: Console, *, key: str | None = KEY, **options: Any
) -> Page:
    context: BrowserContext = browser.new_context(**options)
    if key is not None:  # as if this person had logged in already: the session cookie
        answer = context.request.post(
            f"{site.url}/v1/auth/login", data={"key": key}, headers={"Origin": site.url}
        )
        assert answer.ok, answer.text()
    page = context.new_page()
    console.watch(page)
    return page


@pytest.fixture
def console() -> Iterator[Console]:
    watched = Console()
    yield watched
    assert watched.errors == [], "console errors"


def shot(page: Page, name: str) -> None:
    page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)


def submit_job(site: Served, **fields: Any) -> dict[str, Any]:
    answer = httpx.post(f"{site.url}/v1/jobs", json=fields, headers=AUTH, timeout=30)
    assert answer.status_code == 202, answer.text
    return answer.json()


def job(site: Served, job_id: str) -> dict[str, Any]:
    return httpx.get(f"{site.url}/v1/jobs/{job_id}", headers=AUTH, timeout=30).json()


def wait_for_status(site: Served, job_id: str, *statuses: str) -> dict[str, Any]:
    wait_until(lambda: job(site, job_id)["status"] in statuses, timeout=120)
    return job(site, job_id)


# -- the tests ---------------------------------------------------------------------------------


def test_the_ui_logs_in_with_a_key_keeps_only_a_session_cookie_and_logs_out(
    site: Served, browser: Browser
) -> None:
    console = Console()
    page = new_page(site, browser, console, key=None)
    page.goto(f"{site.url}/")  # / leads to the UI
    assert page.url.endswith("/web/")
    dialog = page.locator("#key-dialog")
    expect(dialog).to_be_visible()
    expect(page.locator("#register-part")).to_be_hidden()  # registration is off by default
    shot(page, "login")
    page.fill("#key-input", "not-the-key")
    page.click("#key-save")
    expect(page.locator("#key-error")).to_contain_text("That key was refused")
    expect(dialog).to_be_visible()
    shot(page, "login-refused")
    page.fill("#key-input", KEY)
    page.click("#key-save")
    expect(dialog).to_be_hidden()
    expect(page.locator("#runners .runner")).to_be_visible()
    expect(page.locator("#who")).to_have_text("ops (admin)")
    expect(page.locator("#nav a[data-page=admin]")).to_be_visible()
    # The browser keeps a session cookie that scripts cannot read, never the key.
    assert page.evaluate("JSON.stringify(localStorage)") == "{}"
    assert page.evaluate("document.cookie") == ""
    (cookie,) = page.context.cookies()
    assert cookie["name"] == "alice_session" and cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict" and KEY not in cookie["value"]
    page.reload()  # the session lasts: no prompt the second time
    expect(page.locator("#runners .runner")).to_be_visible()
    expect(dialog).to_be_hidden()
    page.click("#logout-button")
    expect(dialog).to_be_visible()
    expect(page.locator("#who")).to_be_hidden()
    assert (
        httpx.get(f"{site.url}/v1/jobs", cookies={cookie["name"]: cookie["value"]}).status_code
        == 401
    )
    # The only console errors are the browser's notes of the refused key's and the ended
    # session's 401s.
    assert [e for e in console.errors if "401" not in e] == []
    page.context.close()


def test_dashboard_shows_the_runner_queue_and_throughput(
    site: Served, browser: Browser, console: Console
) -> None:
    done = submit_job(site, prompt="a dashboard warm-up", size="64x64", n=3, seed=1)
    wait_for_status(site, done["id"], "succeeded")
    page = new_page(site, browser, console, viewport={"width": 1280, "height": 900})
    page.goto(f"{site.url}/web/")
    runner = page.locator("#runners .runner")
    expect(runner).to_contain_text("cpu")
    expect(runner.locator(".badge")).to_have_text(["idle"])
    expect(page.locator("#queue-counts strong[data-status=succeeded]")).not_to_have_text("0")
    expect(page.locator("#throughput")).to_contain_text("images in the last hour")
    bars = page.locator("#throughput svg rect")
    expect(bars).to_have_count(60)
    assert float(bars.nth(59).get_attribute("height")) > 0  # this minute made images
    expect(page.locator("#recent img").first).to_be_visible()
    shot(page, "dashboard")
    page.context.close()


def test_submit_from_the_form_watch_it_finish_and_find_it_in_the_gallery(
    site: Served, browser: Browser, console: Console
) -> None:
    page = new_page(site, browser, console, viewport={"width": 1280, "height": 900})
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.goto(f"{site.url}/web/#/submit")
    page.fill("#f-prompt", "a red fox in fresh snow")
    page.fill("#f-negative_prompt", "blurry")
    page.fill("#f-width", "64")
    page.fill("#f-height", "64")
    page.fill("#f-seed", "4242")
    page.fill("#f-n", "2")
    page.select_option("#f-scheduler", "euler")
    page.click("#submit-button")
    panel = page.locator("#submitted .card").first
    expect(panel.locator(".badge")).to_have_text("succeeded", timeout=WAIT_MS)
    expect(panel.locator(".thumbs img")).to_have_count(2)
    shot(page, "submit")
    job_id = panel.get_attribute("data-id")
    made = job(site, job_id)
    spec = made["spec"]
    assert (spec["prompt"], spec["negative_prompt"], spec["seed"], spec["n"]) == (
        "a red fox in fresh snow",
        "blurry",
        4242,
        2,
    )
    assert (spec["width"], spec["height"], spec["scheduler"]) == (64, 64, "euler")

    page.goto(f"{site.url}/web/#/gallery")
    first = page.locator(".gallery .tile").first
    expect(first.locator("figcaption")).to_contain_text("a red fox in fresh snow")
    shot(page, "gallery")
    first.locator("a").click()
    lightbox = page.locator("#lightbox")
    expect(lightbox).to_be_visible()
    expect(page.locator("#lightbox-prompt")).to_have_text("a red fox in fresh snow")
    expect(page.locator("#lightbox-params")).to_contain_text("4242")
    page.wait_for_function("document.querySelector('#lightbox-image').naturalWidth === 64")
    page.click("#lightbox-copy")
    expect(page.locator("#notice")).to_have_text("Prompt copied")
    assert page.evaluate("navigator.clipboard.readText()") == "a red fox in fresh snow"
    shot(page, "gallery-image")
    page.click("#lightbox-close")

    page.goto(f"{site.url}/web/#/jobs/{job_id}")
    expect(page.locator("pre.json")).to_contain_text(f'"job_id": "{job_id}"')
    expect(page.locator("#view .params")).to_contain_text("a red fox in fresh snow")
    shot(page, "job")
    page.click("button.again")  # submit again: a new job with the same request
    page.wait_for_url(lambda url: job_id not in url)
    again = page.url.rsplit("/", 1)[1]
    expect(page.locator(".job-head .badge")).to_have_text("succeeded", timeout=WAIT_MS)
    assert job(site, again)["spec"] == spec and again != job_id
    page.click("text=Edit and submit")  # the form, filled in from the job
    expect(page.locator("#f-prompt")).to_have_value("a red fox in fresh snow")
    expect(page.locator("#f-seed")).to_have_value("4242")
    expect(page.locator("#f-scheduler")).to_have_value("euler")
    expect(page.locator("#f-model")).to_have_value("sd/tiny")
    page.context.close()


def test_the_form_follows_the_chosen_models_family(
    site: Served, browser: Browser, console: Console
) -> None:
    """A FLUX.1 schnell model chosen: its defaults (4 steps, no guidance) as the
    placeholders, only its schedulers offered, and its true CFG, which runs the negative
    prompt; what is left empty is the model's own, so the job runs with the family's
    defaults. Back to the SD model: every scheduler, no true CFG."""
    from alice_spool.engine.tiny import create_tiny

    models = site.root / "var" / "models"
    if not (models / "flux-schnell").exists():
        create_tiny(models, "flux-schnell", family="flux", variant="schnell")
    page = new_page(site, browser, console, viewport={"width": 1280, "height": 900})
    page.goto(f"{site.url}/web/#/submit")
    expect(page.locator("#f-model option[value='sd/flux-schnell']")).to_be_attached()
    page.select_option("#f-model", "sd/flux-schnell")
    expect(page.locator("#true-cfg-field")).to_be_visible()
    expect(page.locator("#negative-field")).to_contain_text("True CFG")
    expect(page.locator("#f-steps")).to_have_attribute("placeholder", "4")
    expect(page.locator("#f-guidance_scale")).to_have_attribute("placeholder", "0")
    offered = page.locator("#f-scheduler option:not([hidden])").all_text_contents()
    assert "dpm++_2m" not in offered and "euler_karras" in offered, offered
    page.fill("#f-prompt", "a fox in the snow")
    page.fill("#f-negative_prompt", "blurry")
    page.fill("#f-width", "64")
    page.fill("#f-height", "64")
    page.fill("#f-true_cfg_scale", "2")
    page.click("#submit-button")
    panel = page.locator("#submitted .card").first
    expect(panel.locator(".badge")).to_have_text("succeeded", timeout=WAIT_MS)
    ran = job(site, panel.get_attribute("data-id"))["result"]["spec"]
    assert (ran["model"], ran["steps"], ran["scheduler"]) == ("sd/flux-schnell", 4, "euler")
    assert (ran["negative_prompt"], ran["true_cfg_scale"]) == ("blurry", 2)
    page.select_option("#f-model", "sd/tiny")
    expect(page.locator("#true-cfg-field")).to_be_hidden()
    expect(page.locator("#negative-field")).not_to_contain_text("True CFG")
    assert "dpm++_2m" in page.locator("#f-scheduler option:not([hidden])").all_text_contents()
    page.context.close()


def test_upload_paint_a_mask_pick_a_lora_and_see_the_result(
    site: Served, browser: Browser, console: Console, tmp_path: Path
) -> None:
    """The Submit form's image input, mask painter and LoRA picker; the job page shows
    the input and mask beside the result, and "Edit and submit" keeps them."""
    import numpy as np
    from PIL import Image

    from alice_spool.engine.tiny import create_tiny_lora

    create_tiny_lora(site.root / "var" / "models", "web-lora")
    pixels = (np.random.default_rng(5).random((64, 80, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    page = new_page(site, browser, console, viewport={"width": 1280, "height": 1000})
    page.goto(f"{site.url}/web/#/submit")
    page.fill("#f-prompt", "a painted harbour")
    page.fill("#f-steps", "3")
    page.set_input_files("#f-init", str(tmp_path / "photo.png"))
    expect(page.locator("#painter")).to_be_visible()
    page.fill("#f-strength", "0.9")
    box = page.locator("#f-mask").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.5, steps=8)
    page.mouse.up()
    page.select_option("#f-lora", "lora/web-lora")
    page.fill("#lora-list .lora-scale", "0.6")
    shot(page, "submit-image")
    page.click("#submit-button")
    panel = page.locator("#submitted .card").first
    expect(panel.locator(".badge")).to_have_text("succeeded", timeout=WAIT_MS)
    job_id = panel.get_attribute("data-id")
    made = job(site, job_id)
    spec = made["spec"]
    assert spec["init_image"].startswith("sha256:") and spec["mask_image"].startswith("sha256:")
    assert (spec["strength"], spec["width"], spec["height"]) == (0.9, 80, 64)
    assert spec["loras"] == [{"name": "lora/web-lora", "scale": 0.6}]
    mask = np.asarray(Image.open(site.root / "var" / "inputs" / job_id / "mask.png").convert("L"))
    assert mask[32, 40] == 255 and mask[2, 2] == 0  # painted across the middle, not the corner
    result = np.asarray(Image.open(site.root / "var" / "outbox" / job_id / f"{job_id}-0.png"))
    keep = mask == 0
    assert np.array_equal(result[keep], pixels[keep])  # outside the mask: the input's

    page.goto(f"{site.url}/web/#/jobs/{job_id}")
    expect(page.locator("img.input-init")).to_be_visible()
    expect(page.locator("img.input-mask")).to_be_visible()
    expect(page.locator("#view .params")).to_contain_text("inpainting")
    expect(page.locator("#view .params")).to_contain_text("lora/web-lora at 0.6")
    shot(page, "job-image")
    page.click("text=Edit and submit")
    expect(page.locator("#painter")).to_be_visible()
    expect(page.locator("#lora-list li")).to_have_count(1)
    expect(page.locator("#f-strength")).to_have_value("0.9")
    page.click("#submit-button")
    again = page.locator("#submitted .card").first
    expect(again.locator(".badge")).to_have_text("succeeded", timeout=WAIT_MS)
    second_id = again.get_attribute("data-id")
    second = job(site, second_id)["spec"]
    assert second["init_image"] == spec["init_image"]  # the very file, sent again
    assert second["loras"] == spec["loras"] and second["strength"] == 0.9
    # The mask is painted back into the painter and drawn out again: the same pixels
    # (a PNG encoded anew, so not the same bytes).
    repainted = Image.open(site.root / "var" / "inputs" / second_id / "mask.png").convert("L")
    assert np.abs(np.asarray(repainted, np.int16) - mask.astype(np.int16)).max() <= 1
    page.context.close()


def test_the_form_says_what_is_wrong_and_queues_nothing(site: Served, browser: Browser) -> None:
    console = Console()
    page = new_page(site, browser, console, viewport={"width": 1280, "height": 900})
    page.goto(f"{site.url}/web/#/submit")
    before = httpx.get(f"{site.url}/v1/stats", headers=AUTH).json()["depth"]
    page.click("#submit-button")  # no prompt
    expect(page.locator("#submit-error")).to_contain_text("prompt")
    expect(page.locator("#f-prompt")).to_have_class(re.compile("invalid"))
    page.fill("#f-prompt", "too many steps")
    page.fill("#f-steps", "1000")
    page.click("#submit-button")
    expect(page.locator("#submit-error")).to_contain_text("steps")
    expect(page.locator("#f-steps")).to_have_class(re.compile("invalid"))
    expect(page.locator("#f-prompt")).not_to_have_class(re.compile("invalid"))
    shot(page, "submit-refused")
    assert httpx.get(f"{site.url}/v1/stats", headers=AUTH).json()["depth"] == before
    assert page.locator("#submitted .card").count() == 0
    # The browser logs each refused request (HTTP 400); nothing else went wrong.
    assert len(console.errors) == 2 and all("400" in e for e in console.errors)
    page.context.close()


def test_gallery_pages_through_older_images(
    site: Served, browser: Browser, console: Console
) -> None:
    ids = [submit_job(site, prompt=f"page {i}", size="64x64", seed=i)["id"] for i in range(26)]
    wait_for_status(site, ids[-1], "succeeded")
    for job_id in ids:
        wait_for_status(site, job_id, "succeeded")
    page = new_page(site, browser, console)
    page.goto(f"{site.url}/web/#/gallery")
    expect(page.locator(".gallery .tile")).to_have_count(24)  # one image per job, 24 jobs
    expect(page.locator(".gallery .tile").first).to_contain_text("page 25")
    page.click("text=Older →")
    expect(page.locator(".gallery .tile").first).to_contain_text("page 1")
    page.click("text=← Newer")
    expect(page.locator(".gallery .tile").first).to_contain_text("page 25")
    page.context.close()


def test_queue_cancels_and_reprioritises_queued_jobs(
    site: Served, browser: Browser, console: Console
) -> None:
    # A long job holds the runner; the next two (another size: no batching with it) wait.
    blocker = submit_job(site, prompt="the long one", size="64x64", steps=150, n=16)
    wait_for_status(site, blocker["id"], "running")
    first = submit_job(site, prompt="waiting first", size="72x72")
    second = submit_job(site, prompt="waiting second", size="72x72")
    page = new_page(site, browser, console, viewport={"width": 1280, "height": 900})
    page.goto(f"{site.url}/web/#/queue")
    row = lambda job: page.locator(f"tr[data-id='{job['id']}']")  # noqa: E731
    expect(row(second).locator(".badge")).to_have_text("queued")
    expect(row(blocker).locator(".badge")).to_have_text("running")
    progress = row(blocker).locator(".progress")
    expect(progress).to_have_attribute("title", re.compile(r"step \d+ of 150"), timeout=WAIT_MS)
    row(second).locator("button.raise").click()
    expect(row(second).locator(".priority .value")).to_have_text("10")
    row(second).locator("button.raise").click()
    expect(row(second).locator(".priority .value")).to_have_text("20")
    row(first).locator("button.lower").click()
    expect(row(first).locator(".priority .value")).to_have_text("-10")
    assert (job(site, second["id"])["priority"], job(site, first["id"])["priority"]) == (20, -10)
    shot(page, "queue")
    row(first).locator("button.cancel").click()
    expect(row(first).locator(".badge")).to_have_text("cancelled")
    expect(row(first).locator("button.retry")).to_be_visible()
    row(blocker).locator("button.cancel").click()  # a running job stops at its next step
    expect(row(blocker).locator(".badge")).to_have_text("cancelled", timeout=WAIT_MS)
    expect(row(second).locator(".badge")).to_have_text("succeeded", timeout=WAIT_MS)
    assert job(site, first["id"])["status"] == "cancelled"
    assert job(site, blocker["id"])["status"] == "cancelled"
    page.select_option("select[name=status]", "cancelled")  # the filter
    expect(page.locator("tbody tr")).to_have_count(2)
    shot(page, "queue-cancelled")
    page.context.close()


def test_retry_a_failed_job_from_its_page(site: Served, browser: Browser, console: Console) -> None:
    models = site.root / "var" / "models"
    shutil.copytree(models / "tiny", models / "fragile")
    weights = models / "fragile" / "unet" / "diffusion_pytorch_model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(b"not safetensors at all")  # the copy broke on its way
    httpx.post(f"{site.url}/v1/models/refresh", headers=AUTH, timeout=30)
    failing = submit_job(site, prompt="needs the fragile model", model="sd/fragile")
    failed = wait_for_status(site, failing["id"], "failed", "succeeded")
    assert failed["status"] == "failed" and failed["error"]["code"] == "model_load_failed"
    page = new_page(site, browser, console, viewport={"width": 1280, "height": 900})
    page.goto(f"{site.url}/web/#/jobs/{failing['id']}")
    expect(page.locator(".error.box")).to_contain_text("model_load_failed")
    shot(page, "job-failed")
    weights.write_bytes(good)  # mended
    page.click("button.retry")
    expect(page.locator(".job-head .badge")).to_have_text("succeeded", timeout=WAIT_MS)
    expect(page.locator(".thumbs img")).to_have_count(1)
    assert job(site, failing["id"])["status"] == "succeeded"
    shot(page, "job-retried")
    page.context.close()


def test_models_page_sets_the_default(site: Served, browser: Browser, console: Console) -> None:
    models = site.root / "var" / "models"
    if not (models / "spare").exists():
        shutil.copytree(models / "tiny", models / "spare")
    chosen = httpx.post(  # tiny chosen first, whichever tests ran before
        f"{site.url}/v1/models/default", json={"model": "sd/tiny"}, headers=AUTH, timeout=30
    )
    assert chosen.status_code == 200, chosen.text
    page = new_page(site, browser, console, viewport={"width": 1280, "height": 900})
    page.goto(f"{site.url}/web/#/models")
    page.click("text=Rescan models directory")
    spare = page.locator("tr[data-id='sd/spare']")
    expect(spare).to_contain_text("sd1")
    spare.locator("button.make-default").click()
    expect(spare.locator(".badge.default")).to_be_visible()
    listed = httpx.get(f"{site.url}/v1/models", headers=AUTH).json()["data"]
    assert [m["id"] for m in listed if m.get("default")] == ["sd/spare"]
    # The list has OpenAI's names as aliases, for its clients; the page shows models only.
    assert {"dall-e-3": "sd/spare"}.items() <= {m["id"]: m.get("alias_of") for m in listed}.items()
    expect(page.locator("tr[data-id='dall-e-3']")).to_have_count(0)
    page.goto(f"{site.url}/web/#/submit")
    options = page.locator("#f-model option")
    expect(options.first).to_be_attached()
    assert "dall-e-3" not in options.all_text_contents()
    page.goto(f"{site.url}/web/#/models")
    shot(page, "models")
    page.locator("tr[data-id='sd/tiny'] button.make-default").click()  # and back
    expect(page.locator("tr[data-id='sd/tiny'] .badge.default")).to_be_visible()
    page.context.close()


def test_the_download_page_browses_searches_downloads_and_cancels(
    site: Served, browser: Browser, console: Console, stand_ins: tuple[Hub, Civitai]
) -> None:
    hub, _ = stand_ins
    page = new_page(site, browser, console, viewport={"width": 1280, "height": 1000})
    page.goto(f"{site.url}/web/#/download")
    cards = page.locator("#civitai-results article.result")
    expect(cards).to_have_count(2)  # browsing: checkpoints and LoRAs, no NSFW, no VAE
    ink = page.locator("article.result[data-id='1']")
    wait_until(lambda: ink.locator("img.preview").evaluate("i => i.naturalWidth") == 64, 30)
    assert "image.civitai.com" not in ink.locator("img.preview").get_attribute("src")
    page.select_option("#civitai-type", "LORA,LoCon,DoRA")
    page.click("#civitai-form button[type=submit]")
    expect(cards).to_have_count(1)
    page.check("#civitai-nsfw")
    page.click("#civitai-form button[type=submit]")
    expect(cards).to_have_count(2)  # and the NSFW LoRA
    page.fill("#civitai-query", "night")
    page.click("#civitai-form button[type=submit]")
    expect(cards).to_have_count(1)
    expect(cards.first).to_contain_text("Night Style")
    page.uncheck("#civitai-nsfw")
    page.fill("#civitai-query", "")
    page.click("#civitai-form button[type=submit]")
    expect(cards).to_have_count(1)
    ink.locator("button.get").click()
    row = page.locator("#download-queue tr[data-status]").first
    expect(row).to_contain_text("inkStyle")
    expect(page.locator("#download-queue tr[data-status='succeeded']")).to_have_count(
        1, timeout=WAIT_MS
    )
    assert (site.root / "var" / "models" / "loras" / "inkStyle.safetensors").exists()
    page.fill("#hub-query", "web")
    page.click("#hub-form button[type=submit]")
    expect(page.locator("#hub-results tr[data-id='org/web-lora']")).to_contain_text("lora")
    shot(page, "download")
    hub.files.hold = threading.Event()
    try:
        page.locator("#hub-results tr[data-id='org/web-lora'] button.get").click()
        held = page.locator("#download-queue tr[data-status='downloading']")
        expect(held).to_have_count(1, timeout=WAIT_MS)
        held.locator("button.cancel-download").click()
        hub.files.hold.set()
        expect(page.locator("#download-queue tr[data-status='cancelled']")).to_have_count(
            1, timeout=WAIT_MS
        )
    finally:
        hub.files.hold.set()
        hub.files.hold = None
    assert not (site.root / "var" / "models" / "web.safetensors").exists()
    page.context.close()
    # A refused URL: the server's 400 (which the browser logs as a failed resource) shown.
    refused = new_page(site, browser, Console(), viewport={"width": 1280, "height": 900})
    refused.goto(f"{site.url}/web/#/download")
    refused.fill("#download-url", "ftp://example.org/x.safetensors")
    refused.click("#url-form button[type=submit]")
    expect(refused.locator("#notice")).to_contain_text("must be an http or https URL")
    listed = httpx.get(f"{site.url}/v1/downloads", headers=AUTH).json()["data"]
    assert not [d for d in listed if d["source"] == "url"]
    refused.context.close()


def test_the_models_page_deletes_a_model_and_a_lora(
    site: Served, browser: Browser, console: Console
) -> None:
    models = site.root / "var" / "models"
    shutil.copytree(models / "tiny", models / "doomed")
    loras = models / "loras"
    loras.mkdir(exist_ok=True)
    create_tiny_lora(models, "doomed-lora", replace=True)
    page = new_page(site, browser, console, viewport={"width": 1280, "height": 900})
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(f"{site.url}/web/#/models")
    page.click("text=Rescan models directory")
    page.locator("tr[data-id='sd/doomed'] button.delete-model").click()
    expect(page.locator("tr[data-id='sd/doomed']")).to_have_count(0)
    assert not (models / "doomed").exists()
    page.locator("tr[data-id='lora/doomed-lora'] button.delete-lora").click()
    expect(page.locator("tr[data-id='lora/doomed-lora']")).to_have_count(0)
    assert not (loras / "doomed-lora.safetensors").exists()
    expect(page.locator("tr[data-id='sd/tiny']")).to_be_visible()
    page.context.close()


def test_api_docs_render_openapi_with_examples(
    site: Served, browser: Browser, console: Console
) -> None:
    page = new_page(site, browser, console, viewport={"width": 1280, "height": 900})
    page.goto(f"{site.url}/web/#/docs")
    jobs = page.locator("section.operation[id='post-/v1/jobs']")
    expect(jobs).to_contain_text("Queue one job")
    expect(jobs.locator("pre.example")).to_contain_text("Authorization: Bearer $ALICE_API_KEY")
    expect(jobs.locator("pre.example")).to_contain_text('"prompt":"a lighthouse at dusk"')
    expect(jobs.locator("table.fields")).to_contain_text("dpm++_sde_karras")
    paths = httpx.get(f"{site.url}/openapi.json").json()["paths"]
    count = sum(len(methods) for methods in paths.values())
    expect(page.locator("section.operation")).to_have_count(count)
    shot(page, "docs")
    page.context.close()


def test_the_plain_api_page_renders_under_its_policy(
    site: Served, browser: Browser, console: Console
) -> None:
    """/docs: styled by its one style element, allowed by hash (a refused style would be
    a console error), every route listed."""
    page = new_page(site, browser, console, viewport={"width": 1280, "height": 900})
    page.goto(f"{site.url}/docs")
    expect(page.locator("h1")).to_contain_text("the HTTP API")
    expect(page.locator("h2#post--v1-jobs")).to_contain_text("/v1/jobs")
    weight = page.locator("span.method").first.evaluate("e => getComputedStyle(e).fontWeight")
    assert weight == "700"  # the page's own style applies
    shot(page, "docs-plain")
    page.context.close()


def test_every_page_fits_a_phone(site: Served, browser: Browser, console: Console) -> None:
    done = submit_job(site, prompt="for the phone", size="64x64", seed=3)
    wait_for_status(site, done["id"], "succeeded")
    page = new_page(
        site,
        browser,
        console,
        viewport={"width": 390, "height": 844},
        is_mobile=True,
        has_touch=True,
    )
    for name, marker in (
        ("", "#runners .runner"),
        ("queue", "table.jobs tbody tr"),
        (f"jobs/{done['id']}", ".job-head"),
        ("gallery", ".gallery .tile"),
        ("models", "table.models tbody tr"),
        ("download", "#civitai-results article.result"),
        ("submit", "#submit-form"),
        ("docs", "section.operation"),
    ):
        page.goto(f"{site.url}/web/#/{name}")
        expect(page.locator(marker).first).to_be_visible()
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{name} is wider than the phone by {overflow}px"
        shot(page, f"phone-{name.split('/')[0] or 'dashboard'}")
    page.context.close()


def make_key(site: Served, name: str, *, admin: bool = False) -> str:
    answer = httpx.post(
        f"{site.url}/v1/auth/keys/generate",
        json={"name": name, "isAdmin": admin},
        headers=AUTH,
        timeout=30,
    )
    assert answer.status_code == 201, answer.text
    return str(answer.json()["key"])


def test_a_user_sees_only_their_own_and_shares_tags_and_deletes_in_the_gallery(
    site: Served, browser: Browser, console: Console
) -> None:
    key = make_key(site, "web-user")
    others = submit_job(site, prompt="an admin's private harbour", size="64x64", seed=5)
    mine = httpx.post(
        f"{site.url}/v1/jobs",
        json={"prompt": "a user's lighthouse", "size": "64x64", "n": 2, "seed": 6},
        headers={"X-Api-Key": key},
        timeout=30,
    ).json()
    wait_for_status(site, others["id"], "succeeded")
    wait_for_status(site, mine["id"], "succeeded")
    page = new_page(site, browser, console, key=key, viewport={"width": 1280, "height": 900})
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(f"{site.url}/web/#/gallery")
    expect(page.locator("#who")).to_have_text("web-user (user)")
    expect(page.locator("#nav a[data-page=admin]")).to_be_hidden()
    tiles = page.locator(".gallery .tile")
    expect(tiles).to_have_count(2)  # hers alone: not the admin's image
    expect(tiles.first).to_contain_text("a user's lighthouse")
    first, second = f"{mine['id']}-1", f"{mine['id']}-0"
    tile = page.locator(f".tile[data-id='{first}']")
    tile.locator(".tag-input").fill("Coast, night")
    tile.locator("text=Save tags").click()
    expect(tile.locator(".tag")).to_have_text(["coast", "night"])
    tile.locator(".share-hours").select_option("72")
    tile.locator("button.share").click()
    expect(page.locator(f".tile[data-id='{first}'] .badge.shared")).to_be_visible()
    shot(page, "gallery-user")
    shared = httpx.get(f"{site.url}/v1/gallery/{first}", headers={"X-Api-Key": key}).json()
    assert shared["isPublic"] is True and shared["tags"] == ["coast", "night"]
    page.fill("#gallery-tags", "coast")
    page.click("#gallery-filters button[type=submit]")
    expect(tiles).to_have_count(1)
    page.goto(f"{site.url}/web/#/gallery")
    url = httpx.get(f"{site.url}/v1/gallery/{second}", headers={"X-Api-Key": key}).json()["url"]
    page.locator(f".tile[data-id='{second}'] button.delete-image").click()
    expect(page.locator(f".tile[data-id='{second}']")).to_have_count(0)
    assert httpx.get(url, timeout=30).status_code == 404  # the file is gone
    # What a user may not do is not offered: no delete or default on the Models page.
    page.goto(f"{site.url}/web/#/models")
    expect(page.locator("tr[data-id='sd/tiny']")).to_be_visible()
    expect(page.locator("button.delete-model")).to_have_count(0)
    expect(page.locator("button.make-default")).to_have_count(0)
    page.goto(f"{site.url}/web/#/admin")
    expect(page.locator("main h1")).to_have_text("Admins only")
    # Another user sees the shared image, and may not change it.
    other = new_page(site, browser, console, key=make_key(site, "web-other"))
    other.goto(f"{site.url}/web/#/gallery?show=shared")
    expect(other.locator(f".tile[data-id='{first}']")).to_be_visible()
    expect(other.locator(f".tile[data-id='{first}'] button.delete-image")).to_have_count(0)
    other.context.close()
    page.context.close()


def test_the_admin_page_makes_and_revokes_keys_invites_and_ends_sessions(
    site: Served, browser: Browser, console: Console
) -> None:
    page = new_page(site, browser, console, viewport={"width": 1280, "height": 1200})
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(f"{site.url}/web/#/admin")
    expect(page.locator("#admin-keys tr[data-name=ops]")).to_contain_text("config")
    page.fill("#new-key-name", "web-made")
    page.click("#new-key button[type=submit]")
    secret = page.locator("#admin-keys code.secret")
    expect(secret).to_be_visible()
    made = secret.inner_text()
    assert made.startswith("sd-")
    assert httpx.get(f"{site.url}/v1/auth/me", headers={"X-Api-Key": made}).json()["name"] == (
        "web-made"
    )
    page.locator("#admin-keys tr[data-name=web-made] button.revoke").click()
    expect(page.locator("#admin-keys tr[data-name=web-made]")).to_contain_text("revoked")
    assert httpx.get(f"{site.url}/v1/jobs", headers={"X-Api-Key": made}).status_code == 401
    page.click("#new-invite button[type=submit]")
    expect(page.locator("#admin-invites code.secret")).to_be_visible()
    expect(page.locator("#admin-invites li")).to_have_count(1)
    expect(page.locator("#admin-sessions tr[data-name=ops]").first).to_be_visible()
    config = page.locator("#admin-config-json")
    expect(config).to_contain_text('"civitai_token": "***"')
    expect(config).to_contain_text('"ops": "***"')
    assert KEY not in config.inner_text()
    expect(page.locator("#admin-storage tr[data-part=outbox]")).to_contain_text("MiB")
    shot(page, "admin")
    # A user's session ended here: that browser must log in again.
    user = new_page(site, browser, Console(), key=make_key(site, "web-ended"))
    user.goto(f"{site.url}/web/#/queue")
    expect(user.locator("#who")).to_have_text("web-ended (user)")
    page.reload()
    page.locator("#admin-sessions tr[data-name=web-ended] button.end-session").click()
    expect(page.locator("#admin-sessions tr[data-name=web-ended]")).to_have_count(0)
    user.reload()
    expect(user.locator("#key-dialog")).to_be_visible()
    user.context.close()
    page.context.close()
