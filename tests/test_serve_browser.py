"""`t2i serve`'s page in a real browser (headless Chromium): generate and see the image, queue and
cancel, inpaint with a painted mask, read a PNG's settings back, put LoRAs and embeddings into the
prompt, and never ask anything of a machine other than this one (the page must work offline).

Skipped where Chromium or its driver is missing, unless CI is set: CI installs them, so there a
missing browser is a failure, not a skip.
"""

import json
import os
import shutil
import urllib.request
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin


def find(name: str) -> str | None:
    """The program `name` on PATH, as .ci/run looks for it, else Debian's /usr/bin/`name`."""
    fixed = f"/usr/bin/{name}"
    return shutil.which(name) or (fixed if os.path.exists(fixed) else None)


CHROMIUM, CHROMEDRIVER = find("chromium"), find("chromedriver")
# the README's screenshot: rewritten only when asked (T2I_SCREENSHOT=1), so a test run leaves the checkout as it was
README_SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "images" / "serve.png"
GENERATION_TIMEOUT = 120  # seconds; a 4-step 64×64 image takes well under one on a laptop CPU


def require_browser():
    missing = [name for name, path in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)) if path is None]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium")
    if missing:
        message = f"the browser test needs {', '.join(missing)}"
        if os.environ.get("CI"):
            pytest.fail(f"{message}, which CI installs")
        pytest.skip(message)


def get_json(url: str, timeout: float = 5):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def networks(tmp_path_factory):
    """(LoRA folder, embeddings folder) the server offers, a file in each: the page lists them and writes
    them into prompts (the emoji model takes neither; `test_serve_extra_networks.py` runs them)."""
    import torch
    from safetensors.torch import save_file

    loras, embeddings = tmp_path_factory.mktemp("loras"), tmp_path_factory.mktemp("embeddings")
    save_file({"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": torch.zeros(1, 8),
               "lora_unet_mid_block_attentions_0_proj_in.lora_up.weight": torch.zeros(8, 1)},
              str(loras / "ink_style.safetensors"))
    save_file({"emb_params": torch.zeros(1, 8)}, str(embeddings / "sks-style.safetensors"))
    return loras, embeddings


@pytest.fixture(scope="module")
def server(tmp_path_factory, networks):
    """The base URL of a live `t2i serve` on a free port, with its own data directory: the shipped models (emoji
    with its distilled student of 4 steps)."""
    require_browser()
    from t2i.serve.launch import ServerProcess

    loras, embeddings = networks
    with ServerProcess(tmp_path_factory.mktemp("serve") / "data", "--lora-dir", str(loras),
                       "--embeddings-dir", str(embeddings), "--model", "emoji", "--model", "shapes",
                       threads=1) as live:
        yield live.url


@pytest.fixture(scope="module")
def driver(server):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        # the viewport itself 1280×900 (the window's own frame would take some), for the README's screenshot
        browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False})
        yield browser
    finally:
        browser.quit()


@pytest.fixture
def page(server, driver):
    """The page freshly opened, with the models, samplers and limits read into the form; after
    the test, every request the page made went to this server (or stayed in the browser)."""
    driver.get(f"{server}/")
    wait(driver, "return document.querySelectorAll('#model option').length > 0 && $('steps').value !== ''", 30)
    yield driver
    driver.execute_script("localStorage.removeItem('t2i-form')")  # the next test starts from the model's defaults
    assert_local_requests(driver, server)
    scripts = [entry["message"] for entry in driver.get_log("browser") if entry.get("source") == "javascript"]
    assert not scripts, f"the page's script failed: {scripts}"
    assert not error_shown(driver), driver.find_element("id", "error").text


def assert_local_requests(driver, base):
    messages = [json.loads(entry["message"])["message"] for entry in driver.get_log("performance")]
    urls = [m["params"]["request"]["url"] for m in messages if m["method"] == "Network.requestWillBeSent"]
    assert any(url.startswith(f"{base}/api/") for url in urls), "the performance log saw none of the page's requests"
    for url in urls:
        assert url.startswith((f"{base}/", "data:", "blob:")), f"the page asked {url} of another machine"


