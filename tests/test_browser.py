"""A real browser (Playwright + Debian's Chromium) driving the app: upload, preview, invert, generate, bad file.

Chromium comes from apt (`.ci/run` installs it); Playwright's own browser download is never used.
"""

import re
import shutil
from pathlib import Path

import pytest

from conftest import BEACHBALL, DEPTH_SYN, NOZ_EXR, launch_app

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    studio, demo = launch_app(tmp_path_factory.mktemp("out"))
    yield demo.local_url
    demo.close()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium not found: install Debian's chromium (apt-get install chromium), as .ci/run does")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield b
        b.close()


def upload(page, path):
    """Drop a file on the depth input; a file already shown there is cleared first, as a user would."""
    page.wait_for_selector("#depth-file input[type=file], #depth-file button[aria-label='Clear']", state="attached",
                           timeout=120_000)  # a first page load on a busy machine
    field = page.locator("#depth-file input[type=file]")
    if field.count() == 0:
        page.locator("#depth-file button[aria-label='Clear']").first.click(force=True)
    page.locator("#depth-file input[type=file]").set_input_files(str(path))


def preview_src(page):
    return page.locator("#preview img").get_attribute("src")


def wait_new_preview(page, old):
    page.wait_for_function(
        "old => { const i = document.querySelector('#preview img'); return i && i.src && i.src !== old; }",
        arg=old, timeout=30_000)
    return preview_src(page)


