"""The web page in a real browser (Playwright driving Chromium) against a real `cascade serve`
(embedded Redis, a worker, the API) with tiny random presets: generate and watch the progress,
upscale and compare, cancel, and a bad upload.

Skipped when Playwright or a Chromium binary is missing (`make test` installs Debian's
chromium where apt-get can; CASCADE_BROWSER names another binary). Screenshots go to each
test's tmp dir; with CASCADE_SCREENSHOT_DIR set the service runs the demo weights instead and
the finished upscale is saved there as page.png (how docs/page.png was made).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import free_port
from PIL import Image

pytestmark = pytest.mark.service

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

REPO = Path(__file__).resolve().parents[2]
CASCADE = str(REPO / ".venv" / "bin" / "cascade")
BROWSER = (
    os.environ.get("CASCADE_BROWSER")
    or shutil.which("chromium")
    or shutil.which("chromium-browser")
    or shutil.which("google-chrome")
)
SCREENSHOTS = os.environ.get("CASCADE_SCREENSHOT_DIR")
STAGES = ("base64", "sr256", "sr1024")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 60_000 if SCREENSHOTS else 30_000  # the demo weights sample more slowly

if BROWSER is None:
    pytest.skip(
        "no Chromium found (install Debian's `chromium`, or set CASCADE_BROWSER)",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("page")
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("CASCADE_")}
    env.update(
        CASCADE_STORE=str(root / "results"),
        CASCADE_EMBEDDED_REDIS=str(root / "redis" / "cascade.rdb"),
        CASCADE_TORCH_THREADS="1",
    )
    if not SCREENSHOTS:
        env.update(
            CASCADE_STEPS_BASE64="8",
            CASCADE_STEPS_SR256="4",
            CASCADE_STEPS_SR1024="2",
            **{f"CASCADE_WEIGHTS_{name.upper()}": f"preset:{name}-tiny" for name in STAGES},
        )
    log = open(root / "serve.log", "w")  # noqa: SIM115 (closed below)
    serve = subprocess.Popen(
        [CASCADE, "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert serve.poll() is None, (root / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "cascade serve did not become ready"
            time.sleep(0.2)
        yield base
    finally:
        serve.send_signal(signal.SIGINT)
        try:
            serve.wait(30)
        except subprocess.TimeoutExpired:
            serve.kill()
        log.close()


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory):
    with playwright_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),  # a fresh profile
            executable_path=BROWSER,
            headless=True,
            args=ARGS,
            viewport={"width": 1280, "height": 900},
        )
        context.set_default_timeout(TIMEOUT_MS)
        yield context
        context.close()


@pytest.fixture
def page(context, server: str, tmp_path: Path, request: pytest.FixtureRequest):
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(server)
    yield page
    page.screenshot(path=str(tmp_path / f"{request.node.name}.png"), full_page=True)
    page.close()
    assert not errors, f"the page's script failed: {errors}"


def newest_job(page):
    return page.locator("#jobs > li").first


# The id of the list's first card once it is not `before` (the card shown before a submit).
NEW_FIRST_CARD = """before => {
    const id = document.querySelector('#jobs > li')?.dataset.id;
    return id && id !== before ? id : null; }"""


def submit(page, form: str):
    """Submit `form` and return the new job's card, by its id: until the API has answered, the
    list's first card is an earlier job's (which may well have succeeded already)."""
    before = page.evaluate("document.querySelector('#jobs > li')?.dataset.id ?? null")
    page.click(f"{form} button[type=submit]")
    job_id = page.wait_for_function(NEW_FIRST_CARD, arg=before).json_value()
    return page.locator(f"#jobs > li[data-id='{job_id}']")


def test_generate_shows_progress_and_the_image(page):
    page.fill("#gen-class", "tabby")
    page.check("input[name=size][value='64']")
    page.click("#generate summary")  # the advanced fold
    if not SCREENSHOTS:
        page.fill("#gen-steps", "40")  # long enough to see it running
    page.locator("#gen-quote").get_by_text("Quote: base64 64×64").wait_for()
    job = submit(page, "#generate")
    badge = job.locator(".badge")
    badge.filter(has_text="succeeded").wait_for()
    assert job.locator(".overall progress").evaluate("node => node.value") == 1
    assert job.locator(".percent").inner_text() == "100%"
    assert job.locator(".status-line .live").inner_text().startswith("Done in")
    final = job.locator("img.final")
    final.wait_for()
    assert final.evaluate("img => img.complete && img.naturalWidth") == 64
    preview = job.locator(".stage img")
    assert preview.evaluate("img => img.naturalWidth") == 64
    assert job.locator(".stage-name").inner_text().startswith("base64 · 64×64 · succeeded")
    # It followed the job by Server-Sent Events, not by polling.
    resources = page.evaluate("performance.getEntriesByType('resource').map(e => e.name)")
    assert any(name.endswith("/events") for name in resources), resources
    # Copy as curl: the request again, with the seed the job drew.
    job.locator("button.curl").click()
    command = job.locator(".curl-text").input_value()
    assert "/v1/generations" in command and '"class_name":"tabby"' in command
    assert '"seed":' in command


# Installed in the page before a job is submitted: every preview the card's live <img> is
# given (its alt and the start of its src, as each progress event set them), each load or
# failed load of one (with the decoded size), and every content-policy violation.
WATCH_PREVIEWS = """() => {
    window.previewsSet = []; window.previewsLoaded = []; window.violations = [];
    new MutationObserver((changes) => { for (const change of changes) {
        const img = change.target;
        if (img.closest('.live-preview') && img.getAttribute('src'))
            window.previewsSet.push([img.alt, img.getAttribute('src').slice(0, 23)]);
    } }).observe(document.body, { subtree: true, attributes: true, attributeFilter: ['src'] });
    const loaded = (event) => {
        const img = event.target;
        if (img instanceof HTMLImageElement && img.closest('.live-preview'))
            window.previewsLoaded.push([event.type, img.alt, img.naturalWidth, img.naturalHeight]);
    };
    document.addEventListener('load', loaded, true);
    document.addEventListener('error', loaded, true);
    document.addEventListener('securitypolicyviolation',
        (event) => window.violations.push(`${event.violatedDirective} ${event.blockedURI}`));
}"""


def test_generate_shows_live_previews_forming_then_the_result(page):
    """The service's default of 4 previews per stage: a 256 px generation of 24 steps a stage
    carries them on steps 6, 12, 18 and 24 of base64 (64 px as is) and of sr256 (256 px, shown
    at 128 px); the card's image takes each in turn and gives way to the result."""
    page.evaluate(WATCH_PREVIEWS)
    page.fill("#gen-class", "tabby")
    page.check("input[name=size][value='256']")
    page.click("#generate summary")
    page.fill("#gen-steps", "24")
    job = submit(page, "#generate")
    job.locator(".badge").filter(has_text="succeeded").wait_for()
    after = job.locator("img.after")
    after.wait_for()
    page.wait_for_function("() => document.querySelector('#jobs > li .after').naturalWidth === 256")
    live = job.locator(".live-preview")
    live.wait_for(state="hidden")  # the result took its place
    assert live.locator("img").get_attribute("src") is None

    webp = "data:image/webp;base64,"
    assigned = page.evaluate("window.previewsSet")
    expected = [
        (f"Live preview of stage {stage} at step {step} of 24", webp)
        for stage in ("base64", "sr256")
        for step in (6, 12, 18, 24)
    ]
    assert [tuple(item) for item in assigned] == expected
    # Each shown preview decoded to its stage's size, none refused (the page's policy lets
    # data: images in); a quick successor may replace one before it loads.
    loaded = page.evaluate("window.previewsLoaded")
    assert loaded, "no live preview was shown"
    sides = {"base64": 64, "sr256": 128}
    for kind, alt, width, height in loaded:
        stage = alt.split()[4]
        assert (kind, width, height) == ("load", sides[stage], sides[stage]), loaded
    assert page.evaluate("window.violations") == []


