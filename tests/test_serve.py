"""The HTTP contract of `polyvox serve`, through a real uvicorn on loopback, and `polyvox synth`."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from conftest import REPO
from voices import make_bundle

POLYVOX = Path(sys.executable).with_name("polyvox")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start(root: Path, *extra: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    process = subprocess.Popen([str(POLYVOX), "serve", "--port", str(port), "--params", str(REPO / "params.yaml"),
                                "-S", "serve.reload_seconds=0.3", *extra], cwd=root,
                               env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"serve exited: {process.stdout.read()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.3)
    process.kill()
    raise AssertionError("serve did not start")


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    make_bundle(root / "models" / "champion", seed=1, version="1")
    process, url = _start(root)
    yield root, url
    process.terminate()
    process.wait(timeout=30)


def _wav(response: httpx.Response) -> tuple[np.ndarray, int]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/wav"
    return sf.read(io.BytesIO(response.content))


def test_health_voices_and_metrics(service):
    _, url = service
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok", "version": "1", "reload_error": None, "damage": []}
    voices = httpx.get(f"{url}/voices").json()
    assert voices["speakers"] == ["alice", "bob"] and voices["sample_rate"] == 22050 and voices["takes_image"]
    httpx.post(f"{url}/synthesize", data={"text": "warm up", "speaker": "alice"}, timeout=60)
    metrics = httpx.get(f"{url}/metrics").text
    assert 'polyvox_requests_total{endpoint="synthesize",status="200"}' in metrics
    assert 'polyvox_bundle_info{data_version="test",version="1"} 1.0' in metrics


def test_metrics_count_every_response_by_route_not_by_path(service):
    _, url = service
    for index in range(30):  # paths a client makes up: one label between them, not one each
        assert httpx.get(f"{url}/made-up/{index}").status_code == 404
    assert httpx.post(f"{url}/synthesize", data={"text": "hello", "speaker": "nobody"}).status_code == 422
    empty = httpx.post(f"{url}/synthesize", data={})
    assert empty.status_code == 422 and empty.json()["detail"] == "text is empty", empty.text
    metrics = httpx.get(f"{url}/metrics").text
    series = [line for line in metrics.splitlines() if line.startswith("polyvox_requests_total{")]
    assert 'polyvox_requests_total{endpoint="unmatched",status="404"} 30.0' in series, series
    assert not any("made-up" in line for line in series), series
    assert any(line.startswith('polyvox_requests_total{endpoint="synthesize",status="422"}') for line in series), series


def test_synthesize_returns_wav_for_each_conditioning(service, kathleen_files):
    _, url = service
    short, rate = _wav(httpx.post(f"{url}/synthesize", data={"text": "Hello there.", "speaker": "alice"}, timeout=60))
    assert rate == 22050 and len(short) > rate // 10
    long, _ = _wav(httpx.post(f"{url}/synthesize", data={"text": "Hello there. How are you? Fine, thanks."}, timeout=60))
    assert len(long) > 2 * len(short)  # three sentences and the pauses between them
    png = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (80, 80), (200, 100, 50)).save(png, format="PNG")
    reference = kathleen_files[0].read_bytes()
    both, _ = _wav(httpx.post(f"{url}/synthesize", data={"text": "Hello there."}, timeout=60,
                              files={"reference_audio": ("take.flac", reference, "audio/flac"),
                                     "image": ("me.png", png.getvalue(), "image/png")}))
    assert len(both) > rate // 10


def test_streaming_sends_sentence_by_sentence(service):
    _, url = service
    with httpx.stream("POST", f"{url}/synthesize", data={"text": "One. Two. Three.", "stream": "true"}, timeout=60) as r:
        assert r.status_code == 200 and r.headers.get("transfer-encoding") == "chunked"
        body = b"".join(r.iter_bytes())
    assert body[:4] == b"RIFF" and body[36:40] == b"data"
    samples = np.frombuffer(body[44:], dtype="<i2")
    assert samples.size > 3 * 2205 and np.abs(samples).max() > 0
    # The length is open when the header goes out: its sizes say "to the end of the stream"
    # (0xFFFFFFFF, ffmpeg's and the browsers' convention). Readers a user would pipe the stream into
    # read every sample and no more; a size of 0, the other convention seen, reads as empty in each.
    assert body[4:8] == body[40:44] == b"\xff\xff\xff\xff"
    import wave

    with wave.open(io.BytesIO(body)) as reader:
        assert len(reader.readframes(2**31)) == samples.size * 2
    assert sf.read(io.BytesIO(body), dtype="int16")[0].size == samples.size
    piped = subprocess.run(["sox", "-t", "wav", "-", "-t", "raw", "-"], input=body, capture_output=True)
    assert piped.returncode == 0 and len(piped.stdout) == samples.size * 2, piped.stderr


@pytest.mark.parametrize("data, files, status, message", [
    ({"text": ""}, None, 422, "text is empty"),
    ({"text": "x" * 2001}, None, 413, "limit is 2000"),
    ({"text": "Hello.", "speaker": "mallory"}, None, 422, "unknown speaker 'mallory'"),
    ({"text": "Hello."}, {"image": ("a.png", b"not a picture", "image/png")}, 415, "not a picture"),
    ({"text": "Hello."}, {"reference_audio": ("a.wav", b"RIFF....garbage", "audio/wav")}, 415, "not audio"),
    ({"text": "Hello."}, {"reference_audio": ("a.wav", b"", "audio/wav")}, 422, "empty"),
    ({"text": "Hello."}, {"reference_audio": ("big.wav", b"0" * (10 * 2**20 + 1), "audio/wav")}, 413, "larger than"),
    ({}, None, 422, "text is empty"),
    ({"text": "Fine. ~~~", "stream": "true"}, None, 422, "nothing pronounceable"),
])
def test_bad_requests_get_4xx_with_a_reason(service, data, files, status, message):
    _, url = service
    response = httpx.post(f"{url}/synthesize", data=data, files=files, timeout=60)
    assert response.status_code == status, response.text
    assert message in response.text


def test_error_replies_name_the_field_and_the_rule_never_internals(service):
    """Issue 31: `text` sent as a file part was answered with the upload object's internals, a 415
    with `<_io.BytesIO object at 0x…>`, and a 900 k-character speaker name was echoed whole."""
    _, url = service
    as_file = httpx.post(f"{url}/synthesize", files={"text": ("t.txt", b"Hello.", "text/plain")}, timeout=60)
    assert as_file.status_code == 422 and "_max_size" not in as_file.text and "Temporary" not in as_file.text, as_file.text
    assert as_file.json()["detail"] == [{"field": "text", "problem": "text must be a form field holding text, not a file"}]
    garbage = httpx.post(f"{url}/synthesize", data={"text": "Hi."}, timeout=60,
                         files={"reference_audio": ("a.flac", b"fLaC" + b"\0" * 64, "audio/flac")})
    assert garbage.status_code == 415 and " at 0x" not in garbage.text and "object" not in garbage.text, garbage.text
    huge = httpx.post(f"{url}/synthesize", data={"text": "Hi.", "speaker": "m" * 900_000}, timeout=60)
    assert huge.status_code == 422 and len(huge.text) < 400, len(huge.text)


def _outside_address() -> str | None:
    """An address of this machine that is not loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent, the kernel only picks a route
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_service_listens_on_loopback_only(service):
    _, url = service
    address = _outside_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to try")
    port = int(url.rsplit(":", 1)[1])
    with pytest.raises(OSError):
        socket.create_connection((address, port), timeout=5).close()