def test_artist_flow_in_a_real_browser(app_url, browser):
    outside = []
    page = browser.new_page(viewport={"width": 1440, "height": 1600})
    page.on("request", lambda r: outside.append(r.url) if not re.match(r"^(https?://(127\.0\.0\.1|localhost)|data:|blob:)", r.url) else None)
    page.goto(app_url)
    upload(page, BEACHBALL)

    # The preview, its stats and both histograms appear.
    page.wait_for_selector("#preview img", timeout=30_000)
    first = preview_src(page)
    page.wait_for_function("() => document.querySelector('#stats').innerText.includes('141 levels')", timeout=30_000)
    assert "disparity" in page.locator("#stats").inner_text()
    page.get_by_text("Histograms", exact=True).click()
    page.wait_for_selector("#raw-hist canvas, #raw-hist svg", timeout=30_000)
    page.wait_for_selector("#control-hist canvas, #control-hist svg", timeout=30_000)
    first_bytes = page.request.get(first).body()

    # Toggling invert changes what the model would be fed.
    page.locator("#invert").get_by_text("on", exact=True).click()
    flipped = wait_new_preview(page, first)
    assert page.request.get(flipped).body() != first_bytes
    assert "(inverted)" in page.locator("#stats").inner_text()
    page.locator("#invert").get_by_text("auto", exact=True).click()
    wait_new_preview(page, flipped)

    # Generate produces a result.
    page.locator("#prompt textarea").fill("a beach ball on wet sand")
    page.locator("#generate").click()
    page.wait_for_selector("#result img", timeout=120_000)
    page.wait_for_function("() => document.querySelector('#status').innerText.includes('seed')", timeout=30_000)
    page.get_by_text("History", exact=True).click()
    page.wait_for_selector("#gallery img", timeout=30_000)
    assert page.locator("#gallery img").count() == 1

    # A file with no depth channel shows a readable error, and the page keeps working.
    before = preview_src(page)
    upload(page, NOZ_EXR)
    page.get_by_text(re.compile("no depth channel")).first.wait_for(timeout=30_000)
    upload(page, DEPTH_SYN)
    wait_new_preview(page, before)
    page.wait_for_function("() => document.querySelector('#stats').innerText.includes('open3d_depth_syn.png')",
                           timeout=30_000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser-flow.png"), full_page=True)

    # A second window on this local studio starts with an empty result slot; its History lists the studio's
    # results (the artist's own machine; a shared studio shows each browser its own: test_history_* below).
    other = browser.new_context().new_page()
    other.goto(app_url)
    other.wait_for_selector("#generate")
    assert other.locator("#result img").count() == 0
    other.close()
    page.close()
    assert outside == [], f"the page reached outside loopback: {outside[:3]}"


def test_sequence_tab_renders_all_frames_with_one_range(app_url, browser, tmp_path):
    import numpy as np

    from conftest import write_exr

    paths = []
    for i, z in enumerate([5.0, 8.0, 12.0]):
        d = np.full((96, 128), 50.0, np.float32)
        d[30:60, 10 + 20 * i: 40 + 20 * i] = z
        paths.append(str(write_exr(tmp_path / f"move.{i + 1:04d}.exr", {"Z": d})))
    page = browser.new_page(viewport={"width": 1440, "height": 1400})
    page.goto(app_url)
    page.get_by_role("tab", name="Sequence").click()
    page.locator("#seq-files input[type=file]").set_input_files(paths)
    page.wait_for_function("() => document.querySelector('#seq-summary').innerText.includes('3 frames')",
                           timeout=60_000)
    assert page.locator("#seq-previews img").count() == 3
    page.locator("#seq-prompt textarea").fill("a corridor")
    page.locator("#seq-render").click()
    page.wait_for_function("() => document.querySelector('#seq-status').innerText.includes('Done: 3 frames')",
                           timeout=120_000)
    assert page.locator("#seq-gallery img").count() == 3
    page.wait_for_selector("#seq-video video", state="attached", timeout=30_000)
    # "Download all": the first download is one zip of the whole sequence, and it really downloads.
    links = page.locator("#seq-downloads a")
    with page.expect_download() as download:
        links.first.click()
    assert download.value.suggested_filename.endswith(".zip")
    import zipfile

    with zipfile.ZipFile(download.value.path()) as archive:
        assert sum(n.endswith(".png") and "/control/" not in n for n in archive.namelist()) == 3
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser-sequence.png"), full_page=True)
    page.close()


def snap(page, name: str, **kw) -> None:
    """Screenshots of the page as it is at 1280x720 and at 1280x633 (a laptop browser with its bars), for looking
    at what was built (test-artifacts/); the viewport is put back after."""
    ARTIFACTS.mkdir(exist_ok=True)
    size = page.viewport_size
    for height in (720, 633):
        page.set_viewport_size({"width": 1280, "height": height})
        page.screenshot(path=str(ARTIFACTS / f"{name}-1280x{height}.png"), **kw)
    page.set_viewport_size(size)


def in_viewport(page, selector) -> bool:
    box = page.locator(selector).bounding_box()
    view = page.viewport_size
    return (box is not None and box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= view["width"]
            and box["y"] + box["height"] <= view["height"])


def test_desktop_loop_on_one_1280x720_screen(app_url, browser):
    """Control map, Generate and result are all visible without scrolling; the channel menu rescues a file whose
    depth channel is not found by name; an error leaves every control usable; log scale keeps a real histogram."""
    page = browser.new_page(viewport={"width": 1280, "height": 720})
    page.goto(app_url)
    page.wait_for_selector("#generate")
    snap(page, "empty")
    upload(page, BEACHBALL)
    page.wait_for_selector("#preview img", timeout=30_000)
    page.locator("#prompt textarea").fill("a beach ball")
    page.locator("#generate").click()
    page.wait_for_selector("#result img", timeout=120_000)
    page.wait_for_function("() => document.querySelector('#status').innerText.includes('seed')", timeout=30_000)
    ARTIFACTS.mkdir(exist_ok=True)
    for width, height in ((1920, 1080), (1440, 900), (1280, 720), (1280, 633)):
        page.set_viewport_size({"width": width, "height": height})
        page.wait_for_timeout(500)
        page.evaluate("window.scrollTo(0, 0)")
        for selector in ("#preview", "#generate", "#status") + (("#result",) if height >= 720 else ()):
            assert in_viewport(page, selector), f"{selector} is not on the first {width}x{height} screen"
        page.screenshot(path=str(ARTIFACTS / f"desktop-{width}x{height}.png"))
    assert page.locator("#generate").is_enabled()  # re-enabled after the job

    # Log scale on and off: the raw histogram keeps many bars.
    page.get_by_text("Histograms", exact=True).click()
    page.wait_for_selector("#raw-hist canvas, #raw-hist svg", timeout=30_000)
    page.get_by_label("Log scale for raw values").check()
    page.wait_for_timeout(1500)
    assert "undefined" not in page.locator("#raw-hist").inner_text()
    page.get_by_label("Log scale for raw values").uncheck()

    # No depth channel found by name: a one-line message in the panel, and the Channel menu lists the file's channels.
    before = preview_src(page)
    upload(page, NOZ_EXR)
    page.wait_for_function("() => document.querySelector('#stats').innerText.includes('no depth channel')",
                           timeout=30_000)
    assert page.locator("#channel").get_by_text("Error").count() == 0  # no overlay on the control
    page.locator("#channel input").click()
    page.get_by_role("option", name="R", exact=True).click()
    wait_new_preview(page, before)
    page.wait_for_function("() => document.querySelector('#stats').innerText.includes('· R (')", timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "desktop-channel-rescue.png"))
    page.close()