def chelsea_crop(path: Path, side: int = 64) -> Path:
    """scikit-image's chelsea (a photo that ships with it): the cat's face, reduced 4x with
    antialiasing as the upscalers' training inputs were, as a PNG."""
    from skimage import data

    face = Image.fromarray(np.asarray(data.chelsea())[20:276, 120:376])
    face.resize((side, side), Image.Resampling.BICUBIC, reducing_gap=None).save(path)
    return path


def test_upscale_shows_sizes_and_the_comparison(page, tmp_path: Path):
    page.click("#tab-upscale")
    page.set_input_files("#up-file", str(chelsea_crop(tmp_path / "cat.png")))
    page.locator("#up-sizes").get_by_text("Input 64×64 → output 256×256").wait_for()
    page.locator("#up-quote").get_by_text("Quote: sr256 256×256").wait_for()
    assert "Limits: files up to" in page.inner_text("#up-limits")
    steps_hint = page.locator("#up-steps-hint").text_content()
    assert "1 is the fastest" in steps_hint and "sr256 " in steps_hint
    if not SCREENSHOTS:  # the demo weights keep their own fidelity default (their model card)
        page.fill("#up-fidelity", "0.8")
        page.click("#upscale details.advanced summary")
        page.select_option("#up-low-band", "sample")  # an option the limits listed
    page.select_option("#up-color", "wavelet")
    job = submit(page, "#upscale")
    job.locator(".badge").filter(has_text="succeeded").wait_for()
    job.locator("figure.compare").wait_for()
    canvas = job.locator("canvas.before")
    assert canvas.evaluate("c => [c.width, c.height]") == [256, 256]
    after = job.locator("img.after")
    assert after.evaluate("img => img.decode().then(() => img.naturalWidth)") == 256
    # The bicubic half is drawn: not a blank canvas.
    spread = canvas.evaluate(
        "c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        " let lo = 255, hi = 0; for (let i = 0; i < d.length; i += 4) {"
        " lo = Math.min(lo, d[i]); hi = Math.max(hi, d[i]); } return hi - lo; }"
    )
    assert spread > 50
    job.locator("input.slider").fill("20")
    assert "20%" in after.evaluate("img => img.style.clipPath")
    download = job.locator("a.download")
    assert download.get_attribute("download").endswith(".png")
    request = page.evaluate("JSON.parse(localStorage.getItem('cascade.jobs'))[0].request")
    if SCREENSHOTS:
        job.locator("input.slider").fill("50")
        page.evaluate("window.scrollTo(0, 0)")
        clip = {"x": 0, "y": 0, "width": 1280, "height": 1060}
        page.screenshot(path=str(Path(SCREENSHOTS) / "page.png"), full_page=True, clip=clip)
    else:
        assert request == {
            "scale": 4,
            "fidelity": 0.8,
            "color_fix": "wavelet",
            "low_band": "sample",
        }


def test_cancel_a_running_job(page):
    page.fill("#gen-class", "tabby")
    page.check("input[name=size][value='256']")
    page.click("#generate summary")
    page.fill("#gen-steps", "1000")  # still running when the cancel comes
    job = submit(page, "#generate")
    job.locator(".badge").filter(has_text="running").wait_for()
    job.locator("button.cancel").click()
    job.locator(".badge").filter(has_text="canceled").wait_for()
    assert job.locator("button.cancel").is_hidden()
    assert job.locator(".status-line .live").inner_text() == "Canceled"
    assert "sr256 · 256×256 · canceled" in job.locator(".stages").inner_text()
    # The running stage stops within a step, and the page shows that too.
    job.locator(".stage-name").get_by_text("base64 · 64×64 · canceled").wait_for()


def test_a_bad_upload_shows_the_api_message(page, tmp_path: Path):
    page.focus("#tab-generate")
    page.keyboard.press("ArrowRight")  # the tabs work from the keyboard
    assert page.locator("#upscale").is_visible() and page.locator("#generate").is_hidden()
    fake = tmp_path / "notes.png"
    fake.write_text("these are notes, not an image")
    page.set_input_files("#up-file", str(fake))
    message = "the uploaded file is not an image (PNG, JPEG or WebP)"
    page.locator("#up-quote").get_by_text(message).wait_for()
    page.click("#upscale button[type=submit]")
    error = page.locator("#up-error")
    error.get_by_text(message).wait_for()
    assert error.inner_text() == message  # the API's own words
    assert error.get_attribute("role") == "alert"


def test_an_api_key_is_sent_and_the_job_polled(page):
    page.wait_for_load_state("networkidle")  # the earlier jobs, loaded without a key
    page.click("summary:has-text('API key')")
    page.fill("#api-key", "not-a-real-key")
    page.keyboard.press("Tab")  # stored when the field changes
    sent: list[tuple[str, str | None]] = []
    page.on(
        "request", lambda request: sent.append((request.url, request.headers.get("authorization")))
    )
    page.fill("#gen-class", "goldfish")
    job = submit(page, "#generate")
    job.locator(".badge").filter(has_text="succeeded").wait_for()
    job_id = job.get_attribute("data-id")
    calls = [(url, auth) for url, auth in sent if "/v1/" in url]
    assert calls and all(auth == "Bearer not-a-real-key" for _, auth in calls), calls
    # EventSource cannot send the header, so this job was polled.
    assert not any(url.endswith(f"/v1/jobs/{job_id}/events") for url, _ in calls)
    assert any(url.endswith(f"/v1/jobs/{job_id}") for url, _ in calls)
    page.fill("#api-key", "")
    page.keyboard.press("Tab")
    assert page.evaluate("localStorage.getItem('cascade.apiKey')") is None


def test_the_page_fits_a_phone(page, tmp_path: Path):
    page.set_viewport_size({"width": 375, "height": 740})
    page.reload()
    page.locator("#jobs > li").first.wait_for()
    overflow = page.evaluate("document.documentElement.scrollWidth")
    assert overflow <= 375
    for control in ("#gen-class", "#gen-seed-random", "button[type=submit]"):
        assert page.locator(control).first.bounding_box()["width"] > 0
    unlabeled = page.evaluate(
        "[...document.querySelectorAll('input, select, textarea')]"
        ".filter(e => e.type !== 'hidden' && !e.labels?.length && !e.getAttribute('aria-label'))"
        ".map(e => e.id || e.className)"
    )
    assert unlabeled == []


def test_a_job_made_with_curl_is_listed_and_a_new_card_is_shown(page, server: str):
    made = httpx.post(f"{server}/v1/generations", json={"class_name": "goldfish", "size": 64})
    assert made.status_code == 202, made.text
    page.set_viewport_size({"width": 375, "height": 740})  # where a new card is off-screen
    page.reload()
    listed = page.locator(f"#jobs > li[data-id='{made.json()['id']}']")
    listed.wait_for()
    assert "Generate goldfish, 64 px" in listed.inner_text()
    listed.locator("button.forget").click()  # removed here, it stays removed after a reload
    page.reload()
    newest_job(page).wait_for()
    assert listed.count() == 0
    page.fill("#gen-class", "tabby")
    card = submit(page, "#generate")
    card.locator(".badge").wait_for()
    page.wait_for_function(
        "() => document.activeElement?.closest('#jobs > li')"
        " === document.querySelector('#jobs > li')"
    )
    top, bottom = card.locator("article").evaluate(
        "a => { const r = a.getBoundingClientRect(); return [r.top, r.bottom]; }"
    )
    assert top < 740 and bottom > 0, (top, bottom)  # on screen


def test_an_error_goes_once_the_input_is_valid(page):
    page.click("#generate button[type=submit]")  # no class chosen yet
    error = page.locator("#gen-error")
    error.get_by_text("Choose a class first").wait_for()
    page.fill("#gen-class", "tabby")
    page.locator("#gen-quote").get_by_text("Quote: base64").wait_for()
    page.wait_for_function("() => document.querySelector('#gen-error').textContent === ''")


def luminance(rgb: tuple[float, ...]) -> float:
    """WCAG 2's relative luminance of an sRGB colour (0..255 channels)."""
    linear = [
        c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in (v / 255 for v in rgb)
    ]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(first: tuple[float, ...], second: tuple[float, ...]) -> float:
    low, high = sorted((luminance(first), luminance(second)))
    return (high + 0.05) / (low + 0.05)


# The colour an element's background shows through: the nearest ancestor's opaque background.
BACKDROP = """e => { for (let n = e; n; n = n.parentElement) {
    const c = getComputedStyle(n).backgroundColor;
    if (c !== 'rgba(0, 0, 0, 0)' && c !== 'transparent') return c; }
    return 'rgb(255, 255, 255)'; }"""


def rgb(css: str) -> tuple[float, ...]:
    inside = css[css.index("(") + 1 : css.index(")")]
    return tuple(float(part) for part in inside.replace("/", ",").split(",")[:3])


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_inputs_and_text_have_enough_contrast(page, scheme: str):
    page.emulate_media(color_scheme=scheme)
    for control in ("#gen-class", "#gen-steps", "#gen-sampler", "#api-key"):
        field = page.locator(control)
        border = rgb(field.evaluate("e => getComputedStyle(e).borderTopColor"))
        around = rgb(field.evaluate(f"e => ({BACKDROP})(e.parentElement)"))
        assert contrast(border, around) >= 3, (scheme, control, border, around)
    for text in ("h1", "label[for=gen-class]", ".hint", "#up-limits", ".tabs [role=tab]"):
        node = page.locator(text).first
        colour = rgb(node.evaluate("e => getComputedStyle(e).color"))
        behind = rgb(node.evaluate(BACKDROP))
        assert contrast(colour, behind) >= 4.5, (scheme, text, colour, behind)


def test_the_api_docs_render_offline(page, server: str):
    outside: list[tuple[str, str]] = []  # (resource type, URL) of each refused request

    def only_the_service(route) -> None:
        if route.request.url.startswith(server):
            route.continue_()
        else:
            outside.append((route.request.resource_type, route.request.url))
            route.abort()

    page.route("**/*", only_the_service)
    page.goto(f"{server}/docs")
    page.locator(".swagger-ui .info .title").get_by_text("cascade").wait_for()
    page.locator(".opblock-summary-path").filter(has_text="/v1/jobs").first.wait_for()
    page.goto(f"{server}/redoc")
    page.locator("h1").get_by_text("cascade").wait_for()
    page.get_by_text("GET /v1/jobs").first.wait_for(state="attached")
    # Nothing either page needs comes from elsewhere; ReDoc's sidebar credit still asks its CDN
    # for a logo, which offline simply does not show.
    assert {kind for kind, _ in outside} <= {"image"}, outside