def test_without_a_token_foreign_hosts_and_cross_origin_posts_are_refused(service):
    """Issue 31: with no token a cross-origin form POST got 200 and `Host: attacker.example` was
    served, so a web page the user visits could drive the local service (DNS rebinding)."""
    _, url = service
    port = url.rsplit(":", 1)[1]
    rebound = httpx.post(f"{url}/synthesize", data={"text": "Hi."}, headers={"Host": f"attacker.example:{port}"},
                         timeout=60)
    assert rebound.status_code == 421 and "'attacker.example' is not served here" in rebound.json()["detail"]
    assert httpx.get(f"{url}/voices", headers={"Host": "attacker.example"}).status_code == 421
    cross = httpx.post(f"{url}/synthesize", data={"text": "Hi."}, headers={"Origin": "http://evil.example"}, timeout=60)
    assert cross.status_code == 403 and "origin 'http://evil.example'" in cross.json()["detail"]
    assert httpx.post(f"{url}/synthesize", data={"text": "Hi."}, headers={"Origin": "null"}, timeout=60).status_code == 403
    long_host = "a" * 5000
    echoed = httpx.get(f"{url}/voices", headers={"Host": long_host}).json()["detail"]
    assert len(echoed) < 300  # client input is echoed cut short
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
        assert httpx.get(f"{url}/voices", headers={"Host": host}).status_code == 200, host
    same = httpx.post(f"{url}/synthesize", data={"text": "Hi."}, headers={"Origin": f"http://localhost:{port}"},
                      timeout=60)
    assert same.status_code == 200  # the service's own origin (and curl, which sends none) may POST