def test_presets_survive_a_reload_and_errors_leave_controls_usable(app_url, browser, tmp_path, monkeypatch):
    monkeypatch.setenv("FLUXDEPTH_PRESETS", str(tmp_path / "presets"))
    page = browser.new_page(viewport={"width": 1280, "height": 720})
    page.goto(app_url)
    page.wait_for_selector("#generate")
    # Generate with no depth file: a toast with the fix; no red overlay left on any control; Generate usable again.
    page.locator("#generate").click()
    page.get_by_text(re.compile("no depth file yet")).first.wait_for(timeout=30_000)
    page.wait_for_function("() => !document.querySelector('#generate').disabled", timeout=30_000)
    assert page.locator(".error").filter(has_text="Error").count() == 0

    page.locator("#prompt textarea").fill("a loft at dusk")
    page.get_by_text("Presets", exact=True).click()
    page.get_by_label("Save current settings (and prompt) as").fill("Loft")
    page.get_by_role("button", name="Save preset").click()
    page.get_by_text(re.compile("Saved preset")).first.wait_for(timeout=30_000)

    page.reload()
    page.wait_for_selector("#generate")
    # The browser remembers the settings: the prompt typed before the reload is back.
    page.wait_for_function("() => document.querySelector('#prompt textarea').value === 'a loft at dusk'",
                           timeout=30_000)
    page.locator("#prompt textarea").fill("")
    page.get_by_text("Presets", exact=True).click()
    page.get_by_label("Preset", exact=True).click()
    page.get_by_role("option", name="Loft").click()
    page.get_by_role("button", name="Apply preset").click()
    page.wait_for_function("() => document.querySelector('#prompt textarea').value === 'a loft at dusk'",
                           timeout=30_000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "desktop-presets.png"))
    page.close()


def test_a_batch_of_seeds_fills_the_gallery(app_url, browser):
    page = open_with_depth(browser, app_url)
    page.get_by_text("Generation settings", exact=True).click()
    images = page.locator("input[aria-label='number input for Images']")
    images.fill("3")
    images.press("Enter")
    page.locator("#prompt textarea").fill("a statue")
    page.locator("#generate").click()
    page.wait_for_function("() => document.querySelector('#status').innerText.includes('3 images, seeds')",
                           timeout=120_000)
    seeds = page.locator("#status").inner_text().split("seeds ")[1].split(" ·")[0].split(", ")
    assert len(set(seeds)) == 3
    page.get_by_text("History", exact=True).click()
    # History, newest first: the three images of the batch lead it (other tests of this module made results too).
    page.wait_for_function("() => document.querySelectorAll('#gallery img').length >= 3", timeout=30_000)
    captions = page.locator("#gallery").inner_text()
    assert all(f"seed {seed}" in captions for seed in seeds), captions
    # Issue 28's rough edges: every thumbnail inside the panel (the 4th was cut off), the read-only downloads
    # without remove buttons.
    page.locator("#gallery").scroll_into_view_if_needed()
    panel = page.locator("#gallery").bounding_box()
    for thumb in page.locator("#gallery .thumbnail-item").all():
        box = thumb.bounding_box()
        assert box["x"] >= panel["x"] and box["x"] + box["width"] <= panel["x"] + panel["width"] + 1
    page.get_by_text("Compare, download", exact=True).click()
    page.wait_for_selector("#downloads a", timeout=30_000)
    assert page.locator("#downloads .label-clear-button").first.is_hidden()
    page.screenshot(path=str(ARTIFACTS / "desktop-batch.png"))
    page.close()