def wait(driver, script: str, timeout: float = GENERATION_TIMEOUT):
    """Wait until a JavaScript expression (with `$` the page's getElementById) is truthy; return it."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: d.execute_script(script))


def error_shown(driver) -> bool:
    return driver.execute_script("return !$('error').hidden")


def read_automatic1111_png(page, folder, infotext: str) -> None:
    """Drop a PNG that only AUTOMATIC1111's `parameters` chunk describes on PNG info; wait for its prompt."""
    path = folder / "theirs.png"
    chunk = PngImagePlugin.PngInfo()
    chunk.add_text("parameters", infotext)
    Image.new("RGB", (64, 48)).save(path, pnginfo=chunk)
    page.find_element("id", "pnginfo-file").send_keys(str(path))
    prompt = infotext.split("\n")[0]
    wait(page, f"return $('prompt').value === {prompt!r}", 10)


def fill(driver, **values):
    for element_id, value in values.items():
        element = driver.find_element("id", element_id)
        element.clear()
        element.send_keys(str(value))


def card(state: str, job_id: str | None = None) -> str:
    """The JavaScript for the history card of a job in a state (the newest such card without an id)."""
    where = f'[data-job-id="{job_id}"]' if job_id else ""
    return f"document.querySelector('#history .card.{state}{where}')"


def image_loaded(selector: str) -> str:
    return f"(i => i && i.complete && i.naturalWidth > 0)(document.querySelector('{selector}'))"


def test_generate_shows_the_image_its_seed_and_keeps_it_in_history(page, tmp_path):
    fill(page, prompt="red heart", steps=8, seed=7, num=2)
    page.find_element("id", "generate").click()
    wait(page, f"return {image_loaded('#result img:nth-child(2)')}")
    assert "seed 7" in page.find_element("id", "result-info").text
    wait(page, f"return {card('done')} && {image_loaded('#history .card.done img')}", 10)
    assert "red heart" in page.execute_script(f"return {card('done')}.textContent")
    screenshot = README_SCREENSHOT if os.environ.get("T2I_SCREENSHOT") else tmp_path / "serve.png"
    assert page.save_screenshot(str(screenshot)) and Image.open(screenshot).size == (1280, 900)


def test_queue_shows_jobs_in_order_and_cancels_a_queued_and_a_running_one(page):
    # A long first job keeps the next two waiting; it is cancelled too, from the Cancel button.
    steps, images = page.execute_script("return [$('steps').max, Math.min(8, $('num').max)]")
    fill(page, prompt="red heart", steps=steps, num=images, seed=-1)
    page.find_element("id", "generate").click()
    fill(page, steps=4, num=1)
    for _ in range(2):  # Generate is disabled while its last job is being posted
        wait(page, "return !$('generate').disabled", 10)
        page.find_element("id", "generate").click()
    wait(page, "return [...document.querySelectorAll('#queue .where')].map(w => w.textContent).join() "
               "=== 'running,#1,#2'", 30)
    first, second, third = page.execute_script("return [...$('queue').children].map(li => li.dataset.jobId)")

    page.find_element("css selector", f"#queue li[data-job-id='{third}'] .cancel-job").click()
    wait(page, f"return {card('cancelled', third)}", 10)
    wait(page, f"return !document.querySelector(\"#queue li[data-job-id='{third}']\")", 10)

    # the running job shows its progress and a preview of x̂₀ before it is stopped
    wait(page, "return $('progress').value > 0 && ($('preview').getAttribute('src') || '').startsWith('data:image/')")
    page.find_element("id", "cancel").click()
    wait(page, f"return {card('cancelled', first)}")
    wait(page, f"return {card('done', second)}")
    assert page.find_element("id", "progress-text").text == "done"