def test_oversized_body_is_refused_before_it_is_read(service):
    """A client declaring a 10 GB body gets 413 at once: the service never waits for (or spools) it."""
    _, url = service
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(b"POST /synthesize HTTP/1.1\r\nHost: localhost\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                     b"Content-Length: 10000000000\r\n\r\n--b\r\n")  # the headers and a first few bytes only
        reply = b""
        while b"over the" not in reply and (chunk := conn.recv(4096)):  # headers and body may come apart
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 413") and b"over the" in reply


def test_reload_switches_version_without_failing_a_request(service):
    root, url = service
    failures, done = [], threading.Event()

    def client():
        while not done.is_set():
            response = httpx.post(f"{url}/synthesize", data={"text": "Keep talking.", "speaker": "bob"}, timeout=60)
            if response.status_code != 200:
                failures.append(response.status_code)

    workers = [threading.Thread(target=client) for _ in range(3)]
    for worker in workers:
        worker.start()
    try:
        champion = root / "models" / "champion"
        make_bundle(root / "models" / "next", seed=2, version="2")
        aside = root / "models" / ".champion-old"
        champion.rename(aside)  # the same swap promote makes (rename aside, rename into place)
        (root / "models" / "next").rename(champion)
        shutil.rmtree(aside)
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/healthz").json()["version"] != "2":
            assert time.monotonic() < deadline, "the service did not pick up version 2"
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        done.set()
        for worker in workers:
            worker.join()
    assert failures == []
    assert httpx.post(f"{url}/synthesize", data={"text": "New voice."}, timeout=60).headers["x-polyvox-version"] == "2"


def test_bearer_token_guards_synthesis(tmp_path):
    make_bundle(tmp_path / "models" / "champion", seed=1)
    process, url = _start(tmp_path, env={"POLYVOX_TOKEN": "s3cret"})
    try:
        assert httpx.post(f"{url}/synthesize", data={"text": "Hi."}, timeout=60).status_code == 401
        wrong = httpx.post(f"{url}/synthesize", data={"text": "Hi."}, headers={"Authorization": "Bearer nope"}, timeout=60)
        assert wrong.status_code == 401
        right = httpx.post(f"{url}/synthesize", data={"text": "Hi."}, headers={"Authorization": "Bearer s3cret"},
                           timeout=60)
        assert right.status_code == 200
        assert httpx.get(f"{url}/healthz").status_code == 200  # health stays open for probes
        other = httpx.post(f"{url}/synthesize", data={"text": "Hi."}, timeout=60,
                           headers={"Authorization": "Bearer s3cret", "Host": "voice.example.com"})
        assert other.status_code == 200  # with a token, the token guards: any name the service is reached by
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_synth_command_writes_a_wav(tmp_path):
    make_bundle(tmp_path / "models" / "champion", seed=1)
    out = subprocess.run([str(POLYVOX), "synth", "Hello from the command line.", "-o", "hello.wav", "--speaker", "bob",
                          "--params", str(REPO / "params.yaml")], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    wave, rate = sf.read(tmp_path / "hello.wav")
    assert rate == 22050 and len(wave) > rate // 4
    bad = subprocess.run([str(POLYVOX), "synth", "Hi.", "--speaker", "nobody", "--params", str(REPO / "params.yaml")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "unknown speaker" in bad.stderr


def test_synth_is_a_one_liner_like_pipers(tmp_path):
    """Text from stdin, `--voice` outside any project (no params.yaml), `-o -` to stdout, speakers
    listed, `--length-scale` slows the voice, an empty text and a version."""
    voice = make_bundle(tmp_path / "elsewhere" / "voice", seed=1)
    outside = tmp_path / "nowhere"
    outside.mkdir()

    def polyvox(*args, stdin: bytes = b""):
        return subprocess.run([str(POLYVOX), *args], cwd=outside, input=stdin, capture_output=True, timeout=300)

    piped = polyvox("synth", "-o", "piped.wav", "--voice", str(voice), stdin=b"Hello from a pipe.\nAnd a second line.\n")
    assert piped.returncode == 0, piped.stderr.decode()
    normal, rate = sf.read(outside / "piped.wav")
    slow = polyvox("synth", "-", "-o", "-", "--voice", str(voice), "--length-scale", "2",
                   stdin=b"Hello from a pipe.\nAnd a second line.\n")
    assert slow.returncode == 0 and slow.stdout[:4] == b"RIFF", slow.stderr.decode()
    stretched, _ = sf.read(io.BytesIO(slow.stdout))
    assert 1.6 < len(stretched) / len(normal) < 2.4  # twice the durations (frames round per token)
    assert b"-: " in slow.stderr  # the summary goes to stderr, the audio alone to stdout
    listed = polyvox("synth", "--voice", str(voice), "--list-speakers")
    assert listed.returncode == 0 and listed.stdout.decode().split() == ["alice", "bob"]
    empty = polyvox("synth", "   ", "--voice", str(voice))
    assert empty.returncode == 2 and "the text is empty" in empty.stderr.decode()  # a usage error, as a bad -S
    assert b"Traceback" not in empty.stderr
    fast = polyvox("synth", "Hi.", "--voice", str(voice), "--length-scale", "9")
    assert fast.returncode == 1 and "length_scale 9 is outside" in fast.stderr.decode()
    version = polyvox("--version")
    assert version.returncode == 0 and version.stdout.decode().startswith("polyvox ")


def test_text_the_voice_cannot_read_is_refused_not_spelled_out(service):
    _, url = service
    for text, word in (("Привет, как дела?", "Привет"), ("你好世界", "你好世界")):
        refused = httpx.post(f"{url}/synthesize", data={"text": text, "speaker": "alice"}, timeout=60)
        assert refused.status_code == 422 and f"cannot read '{word}" in refused.json()["detail"], refused.text
    assert httpx.post(f"{url}/synthesize", data={"text": "Café déjà vu.", "speaker": "alice"}, timeout=60).status_code == 200


def test_length_scale_through_the_service(service):
    _, url = service
    normal, _ = _wav(httpx.post(f"{url}/synthesize", data={"text": "Hello there.", "speaker": "alice"}, timeout=60))
    slow, _ = _wav(httpx.post(f"{url}/synthesize", data={"text": "Hello there.", "speaker": "alice",
                                                         "length_scale": "1.5"}, timeout=60))
    assert 1.2 < len(slow) / len(normal) < 1.8
    refused = httpx.post(f"{url}/synthesize", data={"text": "Hi.", "length_scale": "0"}, timeout=60)
    assert refused.status_code == 422 and "length_scale 0 is outside" in refused.json()["detail"]


@pytest.mark.skipif(shutil.which("chromium") is None or shutil.which("chromedriver") is None,
                    reason="needs Debian's chromium and chromium-driver (make test installs them)")
def test_docs_render_in_a_real_browser_with_the_network_off(service, tmp_path):
    """/docs loaded Swagger UI from a CDN and was blank offline (issue 32 §4). The browser here may
    reach loopback only (every other request goes to a dead proxy); the page must still render
    every route, with the error responses documented."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    _, url = service
    html = httpx.get(f"{url}/docs", timeout=30).text
    assert "https://" not in html and "cdn" not in html.lower(), html
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--proxy-server=http://127.0.0.1:9"):  # loopback bypasses a proxy; nothing else gets out
        options.add_argument(flag)
    options.binary_location = shutil.which("chromium")
    browser = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        browser.get(f"{url}/docs")
        WebDriverWait(browser, 60).until(expected_conditions.presence_of_element_located(
            (By.CSS_SELECTOR, ".swagger-ui .opblock")))
        assert "polyvox" in browser.find_element(By.CSS_SELECTOR, ".swagger-ui .info .title").text
        paths = {e.text for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
        assert {"/synthesize", "/voices", "/healthz", "/reload"} <= paths, paths
        browser.find_element(By.CSS_SELECTOR, "#operations-default-synthesize_synthesize_post .opblock-summary").click()
        WebDriverWait(browser, 30).until(expected_conditions.presence_of_element_located(
            (By.CSS_SELECTOR, "#operations-default-synthesize_synthesize_post .responses-table")))
        codes = {e.text for e in browser.find_elements(
            By.CSS_SELECTOR, "#operations-default-synthesize_synthesize_post .response-col_status")}
        assert {"200", "401", "413", "415", "422", "503"} <= codes, codes
        shot = tmp_path / "docs.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    finally:
        browser.quit()