def test_a_typo_in_a_clip_box_is_one_line_and_escape_cancels(app_url, browser):
    """Issue 28: 150 in "Near clip" once gave gradio's own error toast, red Error badges over the panel and HTTP
    500s; now the stats line says what is wrong in one line and nothing else is disturbed. Escape cancels a
    running image, as the Cancel button does."""
    page = browser.new_page(viewport={"width": 1280, "height": 720})
    page.goto(app_url)
    upload(page, BEACHBALL)
    page.wait_for_selector("#preview img", timeout=30_000)
    shown = preview_src(page)
    page.get_by_text("Range, size and edges", exact=True).first.click()
    near = page.get_by_label("Near clip (percentile)").first
    near.fill("150")
    near.press("Tab")
    page.wait_for_function("() => document.querySelector('#stats').innerText.includes('near clip 150')",
                           timeout=30_000)
    assert page.locator(".error").filter(has_text="Error").count() == 0
    assert "\n" not in page.locator("#stats").inner_text().strip()
    assert preview_src(page) == shown  # the map last shown stays
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "clip-typo-1280x720.png"))
    near.fill("99.5")
    near.press("Tab")
    page.wait_for_function("() => document.querySelector('#stats').innerText.includes('disparity')", timeout=30_000)

    page.locator("#prompt textarea").fill("a beach ball")
    page.locator("#generate").click()
    page.wait_for_function("() => document.querySelector('#generate').disabled", timeout=30_000)
    page.keyboard.press("Escape")
    page.wait_for_function("() => document.querySelector('#status').innerText.includes('Cancelled')",
                           timeout=60_000)
    page.wait_for_function("() => !document.querySelector('#generate').disabled", timeout=30_000)
    page.close()


def load_depth(page, url):
    """Open the studio in `page` with the synthetic depth map loaded; back when its control map is shown."""
    page.goto(url)
    upload(page, DEPTH_SYN)
    page.wait_for_selector("#preview img", timeout=30_000)
    return page


def open_with_depth(browser, url):
    """A new 1280x720 page of the studio with the synthetic depth map loaded (load_depth)."""
    return load_depth(browser.new_page(viewport={"width": 1280, "height": 720}), url)


def generate_one(page, url, prompt):
    """Open the studio, load the synthetic depth map and Generate one image with `prompt`; back when it is shown."""
    load_depth(page, url)
    page.locator("#prompt textarea").fill(prompt)
    page.locator("#generate").click()
    page.wait_for_function("() => document.querySelector('#status').innerText.includes('seed')", timeout=120_000)