def test_a_double_click_posts_one_job_ctrl_enter_another_and_sizes_round_to_the_models_multiple(page, server):
    from selenium.webdriver.common.keys import Keys

    before = get_json(f"{server}/api/jobs?limit=1")["total"]
    fill(page, prompt="red heart", steps=4, num=1, seed=3, width=70, height=50)
    multiple = page.execute_script("return currentModel().size_multiple")
    # the second click lands while the first's POST is in flight, on a button disabled until it is answered
    assert page.execute_script("$('generate').click(); const busy = $('generate').disabled; "
                               "$('generate').click(); return busy")
    wait(page, "return !$('generate').disabled", 10)
    rounded = [str(max(multiple, int(side / multiple + 0.5) * multiple)) for side in (70, 50)]
    assert page.execute_script("return [$('width').value, $('height').value]") == rounded
    page.find_element("id", "prompt").send_keys(Keys.CONTROL, Keys.ENTER)
    wait(page, "return !$('generate').disabled && state.mine.length === 0 && $('progress-text').textContent === 'done'")
    assert page.find_element("id", "prompt").get_property("value") == "red heart"  # no newline typed
    jobs = get_json(f"{server}/api/jobs?limit=100")
    assert jobs["total"] == before + 2
    assert [[str(job["settings"][side]) for side in ("width", "height")] for job in jobs["jobs"][:2]] == [rounded] * 2