def test_history_is_this_browsers_own_and_survives_a_reload_and_a_restart(tmp_path, browser):
    """Issue 28: on a shared studio, History lists this browser's results (by a key it keeps), newest first, after a
    reload and after the server restarts on the same address; another browser sees none of them. Clicking one
    restores its settings."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    studio, demo = launch_app(tmp_path, "--share", server_port=port)
    url = demo.local_url
    try:
        context = browser.new_context(viewport={"width": 1280, "height": 720})
        page = context.new_page()
        generate_one(page, url, "a marble hall")
        page.reload()
        page.get_by_text("History", exact=True).click()
        page.wait_for_selector("#gallery img", timeout=30_000)
        assert "a marble hall" in page.locator("#gallery").inner_text()
        assert "page 1 of 1" in page.locator("#history-page").inner_text()
        other = browser.new_context().new_page()
        other.goto(url)
        other.get_by_text("History", exact=True).click()
        other.wait_for_function("() => (document.querySelector('#history-page') || {innerText: ''})"
                                ".innerText.includes('no results')", timeout=30_000)
        other.close()
    finally:
        demo.close()
    studio, demo = launch_app(tmp_path, "--share", server_port=port)  # the server restarts
    try:
        page.reload()
        page.get_by_text("History", exact=True).click()
        page.wait_for_selector("#gallery img", timeout=60_000)
        page.locator("#prompt textarea").fill("something else")
        page.locator("#gallery img").first.click()
        page.wait_for_function("() => document.querySelector('#prompt textarea').value === 'a marble hall'",
                               timeout=30_000)
        ARTIFACTS.mkdir(exist_ok=True)
        snap(page, "history-after-restart")
        context.close()
    finally:
        demo.close()


def test_fix_a_region_of_a_result_by_painting_over_it(tmp_path, browser):
    """Issue 28: Generate, open "Fix a region", bring the result into the editor, paint over part of it, Regenerate
    region: a new result made by inpainting (its record names the mask), the rest of the shot's settings kept."""
    import json
    import time

    studio, demo = launch_app(tmp_path)
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 720})
        generate_one(page, demo.local_url, "a stone arch")
        page.get_by_text("Fix a region", exact=True).click()
        page.locator("#fix-load").click()
        canvas = page.locator("#fix-editor canvas").first
        canvas.wait_for(timeout=30_000)
        # Paint only once the result is the editor's background: the editor then shows the zoom at which it fitted
        # the 1024 px result into its 400 px canvas (below 100%; an empty editor shows no zoom).
        page.wait_for_function("() => { const m = document.querySelector('#fix-editor').innerText.match(/(\\d+)%/);"
                               " return m && Number(m[1]) < 100; }", timeout=30_000)
        canvas.scroll_into_view_if_needed()
        box = canvas.bounding_box()
        page.locator("#fix-editor button[aria-label='Brush']").first.click()
        page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.4)
        page.mouse.down()
        for step in range(1, 9):
            page.mouse.move(box["x"] + box["width"] * (0.3 + 0.05 * step), box["y"] + box["height"] * 0.5)
        page.mouse.up()
        page.locator("#fix-run").click()
        # Done when the fixed image's record is on disk and the page shows its seed.
        deadline = time.monotonic() + 120
        while len(list(studio.outputs.glob("*/*.json"))) < 2:
            assert time.monotonic() < deadline, page.locator("#status").inner_text()
            page.wait_for_timeout(200)
        seed = next(json.loads(p.read_text())["seed"] for p in studio.outputs.glob("*/*.json")
                    if "inpaint_mask" in p.read_text())
        page.wait_for_function("(seed) => document.querySelector('#status').innerText.includes('seed ' + seed)",
                               arg=seed, timeout=30_000)
        records = [json.loads(p.read_text()) for p in studio.outputs.glob("*/*.json")]
        fixed = [r for r in records if r.get("inpaint_mask")]
        assert len(records) == 2 and len(fixed) == 1, (page.locator("#status").inner_text(), records)
        assert fixed[0]["prompt"] == "a stone arch" and fixed[0]["strength"] == 0.9
        # The screen as the artist sees it (a full-page capture of the editor's canvas once took over 30 s on a
        # loaded 2-core machine).
        ARTIFACTS.mkdir(exist_ok=True)
        snap(page, "fix-a-region", timeout=120_000)
        page.close()
    finally:
        demo.close()


def test_live_preview_shows_the_image_forming_then_the_result(tmp_path, browser):
    """Issue 28: with --live-preview 1 the result slot shows the tiny autoencoder's view of every step while the image
    forms, with the step in the status line; then the real image and its seed."""
    studio, demo = launch_app(tmp_path, "--live-preview", "1")
    try:
        page = open_with_depth(browser, demo.local_url)
        page.locator("#prompt textarea").fill("a forming chair")
        page.locator("#generate").click()
        page.wait_for_function("() => document.querySelector('#status').innerText.includes('live preview')",
                               timeout=120_000)
        assert page.locator("#result img").count() == 1  # the preview is in the result slot
        assert "live-preview.jpeg" in page.locator("#result img").get_attribute("src")  # small, not a full PNG
        ARTIFACTS.mkdir(exist_ok=True)
        snap(page, "live-preview")
        page.wait_for_function("() => document.querySelector('#status').innerText.includes('seed')", timeout=120_000)
        assert "live preview" not in page.locator("#status").inner_text()
        results = list((tmp_path / "outputs").rglob("*.png"))
        assert any("a-forming-chair" in p.name for p in results)
        # The image is done: its previews leave gradio's cache (the handler's last step, just after the result).
        cache = Path(demo.GRADIO_CACHE)

        def previews_left() -> bool:
            try:
                return bool(list(cache.rglob("live-preview.jpeg")))
            except FileNotFoundError:  # a folder went while the walk was in it: being removed, look again
                return True

        for _ in range(600):  # up to a minute for that state, on a busy machine
            if not previews_left():
                break
            page.wait_for_timeout(100)
        assert not previews_left()
    finally:
        demo.close()