def test_a_size_past_max_pixels_is_refused_before_it_is_posted(page, server):
    before = get_json(f"{server}/api/jobs?limit=1")["total"]
    side = 8 * (int(get_json(f"{server}/api/limits")["max_pixels"] ** 0.5) // 8 + 1)
    fill(page, prompt="red heart", width=side, height=side)
    page.find_element("id", "generate").click()
    wait(page, "return !$('error').hidden", 10)
    assert "max_pixels" in page.find_element("id", "error-text").text
    assert get_json(f"{server}/api/jobs?limit=1")["total"] == before
    page.find_element("id", "error-close").click()


def test_the_form_comes_back_after_a_reload(page, server):
    from selenium.webdriver.support.select import Select

    Select(page.find_element("id", "model")).select_by_value("shapes")  # not the default: kept, with its settings
    values = {"prompt": "a blue star", "negative": "blurry", "steps": "9", "cfg": "3.5", "seed": "11", "num": "2",
              "width": "48", "height": "32"}
    fill(page, **values)
    Select(page.find_element("id", "sampler")).select_by_index(2)
    page.execute_script("$('strength').value = 0.4; $('strength').dispatchEvent(new Event('input', {bubbles: true}))")
    page.get(f"{server}/")
    wait(page, "return document.querySelectorAll('#model option').length > 0 && $('steps').value !== ''", 30)
    assert page.execute_script(f"return {list(values)}.map(id => $(id).value)") == list(values.values())
    assert page.execute_script("return [$('sampler').selectedIndex, $('strength').value]") == [2, "0.4"]
    assert page.execute_script("return $('model').value") == "shapes"


def test_a_number_the_browser_cannot_read_is_an_error_not_the_default(page):
    fill(page, prompt="red heart", steps="1e")  # an unfinished exponent: the field's value reads as ""
    page.find_element("id", "generate").click()
    wait(page, "return !$('error').hidden", 10)
    assert page.find_element("id", "error-text").text.startswith("Steps is not a number the page can read")
    assert page.execute_script("return state.mine.length") == 0  # nothing was posted
    page.find_element("id", "error-close").click()


def test_a_job_interrupted_through_sdapi_shows_the_images_it_kept(page, server):
    steps = page.execute_script("return $('steps').max")
    fill(page, prompt="red heart", steps=steps, num=1, seed=5)
    page.find_element("id", "generate").click()
    wait(page, "return $('progress').value > 0")
    request = urllib.request.Request(f"{server}/sdapi/v1/interrupt", data=b"", method="POST")
    urllib.request.urlopen(request, timeout=10).close()
    wait(page, f"return $('progress-text').textContent === 'cancelled' && {image_loaded('#result img')}")
    wait(page, f"return {card('cancelled')} && {image_loaded('#history .card.cancelled img')}", 10)


def test_cancelling_a_job_that_already_ended_shows_it_ended_not_an_error(page, server):
    done = next(job for job in get_json(f"{server}/api/jobs?limit=100")["jobs"] if job["state"] == "done")
    page.execute_script("return cancelJob(arguments[0])", done["id"])  # the server answers 409
    assert not error_shown(page)
    wait(page, f"return {card('done', done['id'])}", 10)
    assert not page.find_element("id", "cancel").is_enabled()


def test_an_api_error_is_shown_with_the_limit_it_hit(page):
    fill(page, prompt="red heart", steps=100000)
    page.find_element("id", "generate").click()
    wait(page, "return !$('error').hidden", 10)
    assert "max_steps" in page.find_element("id", "error-text").text
    page.find_element("id", "error-close").click()


def test_inpainting_sends_the_painted_mask(page, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains

    start = tmp_path / "start.png"  # a photo's shape: sent scaled to the model's size, its mask too
    Image.new("RGB", (200, 150), (40, 90, 200)).save(start)
    page.execute_script("$('edit').open = true")
    page.find_element("id", "init-image").send_keys(str(start))
    wait(page, "return !$('edit-area').hidden && $('mask-canvas').width === 200", 10)
    assert page.execute_script("return [$('width').value, $('height').value]") == ["80", "48"]
    canvas = page.find_element("id", "mask-canvas")
    page.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
    ActionChains(page).move_to_element_with_offset(canvas, -40, 0).click_and_hold().move_by_offset(80, 0) \
        .release().perform()
    assert page.execute_script("return state.maskPainted")
    fill(page, prompt="red heart", steps=4, num=1)
    page.find_element("id", "generate").click()
    done = wait(page, f"return {card('done')} && {card('done')}.textContent.includes('inpaint') && {card('done')}")
    assert "80×48" in done.text
    wait(page, f"return {image_loaded('#history .card.done img')}", 10)


def test_png_info_reads_our_settings_and_automatic1111s_back_into_the_form(page, server, tmp_path):
    jobs = get_json(f"{server}/api/jobs?limit=100")["jobs"]
    ours = next(job for job in jobs if job["state"] == "done" and job["settings"]["kind"] == "txt2img")
    png = tmp_path / "ours.png"
    with urllib.request.urlopen(server + ours["images"][0]["url"], timeout=10) as response:
        png.write_bytes(response.read())
    fill(page, prompt="something else", steps=30)
    page.find_element("id", "pnginfo-file").send_keys(str(png))
    wait(page, "return $('prompt').value === 'red heart'", 10)
    assert "red heart" in page.find_element("id", "pnginfo-text").text
    assert page.find_element("id", "steps").get_property("value") == str(ours["settings"]["steps"])
    assert page.find_element("id", "seed").get_property("value") == str(ours["images"][0]["seed"])

    read_automatic1111_png(page, tmp_path, "a blue star\nNegative prompt: blurry\n"
                           "Steps: 12, Sampler: DDIM, CFG scale: 6.5, Seed: 42, Size: 64x48, Model: sd15")
    values = page.execute_script(
        "return ['negative', 'steps', 'cfg', 'seed', 'width', 'height'].map(id => $(id).value)")
    assert values == ["blurry", "12", "6.5", "42", "64", "48"]
    assert page.execute_script("return $('sampler').selectedOptions[0].textContent") == "DDIM"


def test_lora_and_embedding_chips_write_their_tags_into_the_prompt_and_take_them_out(page, networks):
    wait(page, "return !$('networks').hidden && $('lora-list').children.length === 1", 10)
    page.execute_script("$('networks').open = true")
    fill(page, prompt="a castle", **{"lora-weight": 0.8})
    prompt = lambda: page.find_element("id", "prompt").get_property("value")  # noqa: E731
    lit = lambda kind: page.execute_script(f"return [...document.querySelectorAll('#{kind}-list .chip.on')]"  # noqa: E731
                                           ".map(c => c.textContent)")
    lora = page.find_element("css selector", "#lora-list .chip")
    embedding = page.find_element("css selector", "#embedding-list .chip")

    lora.click()
    assert prompt() == "a castle <lora:ink_style:0.8>" and lit("lora") == ["ink_style"]
    embedding.click()
    assert prompt() == "a castle <lora:ink_style:0.8>, sks-style" and lit("embedding") == ["sks-style"]
    lora.click()
    assert prompt() == "a castle, sks-style" and lit("lora") == []
    embedding.click()
    assert prompt() == "a castle" and lit("embedding") == []
    fill(page, prompt="<lora:ink_style:1.5> a castle")  # typed by hand: the chip lights, and takes it out
    assert lit("lora") == ["ink_style"]
    lora.click()
    assert prompt() == "a castle"

    (networks[0] / "watercolour.safetensors").write_bytes((networks[0] / "ink_style.safetensors").read_bytes())
    page.find_element("id", "networks-refresh").click()
    wait(page, "return $('lora-list').children.length === 2", 10)
    assert page.execute_script("return [...$('lora-list').children].map(c => c.textContent)") == \
        ["ink_style", "watercolour"]


def test_the_steps_of_a_models_distilled_students_are_named_beside_steps(page):
    from selenium.webdriver.support.select import Select

    hint = page.find_element("id", "students-hint")
    wait(page, "return !$('students-hint').hidden", 5)  # emoji ships students of 2 and 4 steps
    assert hint.text == "(2, 4: distilled, fast)" and "2 or 4 steps with the default sampler and CFG" in \
        hint.get_attribute("title")
    Select(page.find_element("id", "model")).select_by_value("shapes")  # no student
    wait(page, "return $('students-hint').hidden", 5)
    Select(page.find_element("id", "model")).select_by_value("emoji")
    wait(page, "return !$('students-hint').hidden", 5)


def test_eta_for_a_sampler_that_takes_one_clip_skip_for_a_clip_model_and_png_info_fills_both(page, server, tmp_path):
    """AUTOMATIC1111's Eta and Clip skip: shown where they apply, posted only then, read back from PNG info."""
    from selenium.webdriver.support.select import Select

    def generate():
        before = get_json(f"{server}/api/jobs?limit=1")["total"]
        page.find_element("id", "generate").click()
        wait(page, "return !$('generate').disabled && state.mine.length === 0 && "
                   "$('progress-text').textContent === 'done'")
        jobs = get_json(f"{server}/api/jobs?limit=1")
        assert jobs["total"] == before + 1
        return jobs["jobs"][0]["settings"]

    sampler, model = Select(page.find_element("id", "sampler")), Select(page.find_element("id", "model"))
    # emoji reads BERT, not CLIP, and its default DPM++ 2M takes no eta: neither field
    assert not page.find_element("id", "eta-field").is_displayed()
    assert not page.find_element("id", "clip-skip-field").is_displayed()
    sampler.select_by_visible_text("DDIM")
    wait(page, "return !$('eta-field').hidden", 5)
    fill(page, prompt="red heart", steps=2, seed=5, eta=0.5)
    settings = generate()
    assert settings["sampler"] == "ddim" and settings["eta"] == 0.5 and settings["clip_skip"] is None

    sampler.select_by_visible_text("DPM++ 2M")
    wait(page, "return $('eta-field').hidden", 5)
    assert generate()["eta"] is None  # the 0.5 still in the hidden field is not sent

    model.select_by_value("shapes")  # a CLIP model: clip skip applies
    wait(page, "return !$('clip-skip-field').hidden", 5)
    model.select_by_value("emoji")
    wait(page, "return $('clip-skip-field').hidden", 5)

    read_automatic1111_png(page, tmp_path, "a blue star\nSteps: 12, Sampler: Euler a, CFG scale: 6.5, Seed: 42, "
                           "Size: 64x48, Model: shapes, Eta: 0.3, Clip skip: 2")
    assert page.execute_script("return [$('model').value, $('sampler').selectedOptions[0].textContent, "
                               "$('eta').value, $('clip-skip').value, $('eta-field').hidden, "
                               "$('clip-skip-field').hidden]") == ["shapes", "Euler a", "0.3", "2", False, False]
    fill(page, steps=2)
    settings = generate()
    assert (settings["model"], settings["sampler"], settings["eta"], settings["clip_skip"]) == \
        ("shapes", "euler_ancestral", 0.3, 2)