def test_a_queue_of_three_shots_renders_them_in_turn(tmp_path, browser):
    """Issue 28: Queue adds the form as it is to this browser's queue; the page lists the shots with their place, and
    they render one after another. The model is held busy (its lock taken by the test) while the three are queued,
    so the list is seen with all three whatever the machine's speed."""
    import json
    import time

    studio, demo = launch_app(tmp_path)
    try:
        page = open_with_depth(browser, demo.local_url)
        prompts = ["a red barn", "a glass pavilion", "a moss-covered ruin"]
        with studio.manager._lock:  # the first shot waits at the model until released
            for prompt in prompts:
                page.locator("#prompt textarea").fill(prompt)
                page.locator("#queue-add").click()
                page.wait_for_function("(p) => document.querySelector('#queue-list')?.innerText.includes(p)",
                                       arg=prompt, timeout=60_000)
            listed = page.locator("#queue-list").inner_text()
            # (whether the first is already marked rendering depends on when its turn came: not asserted)
            assert all(p in listed for p in prompts) and "next" in listed
            ARTIFACTS.mkdir(exist_ok=True)
            page.locator("#queue-list").scroll_into_view_if_needed()
            snap(page, "queue-three")
        deadline = time.monotonic() + 180
        while len(list(studio.outputs.glob("*/*.json"))) < 3:
            assert time.monotonic() < deadline, page.locator("#status").inner_text()
            page.wait_for_timeout(200)
        page.wait_for_function("() => !document.querySelector('#queue-list')?.checkVisibility()", timeout=60_000)
        # One after another, in the order queued: each record is written when its shot is done.
        sidecars = sorted(studio.outputs.glob("*/*.json"), key=lambda p: p.stat().st_mtime_ns)
        assert [json.loads(p.read_text())["prompt"] for p in sidecars] == prompts
        page.close()
    finally:
        demo.close()


def test_the_16_bit_near_dark_example_comes_with_its_near_and_far(app_url, browser):
    """Issue 28: the bundled "16-bit PNG, near = dark" example showed two warnings with its defaults; picking it now
    fills the remap's own near and far (mode disparity), and the map reads as true inverse depth with no warning."""
    page = browser.new_page(viewport={"width": 1280, "height": 720})
    page.goto(app_url)
    page.get_by_text("Examples", exact=True).click()
    page.get_by_text("16-bit PNG, near = dark", exact=True).click()
    page.wait_for_function("() => document.querySelector('#stats').innerText.includes('sphere_export_near_dark')",
                           timeout=60_000)
    page.wait_for_function("() => document.querySelector('#stats').innerText.includes('mode disparity')",
                           timeout=30_000)
    assert "⚠" not in page.locator("#stats").inner_text()
    page.get_by_text("Range, size and edges", exact=True).first.click()
    assert page.get_by_label("Near distance (0 = from percentiles)").first.input_value() == "3"
    ARTIFACTS.mkdir(exist_ok=True)
    snap(page, "example-loaded")
    page.close()


def test_ctrl_shift_enter_renders_the_same_shot_with_a_new_seed(tmp_path, browser):
    """Issue 28: Ctrl+Enter generates with the form's fixed seed, even with the Random seed box focused (it once
    toggled it); Ctrl+Shift+Enter renders the same shot with a newly drawn seed, which the seed box then shows
    (Random seed stays off)."""
    studio, demo = launch_app(tmp_path)
    try:
        page = open_with_depth(browser, demo.local_url)
        page.locator("#prompt textarea").fill("a lighthouse")
        page.get_by_text("Generation settings", exact=True).click()
        page.get_by_label("Random seed").uncheck()
        steps = page.locator("input[aria-label='number input for Steps']")
        steps.fill("4")
        steps.press("Enter")
        seed = page.get_by_label("Seed", exact=True)
        seed.fill("5")
        seed.press("Tab")
        page.keyboard.press("Control+Enter")
        page.wait_for_function("() => document.querySelector('#status').innerText.includes('seed 5')",
                               timeout=120_000)
        page.wait_for_function("() => !document.querySelector('#generate').disabled", timeout=30_000)
        page.keyboard.press("Control+Shift+Enter")
        page.wait_for_function("() => /seed \\d+/.test(document.querySelector('#status').innerText) && "
                               "!document.querySelector('#status').innerText.includes('seed 5 ')", timeout=120_000)
        page.wait_for_function("() => !document.querySelector('#generate').disabled", timeout=30_000)
        drawn = re.search(r"seed (\d+)", page.locator("#status").inner_text()).group(1)
        assert drawn != "5" and seed.input_value() == drawn
        assert not page.get_by_label("Random seed").is_checked()
        assert len(list(studio.outputs.glob("*/*.json"))) == 2
    finally:
        demo.close()
